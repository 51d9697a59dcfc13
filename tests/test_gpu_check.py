"""benchmarks/gpu_check.py starts and runs every check: its ``--device cpu --tiny`` mode on the tiny models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_the_gpu_check_runs_every_check_on_tiny_models(tmp_path, capsys):
    import gpu_check

    arguments = ["--device", "cpu", "--tiny", "--steps", "1", "--plan-steps", "1", "--budget", "1000"]
    report = gpu_check.main([*arguments, "--workdir", str(tmp_path)])
    rows = {(row["check"], row["family"], row["what"]): row for row in report["rows"]}
    errors = [row for row in report["rows"] if "error" in row]
    assert not errors
    runs = [(family, check) for family in ("sd15", "sdxl") for check in ("default", "fast")] + [("flux", "default")]
    side_by_side = [(check, family, what) for family, check in runs for what in ("vip", "plain diffusers")]
    for key in side_by_side:
        assert rows[key]["run_s"] > 0 and rows[key]["load_s"] > 0, key
    assert ("fast", "flux", "vip") not in rows  # FLUX Fill has no fast preset
    for family in ("sd15", "sdxl", "flux"):
        assert rows[("memory", family, "full")]["plan"] == "full"
        assert rows[("memory", family, "model-offload")]["skipped"] == "needs a CUDA GPU"
    assert rows[("detail", "sd15", "96x72 at 2x")]["run_s"] > 0
    assert (tmp_path / "out.png").is_file() and (tmp_path / "detail.png").is_file()
    assert json.loads((tmp_path / "gpu_check.json").read_text())["rows"] == report["rows"]
    table = capsys.readouterr().out
    assert "plain diffusers" in table and "needs a CUDA GPU" in table


def test_the_gpu_check_refuses_a_missing_gpu_in_one_line(tmp_path, capsys):
    import gpu_check
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here")
    with pytest.raises(SystemExit) as exited:
        gpu_check.main(["--workdir", str(tmp_path)])
    assert exited.value.code == 2
    assert "no CUDA GPU here" in capsys.readouterr().err
