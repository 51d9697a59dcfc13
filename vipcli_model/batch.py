"""What every command that works through many inputs shares: this process's share of a multi-process run.

Several processes (``accelerate launch --num_processes N`` or ``torchrun``, one per GPU, or CPU processes over gloo)
each take every N-th input; nothing distributed is imported for a single process.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import Callable

from vipcli_model.errors import OptionError


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
