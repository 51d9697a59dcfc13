"""Classifier-free guidance in a limited interval of noise levels (Kynkaanniemi et al. 2024).

"Applying guidance in a limited interval improves sample and distribution quality in diffusion models"
(arXiv 2404.07724) guides only the steps whose noise level sigma lies in an interval ``(low, high]``; outside it the
model runs once, on the conditional branch alone, and that prediction is used as it is. Each unguided step saves one
of the two UNet passes guidance costs.

diffusers' denoising loop stays as it is: it still batches ``[unconditional; conditional]``. For the duration of
one call, :func:`limited_guidance` holds a diffusers hook on the UNet so that, at a step outside the interval, the
UNet runs on the conditional half only and returns that prediction for both halves; guidance then gives
``uncond + g * (cond - uncond) = cond`` exactly. The C-T-S state in ``cross_attention_kwargs`` is cut to the same
half.

The noise level of a timestep ``t`` is ``sigma = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` from the scheduler's
training schedule (the EDM convention the paper uses; SD-1.5's schedule spans sigma 0.03 to 14.6).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.hooks import ModelHook

from vipcli_model.cts.attention import CTSCall, CTSState
from vipcli_model.cts.hooks import hooks_held

EVERY_STEP = (0.0, math.inf)  # guidance at every step: diffusers' own behaviour
GUIDANCE_HOOK = "vip_guidance_interval"


def covers_every_step(interval: tuple[float, float] | None) -> bool:
    return interval is None or (interval[0] <= 0.0 and math.isinf(interval[1]))


# The hook's bookkeeping runs eagerly under ``compile`` (not traced into graphs of its own): only the UNet is compiled.
@torch.compiler.disable
def timestep_sigma(scheduler, timestep: torch.Tensor | float) -> float:
    """The noise level sigma of a (discrete) training timestep, from the scheduler's ``alphas_cumprod``."""
    alphas = scheduler.alphas_cumprod
    index = int(round(float(timestep.flatten()[0] if torch.is_tensor(timestep) else timestep)))
    index = min(max(index, 0), len(alphas) - 1)
    alpha = float(alphas[index])
    return math.sqrt((1.0 - alpha) / alpha)


@torch.compiler.disable
def _half(value, batch: int):
    """The conditional (second) half of a tensor batched ``[unconditional; conditional]``; anything else as is."""
    if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == batch:
        return value[batch // 2 :]
    if isinstance(value, dict):
        return {key: _half(item, batch) for key, item in value.items()}
    return value


@torch.compiler.disable
def _conditional_call(call: CTSCall, halves: dict[int, CTSCall]) -> CTSCall:
    """The C-T-S call cut to the conditional half of its batch, made once per state (the token routing it caches
    is then computed once per call, not per step)."""
    key = id(call.state)
    if key not in halves:
        state = call.state
        half = state.center.shape[0] // 2
        mask = state.mask[half:] if state.mask.shape[0] == state.center.shape[0] else state.mask
        halves.clear()
        conditional = CTSState(center=state.center[half:], surrounding=state.surrounding[half:], mask=mask)
        halves[key] = CTSCall(call.controller, conditional)
    return halves[key]


class LimitedGuidanceHook(ModelHook):
    """On the UNet: at a step outside ``(low, high]``, one pass on the conditional half, returned for both halves."""

    def __init__(self, scheduler, low: float, high: float, counts: dict[str, int]) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.low, self.high = low, high
        self.counts = counts
        self.halves: dict[int, CTSCall] = {}  # the conditional half of this call's C-T-S state

    # Not traced under ``compile``: the step's decision runs eagerly, the UNet pass it makes is compiled.
    @torch.compiler.disable(recursive=False)
    def new_forward(self, module: torch.nn.Module, sample, timestep, encoder_hidden_states, *args, **kwargs):
        forward = self.fn_ref.original_forward
        batch = sample.shape[0]
        sigma = timestep_sigma(self.scheduler, timestep)
        if self.low < sigma <= self.high or batch % 2 or encoder_hidden_states.shape[0] != batch:
            self.counts["guided"] += 1
            return forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        self.counts["unguided"] += 1
        attention_kwargs = kwargs.pop("cross_attention_kwargs", None)
        kwargs = {key: _half(value, batch) for key, value in kwargs.items()}
        if attention_kwargs is not None:
            attention_kwargs = _half(attention_kwargs, batch)
            if isinstance(attention_kwargs.get("cts"), CTSCall):
                attention_kwargs["cts"] = _conditional_call(attention_kwargs["cts"], self.halves)
            kwargs["cross_attention_kwargs"] = attention_kwargs
        output = forward(
            sample[batch // 2 :],
            _half(timestep, batch),
            encoder_hidden_states[batch // 2 :],
            *(_half(arg, batch) for arg in args),
            **kwargs,
        )
        if isinstance(output, tuple):
            return (torch.cat([output[0], output[0]]), *output[1:])
        output.sample = torch.cat([output.sample, output.sample])
        return output


@contextmanager
def limited_guidance(
    unet: torch.nn.Module, scheduler, interval: tuple[float, float] | None
) -> Iterator[dict[str, int]]:
    """Guidance only where ``low < sigma <= high`` for the ``with`` body; yields counts of guided and unguided steps.

    A diffusers hook on the UNet for the ``with`` body, so it composes with the model's other hooks (offloading).
    Does nothing when ``interval`` covers every step, or when the scheduler has no discrete noise schedule.
    """
    counts = {"guided": 0, "unguided": 0}
    if covers_every_step(interval) or getattr(scheduler, "alphas_cumprod", None) is None:
        yield counts
        return
    low, high = interval
    with hooks_held([(unet, LimitedGuidanceHook(scheduler, low, high, counts))], GUIDANCE_HOOK):
        yield counts
