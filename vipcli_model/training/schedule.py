"""The learning-rate schedule: a pure function of the step (nanoGPT), so a resumed run needs only the step."""

from __future__ import annotations

import math


def lr_factor(
    step: int, *, max_steps: int, warmup_steps: int, schedule: str = "cosine", min_ratio: float = 0.1
) -> float:
    """The multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear warmup over ``warmup_steps`` (step 0 gets 1/warmup_steps of the peak, step
    warmup_steps - 1 the full peak), then ``constant`` or a half-cosine from 1 (at step
    ``warmup_steps``) down to ``min_ratio`` at the last step (``max_steps - 1``) and after it.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule '{schedule}' (cosine or constant)")
    decay_steps = max_steps - 1 - warmup_steps
    if decay_steps <= 0:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
