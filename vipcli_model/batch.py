"""What every command that works through many inputs shares: the loop over them, and a multi-process run.

``run_batch`` is the loop of ``outpaint_images`` and ``edit_images``: inputs that name no image reported first,
every input's outputs checked before any work (a batch does not generate what it cannot save), then each input's
work, whose failure (an error of the input's, or running out of memory) is reported and skipped, while a model that
cannot be had stops the run. With ``skip_existing`` an input whose every output is already there, made by the same
job, is skipped (a resumed run); an output made by other settings fails its input, naming the setting.

Several processes (``accelerate launch --num_processes N`` or ``torchrun``, one per GPU, or CPU processes over gloo)
each take every N-th input; nothing distributed is imported for a single process.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vipcli_model.errors import (
    InputError,
    ModelLoadError,
    ModelNotFoundError,
    OptionError,
    VipError,
    is_out_of_memory,
    release_cached_memory,
)

logger = logging.getLogger(__name__)


@dataclass
class WrittenFile:
    path: Path
    metadata: dict[str, Any]  # what the file records (the ``vip`` JSON)


@dataclass
class BatchItem:
    """What happened to one input of a run."""

    source: str  # the image's path, or the input that named no image
    status: str  # "written", "skipped" (done before, by the same job), "failed", or "missing" (names no image)
    written: list[WrittenFile] = field(default_factory=list)  # on disk, also for a failure after the first result
    notes: list[str] = field(default_factory=list)  # warnings: conversions on load, prompts cut to fit
    error: VipError | None = None  # "failed" and "missing": why, in one line
    kept: list[Path] = field(default_factory=list)  # "skipped": its files, there before and left as they were
    run_notes: list[str] = field(default_factory=list)  # what holds for the whole run (the detail pass not run):
    # a run says the first input's once, through its ``on_note``
    run_warnings: list[str] = field(default_factory=list)  # a Dask worker's warnings for the whole run (no
    # captioner, keywords instead), said once each by ``run_on_dask``'s ``on_warning``


@dataclass
class BatchRun:
    """The outcome of a run over many inputs."""

    items: list[BatchItem] = field(default_factory=list)
    main_process: bool = True  # False on the other processes of a multi-process run (they print no summary)

    @property
    def written(self) -> list[WrittenFile]:
        return [file for item in self.items for file in item.written]

    @property
    def failures(self) -> list[BatchItem]:
        return [item for item in self.items if item.status not in ("written", "skipped")]

    @property
    def skipped(self) -> list[BatchItem]:
        return [item for item in self.items if item.status == "skipped"]


ItemCallback = Callable[[BatchItem, int, int], None]
# finished(destinations, overwrite): True when every file is there and records this job, False when some are still to
# make (those there record this job); raises a VipError for a file made otherwise (with ``overwrite``: False instead)
FinishedCheck = Callable[[list[Path], bool], bool]
FINISHED = "finished"
STOPS_THE_RUN = (ModelNotFoundError, ModelLoadError)  # no input can be done without the model


def run_batch(
    found: Sequence[Any],
    plans: Sequence[list[Path]],
    missing: Sequence[tuple[str, str]],
    work: Callable[[Any, list[Path], BatchItem], None],
    *,
    overwrite: bool,
    check_destinations: Callable[[list[Path], bool], VipError | None],
    out_of_memory: Callable[[Path, BaseException], VipError],
    on_item: ItemCallback | None = None,
    total: int | None = None,
    finished: FinishedCheck | None = None,
) -> BatchRun:
    """Do ``work(input, destinations, item)`` for each of ``found`` (inputs with a ``path``), ``plans[i]`` its files.

    ``missing``: (spec, why) of inputs that named no image, reported first. ``check_destinations(files, overwrite)``
    says why one input's files cannot be written (else None), for every input before any work and again right
    before its own (a file may have appeared since). ``work`` fills ``item`` (files written, notes) and raises a
    ``VipError`` to fail that input; running out of memory fails it with ``out_of_memory(path, error)``, once the
    memory it held is released. ``on_item(item, done, total)`` after each input; ``total``: of the whole run (a
    multi-process run's, by default this one's). ``finished``: given, the run resumes (``skip_existing``): an
    input it calls finished is reported "skipped" and not worked on, and the files of an input partly done may be
    replaced (they record this job), so ``work`` must save them with overwriting allowed.
    """
    run = BatchRun()
    total = len(found) + len(missing) if total is None else total

    def report(item: BatchItem) -> None:
        run.items.append(item)
        if on_item is not None:
            on_item(item, len(run.items), total)

    for spec, reason in missing:
        report(BatchItem(source=spec, status="missing", error=InputError(f"{spec}: {reason}")))

    def problem(destinations: list[Path]) -> VipError | str | None:
        """Why an input's files cannot be written, None when they can, FINISHED when they are there already."""
        if finished is None:
            return check_destinations(destinations, overwrite)
        try:
            if finished(destinations, overwrite):
                return FINISHED
        except VipError as exc:
            return exc
        return check_destinations(destinations, True)  # the files there are this job's: only writability counts

    ready = []
    for image_input, destinations in zip(found, plans):
        found_problem = problem(destinations)
        if found_problem is None:
            ready.append((image_input, destinations))
        elif found_problem is FINISHED:
            report(BatchItem(source=str(image_input.path), status="skipped", kept=list(destinations)))
        else:
            report(BatchItem(source=str(image_input.path), status="failed", error=found_problem))
    for image_input, destinations in ready:
        item = BatchItem(source=str(image_input.path), status="written")
        try:
            found_problem = problem(destinations)
            if found_problem is FINISHED:  # finished meanwhile (another process of the run)
                item.status, item.kept = "skipped", list(destinations)
                report(item)
                continue
            if found_problem is not None:
                raise found_problem
            work(image_input, destinations, item)
        except STOPS_THE_RUN:
            raise
        except VipError as exc:
            item.status, item.error = "failed", exc
        except Exception as exc:  # noqa: BLE001 - only running out of memory is the input's, the rest a bug
            if not is_out_of_memory(exc):
                raise
            release_cached_memory()
            item.status, item.error = "failed", out_of_memory(image_input.path, exc)
        if item.error is not None:
            logger.info("%s: %s", image_input.path, item.error)
        report(item)
    return run


@dataclass
class Processes:
    """This process's place in a run: its index among ``count`` processes, its device, and a barrier."""

    index: int = 0
    count: int = 1
    device: str | None = None  # the device accelerate gave this process; None: pick as usual
    barrier: Callable[[], None] = lambda: None  # waits for every process (a no-op for one)

    @property
    def is_main(self) -> bool:
        return self.index == 0


def current_processes() -> Processes:
    """This process's place among those ``accelerate launch`` or ``torchrun`` started (one, without them)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return Processes()
    import torch
    from accelerate import PartialState

    # without CUDA, accelerate only joins the processes (gloo) when told to use the CPU;
    # generation between two barriers can take hours on big sets: a long collective timeout
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=_dt.timedelta(hours=48))
    if state.num_processes != world_size:
        raise OptionError(
            f"launched as {world_size} processes, but accelerate joined {state.num_processes}: launch every process "
            "with `accelerate launch --num_processes N` or `torchrun --nproc_per_node N`"
        )
    return Processes(state.process_index, state.num_processes, str(state.device), state.wait_for_everyone)


def gather(run: BatchRun, processes: Processes) -> BatchRun:
    """Every process's items on every process, in input order (process 0's first input, process 1's, ...)."""
    import torch.distributed as dist

    shares: list = [None] * processes.count
    dist.all_gather_object(shares, run.items)
    items = [item for share in shares for item in share if item.status == "missing"]
    placed = [[item for item in share if item.status != "missing"] for share in shares]
    for position in range(max(len(share) for share in placed)):
        items += [share[position] for share in placed if position < len(share)]
    return BatchRun(items=items, main_process=processes.is_main)
