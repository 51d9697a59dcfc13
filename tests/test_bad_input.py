"""Bad input, as a hostile user tries it: what each kind gets, in one place.

| bad input | exit | message (one line) | files left |
|---|---|---|---|
| unreadable / not an image | 3 | names the file and why | none for it |
| output exists, no --overwrite | 5 | "... exists; pass --overwrite ..." | the old file, untouched |
| output folder read-only | 5 | "cannot write to folder ..." | none |
| output "folder" is a file | 5 | "... is a file" | none |
| `train`/`eval` --out a file, a bad run folder | 5 | names the path and what is wrong | none, the file untouched |
| `caption --jsonl` under a file, or a folder | 5 | "... cannot be written there ..." | none |
| --mask of the wrong size (outpaint, edit) | 2 | "--mask ... is WxH, but must match" | none |
| nothing to generate | 2 | "nothing to generate: ..." | none |
| a batch: failures of one kind | that kind's code (others still written) |
| a batch: failures of different kinds | 1 | one line per failure + a count | the others' results |
| an image too large for the memory | 3 | what it needs (GB) and what to do | none for it |
| GPU out of memory on one input | 3 | which GPU, and the command's options | none for it |
| out of memory elsewhere | 1 | "out of memory: ..." and what to do | what was finished |
| Ctrl-C | 130 | "interrupted: ... finished ..." | what was finished, whole |
| `vip train` on only broken images | 3 | each file and its reason | none |

Output problems are found for every input before any model loads, by the one check every command that writes
shares (``images.outputs.check_destination``). Same-stem inputs get their own outputs in every command that writes
per-input files (`outpaint`: tests/test_outpaint_run.py; `eval` and `caption --jsonl`: here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_vip
from PIL import Image


def _image(path: Path, size=(48, 32), value: int = 0, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture()
def photo(tmp_path) -> Path:
    return _image(tmp_path / "in" / "photo.png")


@pytest.fixture()
def unloadable_model(tmp_path) -> Path:
    """A --model that would fail to load (exit 4) if vip ever got to loading it."""
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    return folder


# ------------------------------------------------------------------------ output problems: 5, before any model


def test_existing_output_exits_5_in_one_line_and_keeps_the_file(photo, vip_main):
    existing = _image(photo.parent / "photo_canvas.png", value=9)
    before = existing.read_bytes()
    result = vip_main("outpaint", photo, "--ratio", "2x", "--preview")
    assert result.returncode == 5, result.stderr
    assert _error_lines(result.stderr) == [f"error: {photo}: {existing} exists; pass --overwrite to replace it"]
    assert existing.read_bytes() == before and not (photo.parent / "photo_mask.png").exists()


def test_existing_output_is_found_before_the_model_loads(photo, unloadable_model, vip_main):
    _image(photo.parent / "photo_outpaint.png", value=9)
    result = vip_main("outpaint", photo, "--ratio", "2x", "--model", unloadable_model, "--no-caption")
    assert result.returncode == 5, result.stderr  # not 4: the model was never touched
    assert "exists" in result.stderr and "model" not in result.stderr


def test_no_model_loads_when_no_output_can_be_written(tmp_path, unloadable_model):
    from vipcli_model.config import ExpansionConfig, ModelConfig, PromptConfig
    from vipcli_model.outpainting.run import OutpaintJob, outpaint_images

    first, second = _image(tmp_path / "a.png"), _image(tmp_path / "b.png")
    for source in (first, second):
        _image(source.with_name(f"{source.stem}_outpaint.png"))
    loading: list[str] = []
    job = OutpaintJob(
        expansion=ExpansionConfig(ratio="2x"),
        prompts=PromptConfig(caption=False),
        model=ModelConfig(model=str(unloadable_model)),
    )
    run = outpaint_images([first, second], job, on_loading=loading.append)
    assert loading == []
    assert [item.error.exit_code for item in run.failures] == [5, 5]


def test_output_parent_that_is_a_file_exits_5(photo, tmp_path, unloadable_model, vip_main):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    result = vip_main(
        "outpaint", photo, "--ratio", "2x", "--model", unloadable_model, "--no-caption", "-o", blocker / "out"
    )
    assert result.returncode == 5, result.stderr
    assert len(_error_lines(result.stderr)) == 1 and f"{blocker} is a file" in result.stderr
    assert blocker.read_text() == "a file where a folder should be"


def _read_only_folder(folder: Path, monkeypatch) -> Path:
    """`folder`, made and unwritable (root may write anywhere: the check asks os.access, which a read-only mount or
    mode answers the same way)."""
    import vipcli_model.images.outputs as outputs

    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        outputs.os, "access", lambda path, mode: False if Path(path) == folder else real_access(path, mode)
    )
    return folder


def test_read_only_output_folder_exits_5(photo, tmp_path, unloadable_model, vip_main, monkeypatch):
    locked = _read_only_folder(tmp_path / "locked", monkeypatch)
    result = vip_main("outpaint", photo, "--ratio", "2x", "--model", unloadable_model, "--no-caption", "-o", locked)
    assert result.returncode == 5, result.stderr
    assert len(_error_lines(result.stderr)) == 1 and "cannot write to folder" in result.stderr
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_output_folder_exits_5_for_real(photo, tmp_path, vip_main):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = vip_main("outpaint", photo, "--ratio", "2x", "--preview", "-o", locked)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 5, result.stderr


# ------------------------------------------------------------------------ option problems of one image: 2


def test_wrong_size_mask_exits_2_before_the_model_loads(photo, tmp_path, unloadable_model, vip_main):
    mask = tmp_path / "mask.png"
    Image.new("L", (7, 7), 255).save(mask)
    for extra in (("--preview",), ("--model", unloadable_model, "--no-caption")):
        result = vip_main("outpaint", photo, "--ratio", "2x", "--mask", mask, *extra)
        assert result.returncode == 2, result.stderr
        assert len(_error_lines(result.stderr)) == 1 and "--mask is 7x7" in result.stderr
    assert sorted(path.name for path in photo.parent.iterdir()) == ["photo.png"]


def test_nothing_to_generate_exits_2_before_the_model_loads(photo, tmp_path, unloadable_model, vip_main):
    black = tmp_path / "black.png"
    Image.new("L", (48, 32), 0).save(black)
    result = vip_main("outpaint", photo, "--mask", black, "--model", unloadable_model, "--no-caption")
    assert result.returncode == 2, result.stderr
    assert _error_lines(result.stderr) == [
        f"error: {photo}: nothing to generate: the canvas equals the image and no --mask or transparency marks a region"
    ]


# ------------------------------------------------------------------------ batches


def test_a_batch_keeps_the_code_its_failures_share(tmp_path, vip_main):
    folder = tmp_path / "shots"
    _image(folder / "a.png")
    (folder / "b.png").write_bytes(b"not an image")
    (folder / "c.png").write_bytes(b"")
    result = vip_main("outpaint", folder, "--ratio", "2x", "--preview")
    assert result.returncode == 3, result.stderr  # two unreadable inputs; a.png still written
    assert (folder / "a_canvas.png").is_file()
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed")]
    assert len(failed) == 2 and all(result.stderr.count(str(folder / name)) == 1 for name in ("b.png", "c.png"))
    assert "2 written, 2 of 3 input(s) failed" in result.stderr


def test_a_batch_with_mixed_failures_exits_1(tmp_path, vip_main):
    folder = tmp_path / "shots"
    _image(folder / "a.png")
    (folder / "b.png").write_bytes(b"not an image")  # 3
    _image(folder / "c.png")
    _image(folder / "c_canvas.png", value=5)  # 5 (c_canvas.png is itself an input: its outputs are new)
    result = vip_main("outpaint", folder, "--ratio", "2x", "--preview")
    assert result.returncode == 1, result.stderr
    assert "b.png: not an image file" in result.stderr and "c_canvas.png exists" in result.stderr
    assert (folder / "a_canvas.png").is_file() and (folder / "c_canvas_canvas.png").is_file()


def test_output_problems_are_reported_before_any_image_is_processed(tmp_path, vip_main):
    folder = tmp_path / "shots"
    _image(folder / "a.png")
    _image(folder / "z.png")
    _image(folder / "z_canvas.png", value=5)
    result = vip_main("outpaint", folder / "a.png", folder / "z.png", "--ratio", "2x", "--preview")
    assert result.returncode == 5, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("failed") and "z_canvas.png exists" in lines[0]
    assert any(line.startswith("wrote") and "a_canvas.png" in line for line in lines[1:])


# ------------------------------------------------------------------------ memory


def test_an_image_too_large_for_the_memory_is_one_line_saying_what_it_needs(photo, vip_main, monkeypatch):
    import vipcli_model.outpainting.run as run

    def no_memory(path):
        raise MemoryError()

    monkeypatch.setattr(run, "load_image", no_memory)
    result = vip_main("outpaint", photo, "--ratio", "2x", "--preview")
    assert result.returncode == 3, result.stderr
    (line,) = _error_lines(result.stderr)
    assert "not enough memory" in line and "96x64 canvas needs about" in line and "GB" in line
    assert "shrink the image" in line and "internal error" not in line


def test_out_of_memory_outside_an_image_is_one_line_not_an_internal_error(photo, vip_main, monkeypatch):
    import vipcli_model.outpainting.run as run

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(run, "outpaint_images", no_memory)
    result = vip_main("outpaint", photo, "--ratio", "2x", "--preview")
    assert result.returncode == 1
    (line,) = _error_lines(result.stderr)
    assert line.startswith("error: out of memory: free memory") and "internal error" not in line
    assert "--batch-size" not in line  # vip outpaint has none


GPU_OUT_OF_MEMORY = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.6 GiB"


def _fail_first_call(monkeypatch, owner, name: str, error: BaseException) -> None:
    """``owner.name`` raises ``error`` on its first call and runs as usual after."""
    original, calls = getattr(owner, name), []

    def first_fails(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, first_fails)


def test_gpu_out_of_memory_in_outpaint_is_one_line_and_the_batch_goes_on(
    tmp_path, tiny_model_dir, vip_main, monkeypatch
):
    import torch

    from vipcli_model.outpainting.outpainter import Outpainter

    first, second = _image(tmp_path / "in" / "a.png"), _image(tmp_path / "in" / "b.png", value=1)
    _fail_first_call(monkeypatch, Outpainter, "outpaint", torch.OutOfMemoryError(GPU_OUT_OF_MEMORY))
    result = vip_main(
        "outpaint",
        first,
        second,
        "--ratio",
        "1.5x",
        "--model",
        tiny_model_dir,
        "--no-caption",
        "--steps",
        "1",
        "--seed",
        "1",
        "-o",
        tmp_path / "out",
    )
    assert result.returncode == 3, result.stderr  # an input's failure, not a bug (70)
    (line,) = [line for line in _error_lines(result.stderr) if line.startswith("failed")]
    assert line.startswith(f"failed {first}: out of GPU memory on cuda:0 (it tried to allocate 2.00 GiB): try ")
    assert "--memory" in line and "--vae-tiling" in line and "--tile-size" in line
    assert "batch" not in line and "`" not in line and "internal error" not in result.stderr
    assert (tmp_path / "out" / "b_outpaint.png").exists() and not (tmp_path / "out" / "a_outpaint.png").exists()


def test_gpu_out_of_memory_hints_only_what_the_run_has_not_tried(tmp_path, tiny_model_dir, vip_main, monkeypatch):
    import torch

    from vipcli_model.outpainting.outpainter import Outpainter

    _fail_first_call(monkeypatch, Outpainter, "outpaint", torch.cuda.OutOfMemoryError(GPU_OUT_OF_MEMORY))
    result = vip_main(
        "outpaint",
        _image(tmp_path / "a.png"),
        "--ratio",
        "1.5x",
        "--model",
        tiny_model_dir,
        "--no-caption",
        "--steps",
        "1",
        "--vae-tiling",
        "--detail",
        "off",
        "--num-images",
        "2",
    )
    assert result.returncode == 3, result.stderr
    (line,) = _error_lines(result.stderr)
    assert line.startswith("error: ") and "out of GPU memory on cuda:0" in line
    assert "--num-images" in line and "--vae-tiling" not in line and "--tile-size" not in line


def test_gpu_out_of_memory_in_edit_is_one_line_without_outpaint_options(tmp_path, vip_main, monkeypatch):
    import torch
    from tiny_models import save_tiny_ip2p_model

    from vipcli_model.editing.editor import Editor

    model = save_tiny_ip2p_model(tmp_path / "ip2p")
    first, second = _image(tmp_path / "in" / "a.png"), _image(tmp_path / "in" / "b.png", value=1)
    _fail_first_call(monkeypatch, Editor, "edit", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate ..."))
    result = vip_main(
        "edit", first, second, "add a boat", "--model", model, "--steps", "1", "--seed", "1", "-o", tmp_path / "out"
    )
    assert result.returncode == 3, result.stderr
    (line,) = [line for line in _error_lines(result.stderr) if line.startswith("failed")]
    assert line.startswith(f"failed {first}: out of GPU memory") and "--device cpu" in line
    assert "--memory" not in line and "--batch-size" not in line and "`" not in line
    assert (tmp_path / "out" / "b_edit.png").exists() and not (tmp_path / "out" / "a_edit.png").exists()


@pytest.mark.parametrize(
    ("command", "hint", "not_hinted"),
    [
        ("train", "--batch-size", "--memory"),
        ("caption", "--device cpu", "--batch-size"),
        ("outpaint", "--memory", "--batch-size"),
    ],
)
def test_gpu_out_of_memory_outside_an_input_names_the_gpu_and_the_command_s_own_options(
    command, hint, not_hinted, capsys, monkeypatch
):
    import torch

    import vipcli.main as cli

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError(GPU_OUT_OF_MEMORY)

    monkeypatch.setattr(cli, "run_app", out_of_memory)  # the command's own work, which runs inside the app
    monkeypatch.setattr(sys, "argv", ["vip", "--verbose", command, "data"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith("error: out of GPU memory on cuda:0 (it tried to allocate 2.00 GiB): try ")
    assert hint in line and not_hinted not in line and "internal error" not in line


def test_paste_back_in_place_needs_no_canvas_sized_buffer():
    """A 4000x4000 canvas: composing in place peaks at well under one more RGB canvas (64 MB).

    (10000x10000 1-bit PNG with 8-pixel margins, whole run with a tiny model, measured by
    benchmarks/bench_large_input.py: peak RSS 2,985 MB composing into a new canvas, 1,787 MB in place.)
    """
    script = f"""
import resource, sys
sys.path.insert(0, {str(REPO)!r})
from PIL import Image
from vipcli_model.outpainting.blend import paste_back
size = (4000, 4000)
generated, canvas = Image.new("RGB", size, (10, 10, 10)), Image.new("RGB", size, (200, 200, 200))
mask = Image.new("L", size, 255)
mask.paste(0, (8, 8, 3992, 3992))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = paste_back(generated, canvas, mask, feather=8, in_place=True)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert out is generated and out.getpixel((100, 100)) == (200, 200, 200) and out.getpixel((0, 0)) == (10, 10, 10)
print((after - before) / 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    grown_mb = float(done.stdout.strip())
    assert grown_mb < 32, f"paste-back grew the peak by {grown_mb:.0f} MB"


def test_paste_back_in_place_matches_the_copying_composition(monkeypatch):
    import vipcli_model.outpainting.blend as blend

    rng = np.random.default_rng(0)
    generated = Image.fromarray(rng.integers(0, 256, (45, 64, 3), dtype=np.uint8))
    canvas = Image.fromarray(rng.integers(0, 256, (45, 64, 3), dtype=np.uint8))
    mask_array = np.full((45, 64), 255, np.uint8)
    mask_array[10:35, 12:50] = 0
    mask = Image.fromarray(mask_array, "L")
    monkeypatch.setattr(blend, "_STRIP_ROWS", 7)  # several strips, seams crossing strip edges
    for feather in (0, 4):
        copied = np.asarray(blend.paste_back(generated, canvas, mask, feather=feather)).astype(int)
        in_place = np.asarray(blend.paste_back(generated.copy(), canvas, mask, feather=feather, in_place=True)).astype(
            int
        )
        assert np.abs(copied - in_place).max() <= 1
        weights = np.asarray(blend.seam_weights(mask, feather))
        exact = (weights == 0) | (weights == 255)
        assert np.array_equal(copied[exact], in_place[exact])


# ------------------------------------------------------------------------ one line; Ctrl-C


def test_a_missing_single_input_is_one_line(tmp_path, vip_main):
    result = vip_main("outpaint", tmp_path / "nope.png", "--ratio", "2x", "--preview")
    assert result.returncode == 3
    assert len(_error_lines(result.stderr)) == 1 and result.stderr.count("nope.png") == 1


def test_ctrl_c_exits_130_saying_what_was_finished(tmp_path, vip_main, monkeypatch):
    from vipcli.render import RunRenderer

    for name in ("a", "b", "c"):
        _image(tmp_path / "shots" / f"{name}.png")
    render = RunRenderer.render

    def render_then_interrupt(self, item):
        render(self, item)
        raise KeyboardInterrupt  # Ctrl-C right after the first image

    monkeypatch.setattr(RunRenderer, "render", render_then_interrupt)
    result = vip_main("outpaint", tmp_path / "shots", "--ratio", "2x", "--preview")
    assert result.returncode == 130
    assert result.stderr.splitlines()[-1] == (
        "interrupted: 1 input(s) finished, 2 file(s) written and kept; the rest was not started"
    )
    assert sorted(path.name for path in (tmp_path / "shots").iterdir()) == [
        "a.png",
        "a_canvas.png",
        "a_mask.png",
        "b.png",
        "c.png",
    ]


def test_sigint_to_a_running_vip_exits_130_with_a_word(tmp_path):
    """The real signal, to a subprocess busy with its second input (a 6000x6000 picture takes seconds)."""
    import signal
    import time

    folder = tmp_path / "shots"
    _image(folder / "a.png")
    Image.new("1", (6000, 6000), 1).save(folder / "b.png")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from vipcli.main import main; main()",
            "outpaint",
            str(folder),
            "--left",
            "8",
            "--preview",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a suite started in the background (`cmd &` without job control) inherits SIGINT ignored, as POSIX says
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not (folder / "a_mask.png").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.splitlines()[-1].startswith("interrupted: 1 input(s) finished, 2 file(s) written"), err
    assert not (folder / "b_mask.png").exists() and not list(folder.glob(".*.tmp"))


# ------------------------------------------------------------------------ vip train


def test_train_on_only_broken_images_names_each_and_why(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "empty.png").write_bytes(b"")
    (data / "text.jpg").write_bytes(b"hello")
    _image(data / "sub" / "cut.png", size=(64, 64))
    whole = (data / "sub" / "cut.png").read_bytes()
    (data / "sub" / "cut.png").write_bytes(whole[: len(whole) // 2])
    result = run_vip("train", str(data), "--out", str(tmp_path / "run"), "--max-steps", "1")
    assert result.returncode == 3, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "3 broken" in line
    for name, reason in (
        ("empty.png", "file is empty"),
        ("text.jpg", "not an image file"),
        ("sub/cut.png", "truncated"),
    ):
        assert f"{name}: {reason}" in line, line


# ------------------------------------------------------------------------ same-stem inputs: eval, caption --jsonl


def test_eval_gives_same_stem_images_their_own_outputs(tmp_path):
    from vipcli_model.evaluation.runner import list_images, read_prompts_file

    data = tmp_path / "test"
    for name in ("x.png", "x.jpg", "sub/x.png", "y.png"):
        _image(data / name)
    images, left_out = list_images(data)
    assert left_out == []
    assert [(key, path.relative_to(data).as_posix()) for key, path, _index in images] == [
        ("sub/x", "sub/x.png"),
        ("x_jpg", "x.jpg"),
        ("x_png", "x.png"),
        ("y", "y.png"),
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"image": name, "center": name, "surrounding": "s"}) + "\n" for name in ("x.png", "x.jpg"))
    )
    records = read_prompts_file(prompts, data, suffix=True)
    assert records["x.png"].center == "x.png" and records["x.jpg"].center == "x.jpg"


def test_eval_run_writes_one_output_per_same_stem_image_with_its_own_prompts(tmp_path, tiny_model_dir):
    from tiny_models import save_random_inception

    from vipcli_model.config import GenerationConfig, ModelConfig
    from vipcli_model.evaluation.runner import EvalConfig, ScoreConfig, parse_prompt_settings, run_eval
    from vipcli_model.images.io import read_metadata

    data = tmp_path / "test"
    for index, name in enumerate(("x.png", "x.jpg", "sub/x.png")):
        _image(data / name, size=(64, 64), value=index)
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"image": name, "center": f"center of {name}", "surrounding": "s"}) + "\n"
            for name in ("x.png", "x.jpg", "sub/x.png")
        )
    )
    config = EvalConfig(
        data_dir=data,
        out_dir=tmp_path / "run",
        settings=parse_prompt_settings([str(prompts)]),
        generation=GenerationConfig(steps=1, seed=0),
        model=ModelConfig(model=str(tiny_model_dir), device="cpu"),
        scoring=ScoreConfig(feature_weights=str(save_random_inception(tmp_path / "inception.pth")), device="cpu"),
    )
    report = run_eval(config)
    outputs = sorted(
        path.relative_to(config.out_dir / "pred" / "mine").as_posix()
        for path in (config.out_dir / "pred" / "mine").rglob("*.png")
    )
    assert outputs == ["sub/x.png", "x_jpg.png", "x_png.png"]
    assert report.results["skipped"] == [] and report.results["settings"]["mine"]["images"] == 3
    for key, name in (("x_png", "x.png"), ("x_jpg", "x.jpg"), ("sub/x", "sub/x.png")):
        meta = read_metadata(config.out_dir / "pred" / "mine" / f"{key}.png")["vip"]
        assert meta["prompts"]["center"] == f"center of {name}"


def test_caption_jsonl_keys_are_one_per_image(tmp_path, monkeypatch):
    from vipcli_model.captioning.batch import caption_images, data_root_for
    from vipcli_model.captioning.files import read_caption_jsonl

    class Describer:
        name = "describer"

        def generate(self, image, instruction, *, max_new_tokens):
            return "A picture of something."

    data = tmp_path / "shots"
    paths = [_image(data / name, value=index) for index, name in enumerate(("x.png", "x.jpg", "sub/x.png"))]
    jsonl = tmp_path / "caps.jsonl"
    for specs in ([str(data)], [str(path) for path in paths]):
        jsonl.unlink(missing_ok=True)
        run = caption_images(
            paths, spec=None, captioner=Describer(), jsonl=jsonl, use_cache=False, data_root=data_root_for(paths, specs)
        )
        assert [item.status for item in run.items] == ["captioned"] * 3
        assert sorted(read_caption_jsonl(jsonl)) == ["sub/x.png", "x.jpg", "x.png"]


# ------------------------------------------------------------------------ one destination check, every command


def _tree(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*"))


@pytest.mark.parametrize(
    ("kind", "make", "problem"),
    [
        ("file", lambda path: path.mkdir(), "is a folder, not a file"),
        ("file", lambda path: path.write_text("old"), "exists; pass `overwrite=True`"),
        ("append", lambda path: path.mkdir(), "is a folder, not a file"),
        ("folder", lambda path: path.write_text("old"), "is a file, not a folder"),
        ("folder", lambda path: None, None),
        ("append", lambda path: path.write_text("old"), None),
    ],
)
def test_one_destination_check_knows_files_appended_files_and_folders(tmp_path, kind, make, problem):
    from vipcli_model.images.outputs import check_destination

    target = tmp_path / "target"
    make(target)
    found = check_destination(target, kind=kind, argument="out_dir")
    assert (found is None) if problem is None else (found.exit_code == 5 and problem in str(found)), found
    if problem is not None:
        assert str(found).startswith(f"`out_dir` {target}")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    under = check_destination(blocker / "sub" / "target", kind=kind)
    assert under is not None and f"cannot be written there: {blocker} is a file" in str(under)


@pytest.fixture()
def train_data(tmp_path) -> Path:
    for index in range(2):
        _image(tmp_path / "data" / f"{index}.png", size=(64, 64), value=index)
    return tmp_path / "data"


def _blocked_run_file(tmp_path: Path) -> tuple[list[str], str]:
    run = tmp_path / "run.txt"
    run.write_text("not a run folder")
    return ["--out", str(run)], f"error: --out {run} is a file, not a folder"


def _run_under_a_file(tmp_path: Path) -> tuple[list[str], str]:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    return ["--out", str(blocker / "run")], f"cannot be written there: {blocker} is a file, not a folder"


def _checkpoints_that_is_a_file(tmp_path: Path) -> tuple[list[str], str]:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("in the way")
    return ["--out", str(tmp_path / "run")], f"{tmp_path / 'run' / 'checkpoints'} is a file, not a folder"


def _config_that_is_a_folder(tmp_path: Path) -> tuple[list[str], str]:
    (tmp_path / "run" / "config.json").mkdir(parents=True)
    return ["--out", str(tmp_path / "run")], f"{tmp_path / 'run' / 'config.json'} is a folder, not a file"


def _validation_that_is_a_file(tmp_path: Path) -> tuple[list[str], str]:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "validation").write_text("in the way")
    return ["--out", str(tmp_path / "run"), "--validate-every", "1"], "validation is a file, not a folder"


def _resume_into_a_file(tmp_path: Path) -> tuple[list[str], str]:
    run = tmp_path / "run.txt"
    run.write_text("not a run folder")
    return ["--out", str(run), "--resume"], f"error: --out {run} is a file, not a folder"


@pytest.mark.parametrize(
    "case",
    [
        _blocked_run_file,
        _run_under_a_file,
        _checkpoints_that_is_a_file,
        _config_that_is_a_folder,
        _validation_that_is_a_file,
        _resume_into_a_file,
    ],
)
@pytest.mark.parametrize("dry_run", [False, True])
def test_train_run_folder_it_cannot_write_exits_5_before_any_model_loads(
    tmp_path, train_data, unloadable_model, vip_main, case, dry_run
):
    out, expected = case(tmp_path)
    before = _tree(tmp_path)
    extra = ["--dry-run"] if dry_run else []
    result = vip_main("train", train_data, *out, "--model", unloadable_model, "--max-steps", "1", *extra)
    assert result.returncode == 5, result.stderr  # not 4: the model was never touched; not 70
    (line,) = _error_lines(result.stderr)
    assert expected in line and "`" not in line, line  # flags, not library argument names
    assert _tree(tmp_path) == before  # nothing made, nothing moved


def test_train_read_only_run_folder_exits_5(tmp_path, train_data, unloadable_model, vip_main, monkeypatch):
    run = _read_only_folder(tmp_path / "run", monkeypatch)
    result = vip_main("train", train_data, "--out", run, "--model", unloadable_model, "--max-steps", "1")
    assert result.returncode == 5, result.stderr
    (line,) = _error_lines(result.stderr)
    assert f"cannot write to folder {run}" in line
    assert list(run.iterdir()) == []


def test_caption_jsonl_under_a_file_exits_5_before_the_captioner_loads(tmp_path, unloadable_model, vip_main):
    photos = tmp_path / "photos"
    _image(photos / "a.png")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    (tmp_path / "folder.jsonl").mkdir()
    before = _tree(tmp_path)
    for jsonl, expected in (
        (blocker / "caps.jsonl", f"cannot be written there: {blocker} is a file, not a folder"),
        (tmp_path / "folder.jsonl", "is a folder, not a file"),
    ):
        result = vip_main("caption", photos, "--jsonl", jsonl, "--captioner", unloadable_model, "--no-cache")
        assert result.returncode == 5, result.stderr  # not 3 (it is no input) nor 4/6 (the captioner never loaded)
        (line,) = _error_lines(result.stderr)
        assert line.startswith(f"error: --jsonl {jsonl}") and expected in line, line
    assert _tree(tmp_path) == before
    assert blocker.read_text() == "a file where a folder should be"


def test_edit_mask_of_the_wrong_size_exits_2_as_outpaint_does(photo, tmp_path, unloadable_model, vip_main):
    mask = tmp_path / "mask.png"
    Image.new("L", (7, 7), 255).save(mask)
    result = vip_main("edit", photo, "add a boat", "--mask", mask, "--model", unloadable_model)
    assert result.returncode == 2, result.stderr
    (line,) = _error_lines(result.stderr)
    assert f"--mask {mask} is 7x7, but must match the image (48x32)" in line, line
    assert sorted(path.name for path in photo.parent.iterdir()) == ["photo.png"]


def test_eval_out_that_is_a_file_exits_5_and_writes_nothing(tmp_path, vip_main):
    data, preds = tmp_path / "test", tmp_path / "preds"
    _image(data / "a.png", size=(64, 64))
    _image(preds / "a.png", size=(64, 64))
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    before = _tree(tmp_path)
    for args in ((data, "--out", target), ("--pred", preds, "--gt", data, "--out", target)):
        result = vip_main("eval", *args)
        assert result.returncode == 5, result.stderr
        assert _error_lines(result.stderr) == [f"error: --out {target} is a file, not a folder"]
    assert _tree(tmp_path) == before
