"""Checkpoints: atomic (a failure or a kill mid-write never leaves a step_N), rolling window, RNG round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from vipcli_model.errors import InputError, OutputError
from vipcli_model.training import checkpoint as ckpt


def write(folder, step, value=1.0):
    return ckpt.save_checkpoint(
        folder,
        step,
        trainable={"adapter.w": torch.full((2, 3), value)},
        optimizer={
            "state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.ones(2, 3)}},
            "param_groups": [{"lr": 0.1, "params": [0], "name": "cts"}],
        },
        state={"data_position": step * 4, "config": {"lr": 0.1}},
        ema={"adapter.w": torch.zeros(2, 3), "__updates__": torch.tensor(step)},
    )


def test_round_trip_and_rolling_window(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (5, 10, 15, 20):
        write(folder, step, value=float(step))
        ckpt.prune_checkpoints(folder, keep=2)
    assert [step for step, _ in ckpt.list_checkpoints(folder)] == [15, 20]
    loaded = ckpt.load_checkpoint(ckpt.latest_checkpoint(folder))
    assert loaded.step == 20 and loaded.state["data_position"] == 80
    assert torch.equal(loaded.trainable["adapter.w"], torch.full((2, 3), 20.0))
    assert loaded.optimizer["param_groups"][0]["name"] == "cts" and int(loaded.ema["__updates__"]) == 20
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp or trash left


def test_a_failed_write_leaves_no_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    write(folder, 5)

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OutputError, match="cannot write checkpoint"):
        write(folder, 10)
    assert [step for step, _ in ckpt.list_checkpoints(folder)] == [5]
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_leftovers_of_a_killed_run_are_ignored_then_removed(tmp_path):
    folder = tmp_path / "checkpoints"
    write(folder, 5)
    partial = folder / ".tmp-step_10-abcd"  # what a kill during a write leaves
    partial.mkdir()
    (partial / "trainable.safetensors").write_bytes(b"\x00" * 10)
    (folder / ".trash-step_1-ffff").mkdir()
    assert ckpt.latest_checkpoint(folder).name == "step_5"
    removed = ckpt.remove_temporaries(folder)
    assert sorted(p.name for p in removed) == [".tmp-step_10-abcd", ".trash-step_1-ffff"]
    assert [p.name for p in folder.iterdir()] == ["step_5"]


def test_damaged_checkpoints_are_refused_by_name(tmp_path):
    folder = tmp_path / "checkpoints"
    path = write(folder, 5)
    (path / "rng.pt").unlink()
    with pytest.raises(InputError, match="step_5 is incomplete"):
        ckpt.load_checkpoint(path)
    path = write(folder, 6)
    (path / "trainable.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="step_6 cannot be read"):
        ckpt.load_checkpoint(path)


def test_rng_states_round_trip():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ckpt.capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
