"""C-T-S through the real `vip outpaint` entry point: prompts, gates and adapters recorded in the output."""

from __future__ import annotations

import json

import torch
from conftest import pixels
from tiny_models import build_other_tiny_unet

from vipcli_model.cts.attention import CTSAdapter
from vipcli_model.images.io import read_metadata


def test_region_prompts_and_gates_are_recorded(tiny_model_dir, astronaut_png, tmp_path, vip_main):
    out = tmp_path / "barn.png"
    result = vip_main(
        "outpaint",
        str(astronaut_png),
        "--ratio",
        "1.5x",
        "--center",
        "a red barn",
        "--surrounding",
        "snowy field",
        "--keywords",
        "pine trees",
        "--model",
        str(tiny_model_dir),
        "--seed",
        "1",
        "--steps",
        "2",
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    meta = read_metadata(out)
    vip = meta["vip"]
    assert vip["prompts"] == {
        "center": "a red barn",
        "surrounding": "pine trees, snowy field",
        "total": "Center: a red barn; Surrounding: pine trees, snowy field",
    }
    assert vip["cts"]["enabled"] and vip["cts"]["mode"] == "zero-shot"
    assert vip["cts"]["gates"] == [0.5] * len(vip["cts"]["gates"]) and vip["cts"]["gates"]
    assert "Center: a red barn" in meta["parameters"] and "C-T-S: zero-shot" in meta["parameters"]
    assert vip["canvas_size"] == [768, 768] and vip["seed"] == 1


def test_adapter_is_used_and_a_mismatched_one_refused(tiny_model_dir, astronaut_png, tmp_path, vip_main):
    from diffusers import StableDiffusionInpaintPipeline

    unet = StableDiffusionInpaintPipeline.from_pretrained(tiny_model_dir).unet
    adapter = CTSAdapter(unet, rank=4)
    with torch.no_grad():
        adapter.gate_logits.fill_(2.0)
        for branch in (adapter.center, adapter.surrounding):
            for module in branch.values():
                for parameter in module.parameters():
                    parameter.normal_(std=0.5)
    adapter_path = adapter.save(tmp_path / "run", base_model=str(tiny_model_dir))
    assert adapter_path == tmp_path / "run" / "cts_adapter.safetensors"  # a folder gets the standard file name
    common = [
        "outpaint",
        str(astronaut_png),
        "--ratio",
        "2x",
        "--center",
        "a red barn",
        "--surrounding",
        "snow",
        "--model",
        str(tiny_model_dir),
        "--seed",
        "3",
        "--steps",
        "2",
        "--feather",
        "0",
    ]
    with_adapter = vip_main(*common, "--adapter", str(tmp_path / "run"), "-o", str(tmp_path / "a.png"))
    assert with_adapter.returncode == 0, with_adapter.stderr
    zero_shot = vip_main(*common, "-o", str(tmp_path / "z.png"))
    assert zero_shot.returncode == 0, zero_shot.stderr
    meta = read_metadata(tmp_path / "a.png")["vip"]
    assert meta["cts"]["mode"] == "adapter" and meta["adapter"] == str(tmp_path / "run")
    assert abs(meta["cts"]["gates"][0] - float(torch.sigmoid(torch.tensor(2.0)))) < 1e-3
    assert (pixels(tmp_path / "a.png") != pixels(tmp_path / "z.png")).any()  # the adapter changed the result
    # known pixels are untouched either way
    assert (pixels(tmp_path / "a.png")[256:768, 256:768] == pixels(astronaut_png)).all()

    other = build_other_tiny_unet()
    CTSAdapter(other, rank=4).save(tmp_path / "other.safetensors", base_model="someone/else")
    refused = vip_main(*common, "--adapter", str(tmp_path / "other.safetensors"), "-o", str(tmp_path / "r.png"))
    assert refused.returncode == 4
    assert "someone/else" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) <= 3 and not (tmp_path / "r.png").exists()
    missing = vip_main(*common, "--adapter", str(tmp_path / "nope.safetensors"), "-o", str(tmp_path / "m.png"))
    assert missing.returncode == 4 and "nope.safetensors" in missing.stderr


def test_no_cts_runs_plain_inpainting_and_says_so(tiny_model_dir, astronaut_png, tmp_path, vip_main):
    result = vip_main(
        "outpaint",
        str(astronaut_png),
        "--ratio",
        "1.25x",
        "--prompt",
        "a beach",
        "--no-cts",
        "--json",
        "--model",
        str(tiny_model_dir),
        "--seed",
        "2",
        "--steps",
        "2",
        "-o",
        str(tmp_path / "p.png"),
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["cts"] == {"enabled": False} and printed["path"] == str(tmp_path / "p.png")
    assert "C-T-S: off" in read_metadata(tmp_path / "p.png")["parameters"]
    bad = vip_main(
        "outpaint",
        str(astronaut_png),
        "--ratio",
        "2x",
        "--no-cts",
        "--region-strength",
        "0.3",
        "--model",
        "/nonexistent",
    )
    assert bad.returncode == 2 and "--region-strength" in bad.stderr
