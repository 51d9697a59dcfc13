"""`vip train` through the real entry point: train then outpaint, SIGKILL + --resume, two processes, --dry-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from conftest import run_vip, run_vip_on_two_processes
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from vipcli_model.images.io import read_metadata
from vipcli_model.training.checkpoint import list_checkpoints, load_checkpoint

SMALL = ["--resolution", "64", "--batch-size", "1", "--rank", "4", "--validate-every", "0"]


def make_data(folder: Path, count: int = 3) -> Path:
    """Smooth images, one corrupt file, captions for one image and for one that does not exist."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for index in range(count):
        base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(base).resize((96, 80), Image.Resampling.BILINEAR).save(folder / f"img{index}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    records = [
        {"image": "img0.png", "center": "a red barn", "surrounding": "snowy field", "center_box": [24, 20, 72, 60]},
        {"image": "gone.png", "center": "a boat", "surrounding": "the sea"},
    ]
    (folder / "captions.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return folder


def test_train_then_outpaint_with_the_result(tiny_model_dir, tmp_path, astronaut_png):
    data = make_data(tmp_path / "data")
    run = tmp_path / "run"
    result = run_vip(
        "train",
        str(data),
        "--out",
        str(run),
        "--model",
        str(tiny_model_dir),
        "--max-steps",
        "50",
        "--resolution",
        "64",
        "--batch-size",
        "2",
        "--rank",
        "4",
        "--save-every",
        "20",
        "--keep",
        "2",
    )
    assert result.returncode == 0, result.stderr
    # the broken image and the caption without image are reported; training went on
    assert "broken broken.jpg" in result.stderr and "gone.png" in result.stderr
    assert "3 usable, 1 captioned, 2 without caption" in result.stderr
    assert result.stdout.strip().endswith("cts_adapter.safetensors")
    assert [step for step, _ in list_checkpoints(run / "checkpoints")] == [40, 50]  # keep 2
    assert (run / "validation" / "step_50.png").is_file()  # validation at the end of the run
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in metrics] == list(range(1, 51))
    assert all(key in metrics[-1] for key in ("loss", "lr", "grad_norm", "steps_per_second", "eta_seconds"))
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["max_steps"] == 50 and saved["versions"]["torch"] and saved["data"]["broken"]
    with safe_open(str(run / "cts_adapter.safetensors"), framework="pt") as handle:
        assert handle.metadata()["base_model"] == str(tiny_model_dir.resolve())

    out = tmp_path / "out.png"
    outpaint = run_vip(
        "outpaint",
        str(astronaut_png),
        "--ratio",
        "1.5x",
        "--model",
        str(tiny_model_dir),
        "--adapter",
        str(run / "cts_adapter.safetensors"),
        "--center",
        "a person",
        "--surrounding",
        "a field",
        "--steps",
        "2",
        "--seed",
        "1",
        "-o",
        str(out),
    )
    assert outpaint.returncode == 0, outpaint.stderr
    vip = read_metadata(out)["vip"]
    assert vip["cts"]["mode"] == "adapter" and vip["adapter"].endswith("cts_adapter.safetensors")


def _checkpoint_exists(run: Path, step: int) -> bool:
    return (run / "checkpoints" / f"step_{step}").is_dir()


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    data = make_data(tmp_path / "data")
    args = [
        "train",
        str(data),
        "--model",
        str(tiny_model_dir),
        "--max-steps",
        "30",
        "--save-every",
        "5",
        "--keep",
        "2",
        *SMALL,
    ]
    straight = run_vip(*args, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    run = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-c", "from vipcli.main import main; main()", *args, "--out", str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not _checkpoint_exists(run, 10) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run / "cts_adapter.safetensors").exists()
    for _step, path in list_checkpoints(run / "checkpoints"):
        load_checkpoint(path)  # every complete-looking checkpoint is readable: none left corrupt
    # a temp folder as a kill during a checkpoint write would leave it
    (run / "checkpoints" / ".tmp-step_99-dead").mkdir()

    resumed = run_vip("train", "--out", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and ".tmp-step_99-dead" in resumed.stderr
    assert not (run / "checkpoints" / ".tmp-step_99-dead").exists()
    expected, found = (
        load_file(tmp_path / "straight" / "cts_adapter.safetensors"),
        load_file(run / "cts_adapter.safetensors"),
    )
    for key in expected:
        assert torch.equal(expected[key], found[key]), key
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))  # lines past the checkpoint, from the killed run, were dropped


def test_two_processes_train_one_adapter(tiny_model_dir, tmp_path):
    data = make_data(tmp_path / "data", count=4)
    run = tmp_path / "run"
    train = ["train", data, "--out", run, "--model", tiny_model_dir, "--max-steps", "4", "--save-every", "2", *SMALL]
    result = run_vip_on_two_processes(*train, port=29517)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 process(es)" in result.stderr and "effective batch 2" in result.stderr
    assert result.stderr.count("wrote ") == 1  # one process writes
    assert json.loads((run / "config.json").read_text())["num_processes"] == 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    state = json.loads((run / "checkpoints" / "step_4" / "state.json").read_text())
    assert state["num_processes"] == 2 and state["data_position"] == 8
    assert load_file(run / "cts_adapter.safetensors")["gate_logits"].numel() > 0


def test_dry_run_checks_the_model_can_be_had(tmp_path, vip_main):
    data = make_data(tmp_path / "data")
    for model, says in (("sd15-inpaint", "HF_HUB_OFFLINE=1"), (str(tmp_path / "nowhere"), "does not exist")):
        result = vip_main("train", data, "--out", tmp_path / "run", "--model", model, "--dry-run")
        assert result.returncode == 4 and "ok:" not in result.stdout
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: inpainting model") and says in line


def test_dry_run_reports_and_checks(tiny_model_dir, tmp_path):
    data = make_data(tmp_path / "data")
    result = run_vip("train", str(data), "--out", str(tmp_path / "run"), "--model", str(tiny_model_dir), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "3 usable, 1 captioned, 2 without caption" in result.stdout
    assert "broken broken.jpg" in result.stdout and "gone.png" in result.stdout and "ok:" in result.stdout
    assert not (tmp_path / "run").exists()

    only_broken = tmp_path / "bad"
    only_broken.mkdir()
    (only_broken / "x.png").write_bytes(b"nope")
    result = run_vip(
        "train", str(only_broken), "--out", str(tmp_path / "run"), "--model", str(tiny_model_dir), "--dry-run"
    )
    assert result.returncode == 3 and "no usable training images" in result.stderr

    config = tmp_path / "train.toml"
    config.write_text("max_step = 3\nlr = 'fast'\n")
    result = run_vip(
        "train", str(data), "--out", str(tmp_path / "run"), "--config", str(config), "--mode", "turbo", "--dry-run"
    )
    assert result.returncode == 2
    assert "max_step" in result.stderr and "lr = 'fast'" in result.stderr

    result = run_vip(
        "train", str(data), "--out", str(tmp_path / "run"), "--mode", "turbo", "--batch-size", "0", "--dry-run"
    )
    assert result.returncode == 2 and "mode 'turbo'" in result.stderr and "batch_size 0" in result.stderr
