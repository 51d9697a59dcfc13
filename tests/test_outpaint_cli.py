"""`vip outpaint` and friends through the real entry point, `vipcli.main:main` (the console script).

Runs that generate (and the acceptance items) run `vip` in a subprocess, as a user does. Each such
process pays several seconds of imports, so they are started together once (a module fixture, two at
a time, one thread each) and each test asserts on the results it needs: five model runs, with the tiny
inpainting model saved to a folder (`--model DIR`) and `--steps 2`. Runs that must stop before any
model loads (bad options, --preview, never overwrite, `vip env`, `vip models`) call the same `main()`
in this process, with its arguments, exit code and output streams: the same code path without the
import cost.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from conftest import pixels, run_vip
from PIL import Image, ImageOps

from vipcli_model.images.io import read_metadata
from vipcli_model.models.hub import DEFAULT_INPAINT_MODEL

PARALLEL = 2  # vip processes at a time (each single-threaded)
NO_MODEL = "/nonexistent"  # a --model that cannot load: proves a run never tried


@dataclass
class Runs:
    """The module's `vip` runs (started in the background) and the files they use."""

    root: Path
    model: Path
    photo: Path  # 600x400 PNG
    astronaut: Path  # 512x512 PNG
    jobs: dict[str, Future] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def __call__(self, name: str):
        return self.jobs[name].result()


def _stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def _photo(path: Path, size=(600, 400), transform=None) -> Path:
    import skimage.data

    image = Image.fromarray(skimage.data.coffee()).resize(size)
    if transform is not None:
        image = transform(image)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, astronaut_png) -> Runs:
    root = tmp_path_factory.mktemp("cli")
    caches = tmp_path_factory.mktemp("cli-caches")
    # A module fixture starts before the autouse cache isolation of each test: isolate explicitly.
    env = {
        "HF_HOME": str(caches / "hf"),
        "HF_HUB_CACHE": str(caches / "hf" / "hub"),
        "VIP_CACHE_DIR": str(caches / "vip"),
        "HF_HUB_OFFLINE": "1",
        "VIP_DEBUG": "",
        "TOKENIZERS_PARALLELISM": "false",
        # several vip processes share few cores: one thread each (torch spins otherwise)
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        # the width Rich uses when stderr is not a terminal (as in a log file or CI)
        "COLUMNS": "80",
    }
    model = str(tiny_model_dir)
    r = Runs(root=root, model=tiny_model_dir, photo=_photo(root / "coffee.png"), astronaut=astronaut_png)
    pool = ThreadPoolExecutor(max_workers=PARALLEL)

    def submit(name: str, *args: str) -> None:
        r.jobs[name] = pool.submit(run_vip, *map(str, args), cwd=root, env=env)

    gen = ["--model", model, "--steps", "2"]
    prompts = ["--center", "an astronaut", "--surrounding", "a space station", "--negative", "blurry"]
    acceptance = [r.astronaut, "--ratio", "2x", *gen, "--feather", "0", *prompts]

    # --- model runs first (the slowest)
    r.files["a"] = root / "seeds" / "a.png"
    submit("seed1", "outpaint", *acceptance, "--seed", "1", "--json", "-o", r.files["a"])
    # same seed again, onto an existing file with --overwrite
    r.files["b"] = root / "seeds" / "b.png"
    r.files["b"].parent.mkdir(parents=True)
    shutil.copy(r.astronaut, r.files["b"])
    submit("seed1_again", "outpaint", *acceptance, "--seed", "1", "--overwrite", "-o", r.files["b"])
    r.files["c"] = root / "seeds" / "c.png"
    submit("seed2", "outpaint", *acceptance, "--seed", "2", "-o", r.files["c"])

    batch = root / "batch"
    batch.mkdir()
    shutil.copy(r.photo, batch / "p0.png")  # the 600x400 photo, lossless: for the --aspect check
    for index, transform in enumerate([ImageOps.mirror, ImageOps.flip, ImageOps.invert], start=1):
        with Image.open(_photo(root / f"tmp{index}.png", transform=transform)) as image:
            image.convert("RGB").save(batch / f"p{index}.jpg", quality=90)
    whole = (batch / "p1.jpg").read_bytes()
    (batch / "p2b_bad.jpg").write_bytes(whole[: len(whole) // 2])  # a truncated real JPEG
    r.files["batch_in"] = batch
    r.files["batch_out"] = root / "batch_out"
    submit(
        "batch",
        "outpaint",
        batch,
        "--aspect",
        "16:9",
        *gen,
        "--feather",
        "0",
        "--seed",
        "3",
        "--json",
        "-o",
        r.files["batch_out"],
    )

    submit(
        "sides",
        "outpaint",
        r.photo,
        "--left",
        "100",
        "--top",
        "10%",
        *gen,
        "--feather",
        "0",
        "--seed",
        "5",
        "-o",
        root / "sides",
    )

    # --- the acceptance item about a missing model, and the version, as a user runs them
    submit("offline", "outpaint", r.photo, "--ratio", "2x", "-o", root / "offline")
    submit("version", "--version")
    yield r
    pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------- acceptance


def test_ratio_2x_writes_1024_png_whose_center_is_the_input(runs):
    result = runs("seed1")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = runs.files["a"]
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (1024, 1024)
    written = pixels(out)
    original = pixels(runs.astronaut)
    assert np.array_equal(written[256:768, 256:768], original)
    # the border really was generated (not the black canvas, not a copy)
    border = np.ones((1024, 1024), bool)
    border[256:768, 256:768] = False
    assert written[border].std() > 1.0
    # nothing else written beside it (once the other runs into that folder are done)
    runs("seed1_again"), runs("seed2")
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.png", "b.png", "c.png"]


def test_png_stores_parameters_and_vip_json(runs):
    assert runs("seed1").returncode == 0
    meta = read_metadata(runs.files["a"])
    parameters = meta["parameters"]
    assert parameters is not None
    lines = parameters.splitlines()
    assert "an astronaut" in lines[0] and "a space station" in lines[0]  # the Total prompt
    assert "Negative prompt: blurry" in parameters
    assert "Seed: 1," in parameters
    assert "Size: 1024x1024" in parameters
    assert f"Model: {runs.model}" in parameters
    assert "Steps: 2" in parameters
    vip = meta["vip"]
    assert vip["seed"] == 1
    assert vip["model"] == str(runs.model)
    assert vip["prompts"]["center"] == "an astronaut"
    assert vip["prompts"]["surrounding"] == "a space station"
    assert "an astronaut" in vip["prompts"]["total"]
    assert vip["negative"] == "blurry"
    assert vip["canvas_size"] == [1024, 1024]
    assert vip["image_size"] == [512, 512]
    assert vip["image_box"] == [256, 256, 768, 768]
    assert vip["steps"] == 2 and vip["feather"] == 0


def test_json_prints_one_object_per_written_file(runs):
    result = runs("seed1")
    assert result.returncode == 0
    objects = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(objects) == 1
    assert Path(objects[0]["path"]).resolve() == runs.files["a"].resolve()
    assert objects[0]["seed"] == 1
    assert objects[0]["canvas_size"] == [1024, 1024]


def test_same_seed_same_pixels_different_seed_different_pixels(runs):
    for name in ("seed1", "seed1_again", "seed2"):
        assert runs(name).returncode == 0, runs(name).stderr
    first, again, other = (pixels(runs.files[key]) for key in "abc")
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    # the original is kept in all of them
    assert np.array_equal(other[256:768, 256:768], pixels(runs.astronaut))
    assert read_metadata(runs.files["c"])["vip"]["seed"] == 2


def test_aspect_16_9_on_600x400(runs):
    """The batch run used --aspect 16:9 --feather 0; its first input is the 600x400 PNG photo."""
    assert runs("batch").returncode != 0  # one corrupt file in that batch
    out = runs.files["batch_out"] / "p0_outpaint.png"
    written = pixels(out)
    height, width = written.shape[:2]
    assert (width, height) == (711, 400)
    assert abs(width - height * 16 / 9) <= 1
    box = read_metadata(out)["vip"]["image_box"]
    x = box[0]
    assert box == [x, 0, x + 600, 400]
    assert abs(x - (width - 600 - x)) <= 1  # centred
    assert np.array_equal(written[:, x : x + 600], pixels(runs.photo))


def test_left_100_top_10_percent_adds_exactly_those_margins(runs):
    result = runs("sides")
    assert result.returncode == 0, result.stderr
    out = runs.root / "sides" / "coffee_outpaint.png"
    written = pixels(out)
    assert written.shape[:2] == (440, 700)
    assert np.array_equal(written[40:440, 100:700], pixels(runs.photo))
    assert not np.array_equal(written[:40, :100], np.zeros((40, 100, 3), np.uint8))


# ------------------------------------------------------------------------------------- batch


def test_batch_with_one_corrupt_jpeg(runs):
    result = runs("batch")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "p2b_bad.jpg" in result.stderr
    expected = {f"p{index}_outpaint.png" for index in range(4)}
    # no partial or temporary file, hidden ones included
    assert {p.name for p in runs.files["batch_out"].iterdir()} == expected
    for index in range(4):
        out = runs.files["batch_out"] / f"p{index}_outpaint.png"
        written = pixels(out)
        assert written.shape[:2] == (400, 711)
        x = read_metadata(out)["vip"]["image_box"][0]
        source = runs.files["batch_in"] / (f"p{index}.jpg" if index else "p0.png")
        assert np.array_equal(written[:, x : x + 600], pixels(source))
    # --json: one object per written file, with its seed
    objects = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert sorted(Path(o["path"]).name for o in objects) == sorted(expected)
    assert all(o["seed"] == 3 for o in objects)
    # the summary counts what happened
    assert "4 written" in result.stderr and "1 of 5" in result.stderr


def test_batch_failure_is_reported_on_one_line(runs):
    result = runs("batch")
    bad = runs.files["batch_in"] / "p2b_bad.jpg"
    lines = [line for line in _stderr_lines(result) if str(bad) in line]
    assert lines, result.stderr
    assert all(line.rstrip().endswith(")") and "truncated or corrupt JPEG" in line for line in lines), lines


# ------------------------------------------------------------------------------------- no model needed


def test_never_overwrite_without_the_flag(runs, vip_main, tmp_path):
    existing = tmp_path / "coffee_outpaint.png"
    shutil.copy(runs.astronaut, existing)
    before = existing.read_bytes()
    result = vip_main("outpaint", runs.photo, "--ratio", "2x", "--model", runs.model, "--steps", "2", "-o", tmp_path)
    assert result.returncode != 0
    line = next(line for line in result.stderr.splitlines() if f"{existing} exists" in line)
    assert "--overwrite" in line
    assert "Traceback" not in result.stderr
    assert existing.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["coffee_outpaint.png"]


def test_overwrite_flag_replaces_an_existing_file(runs):
    """The second seed-1 run wrote with --overwrite onto a copy of the 512x512 input."""
    result = runs("seed1_again")
    assert result.returncode == 0, result.stderr
    with Image.open(runs.files["b"]) as image:
        assert image.size == (1024, 1024)
    assert read_metadata(runs.files["b"])["vip"]["seed"] == 1
    assert sorted(p.name for p in runs.files["b"].parent.iterdir()) == ["a.png", "b.png", "c.png"]


def test_preview_writes_canvas_and_mask_without_a_model(runs, vip_main, tmp_path):
    folder = tmp_path / "preview"
    result = vip_main(
        "outpaint", runs.photo, "--left", "100", "--top", "10%", "--preview", "--model", NO_MODEL, "-o", folder
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["coffee_canvas.png", "coffee_mask.png"]
    assert "coffee_canvas.png (700x440 canvas; the photo at x 100-700, y 40-440)" in result.stderr
    canvas = pixels(folder / "coffee_canvas.png")
    with Image.open(folder / "coffee_mask.png") as image:
        assert image.size == (700, 440)
        mask = np.asarray(image.convert("L"))
    assert canvas.shape[:2] == (440, 700)
    assert np.array_equal(canvas[40:, 100:], pixels(runs.photo))
    expected = np.full((440, 700), 255, np.uint8)
    expected[40:, 100:] = 0
    assert np.array_equal(mask, expected)


def test_unreachable_hub_and_no_local_model_is_one_clear_line(runs):
    result = runs("offline")
    assert result.returncode == 4
    lines = _stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert DEFAULT_INPAINT_MODEL in lines[0]
    assert "--model" in lines[0] and "vip models download" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (runs.root / "offline").exists() or not any((runs.root / "offline").iterdir())


# ------------------------------------------------------------------------------------- bad options


BAD_OPTIONS = {
    "ratio+aspect": ["--ratio", "2x", "--aspect", "16:9"],
    "steps0": ["--ratio", "2x", "--steps", "0"],
    "feather-1": ["--ratio", "2x", "--feather", "-1"],
    "scheduler": ["--ratio", "2x", "--scheduler", "nope"],
    "device": ["--ratio", "2x", "--device", "cuda"],
    "no-expansion": [],
    "ratio0.5": ["--ratio", "0.5"],
    "size-abc": ["--size", "abc"],
}


@pytest.mark.parametrize(
    "name,options",
    [
        ("ratio+aspect", ["--ratio", "--aspect"]),
        ("steps0", ["--steps"]),
        ("feather-1", ["--feather"]),
        ("scheduler", ["--scheduler", "nope"]),
        ("device", ["--device"]),
        ("no-expansion", ["--ratio", "--aspect", "--size"]),
        ("ratio0.5", ["--ratio"]),
        ("size-abc", ["--size"]),
    ],
)
def test_bad_options_fail_fast_with_one_line_naming_the_option(runs, vip_main, tmp_path, monkeypatch, name, options):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "--device cuda" is bad on every machine here
    out = tmp_path / "out"
    result = vip_main("outpaint", runs.photo, *BAD_OPTIONS[name], "--model", NO_MODEL, "-o", out)
    assert "Traceback" not in result.stderr
    assert NO_MODEL not in result.stderr, "the model was reached before the option was checked"
    assert result.returncode == 2, result.stderr  # OptionError
    lines = _stderr_lines(result)
    assert len(lines) == 1, result.stderr
    for option in options:
        assert option in lines[0]
    assert not out.exists()


# ------------------------------------------------------------------------------------- other commands


def test_version(runs):
    result = runs("version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"vip {version('vip-outpaint')}"


def test_env_prints_torch_version_and_cache_path(vip_main, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("VIP_CACHE_DIR", str(tmp_path / "my-cache"))
    result = vip_main("env")
    assert result.returncode == 0, result.stderr
    assert torch.__version__ in result.stdout
    assert str(tmp_path / "my-cache") in result.stdout
    assert DEFAULT_INPAINT_MODEL in result.stdout


def test_models_list(vip_main, tmp_path, monkeypatch):
    monkeypatch.setenv("VIP_CACHE_DIR", str(tmp_path / "my-cache"))
    result = vip_main("models", "list")
    assert result.returncode == 0, result.stderr
    assert "sd15-inpaint" in result.stdout and DEFAULT_INPAINT_MODEL in result.stdout
    assert str(tmp_path / "my-cache") in result.stdout


def test_models_path_of_an_uncached_model_exits_4(vip_main):
    result = vip_main("models", "path", "some/repo")
    assert result.returncode == 4
    lines = _stderr_lines(result)
    assert len(lines) == 1 and "some/repo" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.strip() == ""


def test_verbose_shows_vip_s_own_lines_not_the_libraries_config_dumps(tiny_model_dir, astronaut_png, tmp_path):
    result = run_vip(
        "-v", "outpaint", str(astronaut_png), "--ratio", "1.25x", "--model", str(tiny_model_dir), "--steps", "1",
        "--center", "a", "--detail", "off", "-o", str(tmp_path / "v.png"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "INFO vipcli_model.models.loading: loading inpainting model" in result.stderr
    assert "canvas 640x640, photo at (64, 64, 576, 576)" in result.stderr
    assert "Model config" not in result.stderr and "loading configuration file" not in result.stderr
    assert all(line.startswith(("INFO vipcli", "DEBUG vipcli", "wrote", "done")) for line in result.stderr.splitlines())
