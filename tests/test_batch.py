"""The loop over inputs that `vip outpaint` and `vip edit` share: order, failures, the model, memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from vipcli_model.batch import run_batch
from vipcli_model.errors import InputError, ModelNotFoundError, OutOfMemory, OutputError


@dataclass
class Input:
    path: Path


def _exists(destinations: list[Path], overwrite: bool) -> OutputError | None:
    taken = [path for path in destinations if path.exists() and not overwrite]
    return OutputError(f"{taken[0]} exists") if taken else None


def _run(tmp_path: Path, work, missing=(), names=("a", "b", "c")):
    found = [Input(tmp_path / f"{name}.png") for name in names]
    plans = [[tmp_path / f"{name}_out.png"] for name in names]
    seen = []
    run = run_batch(
        found,
        plans,
        list(missing),
        work,
        overwrite=False,
        check_destinations=_exists,
        out_of_memory=lambda path, exc: OutOfMemory(f"{path}: out of memory"),
        on_item=lambda item, done, total: seen.append((Path(item.source).name, item.status, done, total)),
    )
    return run, seen


def test_missing_first_then_unwritable_outputs_then_the_work_in_order(tmp_path):
    (tmp_path / "b_out.png").write_bytes(b"old")
    worked = []

    def work(image_input, destinations, item):
        worked.append(image_input.path.name)
        destinations[0].write_bytes(b"new")

    run, seen = _run(tmp_path, work, missing=[("nothing*.png", "matches no file")])
    assert seen == [
        ("nothing*.png", "missing", 1, 4),
        ("b.png", "failed", 2, 4),
        ("a.png", "written", 3, 4),
        ("c.png", "written", 4, 4),
    ]
    assert worked == ["a.png", "c.png"] and (tmp_path / "b_out.png").read_bytes() == b"old"
    assert isinstance(run.items[0].error, InputError) and isinstance(run.items[1].error, OutputError)


def test_an_input_that_runs_out_of_memory_fails_alone_and_the_batch_goes_on(tmp_path):
    def work(image_input, destinations, item):
        if image_input.path.name == "a.png":
            raise MemoryError()
        if image_input.path.name == "b.png":
            raise RuntimeError("CUDA error: out of memory")

    run, seen = _run(tmp_path, work)
    assert [status for _name, status, _done, _total in seen] == ["failed", "failed", "written"]
    assert all(isinstance(item.error, OutOfMemory) and item.error.exit_code == 3 for item in run.failures)


def test_a_model_that_cannot_be_had_stops_the_run_and_a_bug_is_not_an_input_s_failure(tmp_path):
    def no_model(image_input, destinations, item):
        raise ModelNotFoundError("model 'x' is not cached")

    with pytest.raises(ModelNotFoundError):
        _run(tmp_path, no_model)

    def bug(image_input, destinations, item):
        raise KeyError("x")

    with pytest.raises(KeyError):
        _run(tmp_path, bug)


def test_an_output_that_appears_during_the_run_is_not_overwritten(tmp_path):
    def work(image_input, destinations, item):
        (tmp_path / "b_out.png").write_bytes(b"someone else's")  # written while a.png was being done
        destinations[0].write_bytes(b"new")

    run, _seen = _run(tmp_path, work, names=("a", "b"))
    assert [item.status for item in run.items] == ["written", "failed"]
    assert (tmp_path / "b_out.png").read_bytes() == b"someone else's"
