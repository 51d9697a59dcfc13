"""`outpaint_images`, the library's whole run: output names unique within a run, the README's Python
examples, and a preview that imports neither torch nor diffusers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, pixels
from PIL import Image

from vipcli_model.config import ExpansionConfig, GenerationConfig, ModelConfig, PromptConfig
from vipcli_model.errors import OptionError
from vipcli_model.images.outputs import InputImage, find_inputs, output_kinds, plan_outputs
from vipcli_model.outpainting.run import OutpaintJob, outpaint_images


def _image(path: Path, size=(48, 32), value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def same_stems(tmp_path) -> Path:
    """x.png, x.jpg and sub/x.png: one stem, three images, none lost."""
    folder = tmp_path / "shots"
    _image(folder / "x.png", value=1)
    _image(folder / "x.jpg", value=2)
    _image(folder / "sub" / "x.png", value=3)
    return folder


# ------------------------------------------------------------------------------------- names


def test_same_stems_under_o_give_three_files_with_the_folder_structure(same_stems, tmp_path, tiny_model_dir, vip_main):
    out = tmp_path / "out"
    result = vip_main(
        "outpaint",
        same_stems,
        "--ratio",
        "2x",
        "--model",
        tiny_model_dir,
        "--steps",
        "1",
        "--no-caption",
        "--seed",
        "1",
        "--feather",
        "0",
        "--json",
        "-o",
        out,
    )
    assert result.returncode == 0, result.stderr
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file())
    assert written == ["sub/x_outpaint.png", "x_jpg_outpaint.png", "x_png_outpaint.png"]
    # each file is the result of its own input, and the report names every file once
    sources = {
        Path(json.loads(line)["path"]).relative_to(out).as_posix(): json.loads(line)["source"]
        for line in result.stdout.splitlines()
    }
    assert sources == {
        "x_jpg_outpaint.png": str(same_stems / "x.jpg"),
        "x_png_outpaint.png": str(same_stems / "x.png"),
        "sub/x_outpaint.png": str(same_stems / "sub" / "x.png"),
    }
    box = json.loads(result.stdout.splitlines()[0])["image_box"]
    for name, source in sources.items():
        assert np.array_equal(pixels(out / name)[box[1] : box[3], box[0] : box[2]], pixels(Path(source)))


def test_same_stems_beside_the_inputs_in_a_preview(same_stems, vip_main):
    result = vip_main("outpaint", same_stems, "--ratio", "2x", "--preview")
    assert result.returncode == 0, result.stderr
    assert "done: 6 file(s) written" in result.stderr
    names = sorted(path.relative_to(same_stems).as_posix() for path in same_stems.rglob("*_*.png"))
    assert names == [
        "sub/x_canvas.png",
        "sub/x_mask.png",
        "x_jpg_canvas.png",
        "x_jpg_mask.png",
        "x_png_canvas.png",
        "x_png_mask.png",
    ]
    # the same inputs again: the same names, replaced with --overwrite
    again = vip_main(
        "outpaint", same_stems / "x.png", same_stems / "x.jpg", "--ratio", "2x", "--preview", "--overwrite"
    )
    assert again.returncode == 0, again.stderr
    assert len(list(same_stems.rglob("*.png"))) == 8


def test_names_are_stable_and_never_shared():
    inputs = [
        InputImage(Path(name), Path(name)) for name in ("a/x.png", "a/x.jpg", "a/x_png.png", "a/X.PNG", "a/y.png")
    ]
    plans = plan_outputs(inputs, "out", output_kinds(preview=False, num_images=1))
    names = [plan[0].as_posix() for plan in plans]
    assert names == [
        "out/a/x_png_outpaint.png",
        "out/a/x_jpg_outpaint.png",
        "out/a/x_png_2_outpaint.png",
        "out/a/X_png_3_outpaint.png",
        "out/a/y_outpaint.png",
    ]
    assert len({name.casefold() for name in names}) == len(names)
    # the same inputs give the same names; an input alone keeps the plain name
    assert plan_outputs(inputs, "out", ["outpaint"]) == plans
    assert plan_outputs(inputs[:1], None, ["outpaint"]) == [[Path("a/x_outpaint.png")]]
    several = plan_outputs(inputs[-1:], None, output_kinds(preview=False, num_images=2))
    assert several == [[Path("a/y_outpaint_1.png"), Path("a/y_outpaint_2.png")]]


def test_one_output_file_only_for_one_result(tmp_path):
    one = [InputImage(Path("x.png"), Path("x.png"))]
    assert plan_outputs(one, tmp_path / "r.jpg", ["outpaint"]) == [[tmp_path / "r.jpg"]]
    with pytest.raises(OptionError, match="names one file"):
        plan_outputs(one * 2, tmp_path / "r.jpg", ["outpaint"])
    with pytest.raises(OptionError, match="names one file"):
        plan_outputs(one, tmp_path / "r.png", ["canvas", "mask"])
    with pytest.raises(OptionError, match="unsupported image type"):
        plan_outputs(one, tmp_path / "r.gif", ["outpaint"])


def test_inputs_keep_their_path_below_the_folder_or_pattern(same_stems, monkeypatch):
    monkeypatch.chdir(same_stems.parent)
    found, missing = find_inputs(["shots", "shots/x.png", "shots/**/*.png", "nothing/here"])
    assert [(item.path.as_posix(), item.relative.as_posix()) for item in found] == [
        ("shots/sub/x.png", "sub/x.png"),
        ("shots/x.jpg", "x.jpg"),
        ("shots/x.png", "x.png"),
    ]
    assert missing == [("nothing/here", "no such file or folder")]
    found, _ = find_inputs(["shots/sub/x.png", "shots/**/*.jpg"])
    assert [item.relative.as_posix() for item in found] == ["x.png", "x.jpg"]


# ------------------------------------------------------------------------------------- the run


def test_run_reports_each_input_and_skips_the_broken(tmp_path, tiny_model_dir):
    folder = tmp_path / "in"
    _image(folder / "a.png")
    (folder / "b.png").write_bytes(b"not an image")
    _image(tmp_path / "out" / "c_outpaint.png")
    _image(folder / "c.png")
    seen = []
    job = OutpaintJob(
        expansion=ExpansionConfig(left="16"),
        prompts=PromptConfig(caption=False),
        generation=GenerationConfig(steps=1, seed=3),
        model=ModelConfig(model=str(tiny_model_dir)),
        output=tmp_path / "out",
    )
    run = outpaint_images(
        [folder, tmp_path / "missing"], job, on_item=lambda item, done, total: seen.append((item.status, done, total))
    )
    # an output that cannot be written is found before any model loads: reported right after the missing input
    assert seen == [("missing", 1, 4), ("failed", 2, 4), ("written", 3, 4), ("failed", 4, 4)]
    assert [file.path for file in run.written] == [tmp_path / "out" / "a_outpaint.png"]
    assert run.written[0].metadata["seed"] == 3 and run.written[0].metadata["prompt_source"] == {
        "source": "unconditional"
    }
    assert "exists" in str(run.items[1].error) and "`overwrite=True`" in str(run.items[1].error)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a_outpaint.png", "c_outpaint.png"]


def test_bad_settings_fail_before_any_input_is_read(tmp_path):
    job = OutpaintJob(expansion=ExpansionConfig(ratio="2x", aspect="16:9"), preview=True)
    with pytest.raises(OptionError, match="`ratio` and `aspect`"):
        outpaint_images([tmp_path / "nothing.png"], job)


@pytest.mark.parametrize(
    "job,library,flags",
    [
        (
            OutpaintJob(expansion=ExpansionConfig(ratio="2x"), generation=GenerationConfig(num_images=0)),
            "`num_images` 0 is out of range",
            "--num-images 0 is out of range",
        ),
        (
            OutpaintJob(
                expansion=ExpansionConfig(ratio="2x"), generation=GenerationConfig(cts=False, region_strength=0.5)
            ),
            "`region_strength` has no effect with `cts=False`",
            "--region-strength has no effect with --no-cts",
        ),
        (
            OutpaintJob(expansion=ExpansionConfig(ratio="2x"), prompts=PromptConfig(caption=False, captioner="x")),
            "`caption=False` cannot be combined",
            "--no-caption cannot be combined",
        ),
        (OutpaintJob(), "say how to expand: `ratio`, `aspect`", "say how to expand: --ratio, --aspect"),
        (  # image k uses seed + k: the last image's seed must fit too
            OutpaintJob(
                expansion=ExpansionConfig(ratio="2x"), generation=GenerationConfig(seed=2**63 - 1, num_images=2)
            ),
            f"`seed` {2**63 - 1} is out of range for 2 images (image k uses seed + k): use 0 to 2^63-2",
            f"--seed {2**63 - 1} is out of range for 2 images",
        ),
    ],
)
def test_the_library_names_arguments_and_the_cli_shows_flags(job, library, flags, tmp_path):
    """The library's messages speak Python (`num_images`); `vip` maps them to its flags in one table."""
    from vipcli.options import flag_message

    with pytest.raises(OptionError) as raised:
        outpaint_images([tmp_path / "x.png"], job)
    assert library in str(raised.value)
    assert flags in flag_message(str(raised.value))


# ------------------------------------------------------------------------------------- --preview is light


def test_preview_imports_neither_torch_nor_diffusers(tmp_path):
    photo = _image(tmp_path / "x.jpg", size=(60, 40))
    code = (
        "import sys\n"
        "from vipcli.main import main\n"
        f"sys.argv = ['vip', 'outpaint', {str(photo)!r}, '--ratio', '2x', '--preview']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(sorted(name for name in ('torch', 'diffusers', 'transformers') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "x_canvas.png").is_file() and (tmp_path / "x_mask.png").is_file()


# ------------------------------------------------------------------------------------- the README's examples


def _readme_example(name: str, replacements: dict[str, str], page: str = "README.md") -> str:
    readme = (REPO / page).read_text(encoding="utf-8")
    match = re.search(rf"<!-- python-example: {name} -->\s*```python\n(.+?)\n```", readme, re.S)
    assert match, f"{page} lost its {name} example"
    code = match.group(1)
    for old, new in replacements.items():
        assert old in code, f"the README's {name} example no longer contains {old!r}"
        code = code.replace(old, new)
    return code


def test_readme_python_examples_run(tmp_path, tiny_model_dir, monkeypatch):
    """The README's library example and docs/python.md's pipeline example as written: the tiny model, one step."""
    monkeypatch.chdir(tmp_path)
    _image(tmp_path / "shots" / "barn.png", value=4)
    _image(tmp_path / "shots" / "more" / "field.png", value=5)
    model = {'"stable-diffusion-v1-5/stable-diffusion-inpainting"': repr(str(tiny_model_dir))}
    exec(_readme_example("library", {**model, "steps=25": "steps=1"}), {})
    for name in ("out/barn_outpaint.png", "out/more/field_outpaint.png"):
        with Image.open(name) as image:
            assert image.size == (96, 64)

    preview = OutpaintJob(expansion=ExpansionConfig(ratio="2x"), output="out", preview=True)
    assert len(outpaint_images(["shots/barn.png"], preview).written) == 2
    steps = {"num_inference_steps=25": "num_inference_steps=1"}
    exec(_readme_example("pipeline", {**model, **steps}, page="docs/python.md"), {})
    result, canvas = pixels(Path("out/barn_pipeline.png")), pixels(Path("out/barn_canvas.png"))
    assert result.shape == canvas.shape == (64, 96, 3)
    assert not np.array_equal(result[:, :24], canvas[:, :24])  # the border was generated
