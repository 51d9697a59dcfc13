"""Shared fixtures: no test touches the network or the user's caches; tiny real models built in code."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import build_tiny_inpaint_components, save_tiny_inpaint_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory, monkeypatch):
    """Every cache in a temp dir, the hub offline and no proxy, for every test."""
    root = tmp_path_factory.mktemp("caches")
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("VIP_CACHE_DIR", str(root / "vip"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.delenv("VIP_DEBUG", raising=False)
    monkeypatch.delenv("VIP_CAPTIONER_API_KEY", raising=False)
    # tests talk to stub servers on 127.0.0.1: no proxy may stand in between
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny 9-channel SD inpainting model saved as a diffusers folder (loaded via --model DIR)."""
    return save_tiny_inpaint_model(tmp_path_factory.mktemp("tiny-sd-inpaint"))


@pytest.fixture()
def tiny_components() -> dict:
    return build_tiny_inpaint_components(seed=0)


@pytest.fixture(scope="session")
def astronaut_png(tmp_path_factory) -> Path:
    import skimage.data

    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    return path


@pytest.fixture()
def photo_600x400(tmp_path) -> Path:
    import skimage.data

    path = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).resize((600, 400)).save(path)
    return path


def run_vip(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `vip` entry point in a subprocess (exit codes and messages as a user sees them)."""
    full_env = dict(os.environ)
    # one thread per vip process: on a small shared machine torch's default threads spin against each other
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", "from vipcli.main import main; main()", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_vip_on_two_processes(*args, port: int) -> subprocess.CompletedProcess:
    """`accelerate launch` of `vip ARGS` on two processes of this machine (one thread each), as a user runs it."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(port), "-m", "vipcli.main"]
    return subprocess.run(
        [*launcher, *map(str, args)],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )


def outpaint_args(photo, model, out, *options, ratio: str = "1.25x") -> list:
    """`vip outpaint PHOTO --ratio RATIO --model MODEL OPTIONS -o OUT`: the arguments of most outpaint runs."""
    return ["outpaint", photo, "--ratio", ratio, "--model", model, *options, "-o", out]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture()
def vip_main(capsys, monkeypatch):
    """Call the console script's ``main()`` in this process (no interpreter start-up); exit code and output."""
    from vipcli.main import main

    def call(*args) -> Result:
        monkeypatch.setattr(sys, "argv", ["vip", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return call
