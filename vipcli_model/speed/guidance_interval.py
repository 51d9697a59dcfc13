"""Classifier-free guidance in a limited interval of noise levels (Kynkaanniemi et al. 2024).

"Applying guidance in a limited interval improves sample and distribution quality in diffusion models"
(arXiv 2404.07724) guides only the steps whose noise level sigma lies in an interval ``(low, high]``; outside it the
model runs once, on the conditional branch alone, and that prediction is used as it is. Each unguided step saves one
of the two UNet passes guidance costs.

diffusers' denoising loop stays as it is: it still batches ``[unconditional; conditional]``. For the duration of
one call, :func:`limited_guidance` wraps the UNet's ``forward`` so that, at a step outside the interval, the UNet
runs on the conditional half only and returns that prediction for both halves; guidance then gives
``uncond + g * (cond - uncond) = cond`` exactly. C-T-S region embeddings are cut to the same half.

The noise level of a timestep ``t`` is ``sigma = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` from the scheduler's
training schedule (the EDM convention the paper uses; SD-1.5's schedule spans sigma 0.03 to 14.6).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch

from vipcli_model.cts.attention import CTSController, CTSState

EVERY_STEP = (0.0, math.inf)  # guidance at every step: diffusers' own behaviour


def covers_every_step(interval: tuple[float, float] | None) -> bool:
    return interval is None or (interval[0] <= 0.0 and math.isinf(interval[1]))


def timestep_sigma(scheduler, timestep: torch.Tensor | float) -> float:
    """The noise level sigma of a (discrete) training timestep, from the scheduler's ``alphas_cumprod``."""
    alphas = scheduler.alphas_cumprod
    index = int(round(float(timestep.flatten()[0] if torch.is_tensor(timestep) else timestep)))
    index = min(max(index, 0), len(alphas) - 1)
    alpha = float(alphas[index])
    return math.sqrt((1.0 - alpha) / alpha)


def _half(value, batch: int):
    """The conditional (second) half of a tensor batched ``[unconditional; conditional]``; anything else as is."""
    if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == batch:
        return value[batch // 2:]
    if isinstance(value, dict):
        return {key: _half(item, batch) for key, item in value.items()}
    return value


def _conditional_state(state: CTSState | None) -> CTSState | None:
    if state is None:
        return None
    half = state.center.shape[0] // 2
    mask = state.mask[half:] if state.mask.shape[0] == state.center.shape[0] else state.mask
    return CTSState(center=state.center[half:], surrounding=state.surrounding[half:], mask=mask)


@contextmanager
def forward_replaced(module: torch.nn.Module, forward, own) -> Iterator[None]:
    """``module.forward`` is ``forward`` inside the block; then ``own`` again (an instance-level forward someone else
    set, ``module.__dict__.get("forward")`` before the swap) or the class's."""
    module.forward = forward
    try:
        yield
    finally:
        del module.forward
        if own is not None:
            module.forward = own


@contextmanager
def limited_guidance(
    unet: torch.nn.Module,
    scheduler,
    interval: tuple[float, float] | None,
    cts: CTSController | None = None,
) -> Iterator[dict[str, int]]:
    """Guidance only where ``low < sigma <= high`` for the ``with`` body; yields counts of guided and unguided steps.

    Does nothing when ``interval`` covers every step, or when the scheduler has no discrete noise schedule.
    """
    counts = {"guided": 0, "unguided": 0}
    if covers_every_step(interval) or getattr(scheduler, "alphas_cumprod", None) is None:
        yield counts
        return
    low, high = interval
    own = unet.__dict__.get("forward")  # an instance-level forward set by someone else: restored after the call
    forward = unet.forward
    half_states: dict[int, CTSState | None] = {}

    def interval_forward(sample, timestep, encoder_hidden_states, *args, **kwargs):
        batch = sample.shape[0]
        sigma = timestep_sigma(scheduler, timestep)
        if low < sigma <= high or batch % 2 or encoder_hidden_states.shape[0] != batch:
            counts["guided"] += 1
            return forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        counts["unguided"] += 1
        saved = cts.state if cts is not None else None
        if cts is not None and saved is not None:
            key = id(saved)
            if key not in half_states:
                half_states.clear()
                half_states[key] = _conditional_state(saved)
            cts.state = half_states[key]
        try:
            output = forward(
                sample[batch // 2:], _half(timestep, batch), encoder_hidden_states[batch // 2:],
                *(_half(arg, batch) for arg in args), **{key: _half(value, batch) for key, value in kwargs.items()},
            )
        finally:
            if cts is not None:
                cts.state = saved
        if isinstance(output, tuple):
            return (torch.cat([output[0], output[0]]), *output[1:])
        output.sample = torch.cat([output.sample, output.sample])
        return output

    with forward_replaced(unet, interval_forward, own):
        yield counts
