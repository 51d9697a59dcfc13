"""Each file of an `-n` run records what remakes it alone, and its A1111 text reads back as A1111 reads it."""

from __future__ import annotations

import json
import re

import numpy as np
from conftest import pixels
from PIL import Image

from vipcli_model.images.io import read_metadata

# A1111's parser (modules/infotext_utils.py, parse_generation_parameters): the settings line is the last line when
# it holds at least 3 "Key: value" pairs; "Negative prompt:" starts the negative prompt; quoted values are JSON
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def parse_like_a1111(text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    prompt, negative, done_with_prompt = "", "", False
    *lines, lastline = text.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    result["Prompt"], result["Negative prompt"] = prompt, negative
    for key, value in RE_PARAM.findall(lastline):
        if value[:1] == '"' and value[-1:] == '"':
            value = json.loads(value)
        size = RE_IMAGESIZE.match(value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    return result


def test_each_image_of_n_is_remade_by_its_recorded_seed(vip_main, tiny_model_dir, astronaut_png, tmp_path):
    photo = tmp_path / "photo.png"
    Image.open(astronaut_png).resize((64, 48)).save(photo)
    common = (
        "outpaint", photo, "--ratio", "1.5x", "--model", tiny_model_dir, "--steps", "2", "--detail", "off",
        "--center", "a red barn, in snow", "--surrounding", "fields: white", "--negative", "blurry",
    )  # fmt: skip
    batch = vip_main(*common, "--seed", "7", "-n", "2", "-o", tmp_path / "batch")
    assert batch.returncode == 0, batch.stderr
    files = [tmp_path / "batch" / f"photo_outpaint_{k}.png" for k in (1, 2)]
    assert not np.array_equal(pixels(files[0]), pixels(files[1]))
    for index, path in enumerate(files):
        meta = read_metadata(path)
        seed = meta["vip"]["seed"]
        assert seed == 7 + index
        parsed = parse_like_a1111(meta["parameters"])
        assert parsed["Prompt"] == meta["vip"]["prompts"]["total"] and parsed["Negative prompt"] == "blurry"
        assert (parsed["Steps"], parsed["Sampler"], parsed["Schedule type"], parsed["CFG scale"]) == (
            "2", "DPM++ 2M", "Automatic", "7.5",
        )  # fmt: skip
        assert (parsed["Seed"], parsed["Size-1"], parsed["Size-2"]) == (str(seed), "96", "72")
        assert parsed["Model"] == str(tiny_model_dir) and parsed["Surrounding"] == "fields: white"
        assert list(parsed)[2:9] == ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size-1", "Size-2"]
        alone = vip_main(*common, "--seed", parsed["Seed"], "-n", "1", "-o", tmp_path / f"alone{index}.png")
        assert alone.returncode == 0, alone.stderr
        assert np.array_equal(pixels(tmp_path / f"alone{index}.png"), pixels(path))
