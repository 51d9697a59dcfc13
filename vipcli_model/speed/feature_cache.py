"""DeepCache-style feature caching (Ma et al. 2024, "DeepCache: Accelerating Diffusion Models for Free").

Adjacent denoising steps produce very similar deep UNet features. With ``every=N``, one step in N runs the whole
UNet and keeps what its deep part produced; the N-1 steps after it run only the shallow ends (``conv_in``, the first
down block, the last up block, ``conv_out``) and take the deep features -- the input of the last up block -- from
that step (uniform caching, branch at the first level: the paper's setting for SD).

No UNet code is copied: for the cached steps, the deep blocks (down blocks after the first, the mid block, up
blocks before the last) answer with the outputs they gave at the last full step, through diffusers hooks held for
the call (so they compose with group offload and the model's other hooks); only the last up block's input matters,
the others are then not read. A step whose batch differs from the cached one (guidance interval: one conditional
pass) runs whole and refreshes the cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.hooks import ModelHook

from vipcli_model.cts.hooks import hooks_held

FEATURE_CACHE_HOOK = "vip_feature_cache"


def _deep_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    blocks = [*list(unet.down_blocks)[1:], *list(unet.up_blocks)[:-1]]
    if getattr(unet, "mid_block", None) is not None:
        blocks.append(unet.mid_block)
    return blocks


class _CacheState:
    """What the UNet's hook decides for one pass and the deep blocks' hooks read: run, or answer from the cache."""

    def __init__(self, every: int, blocks: int, counts: dict[str, int]) -> None:
        self.every = every
        self.blocks = blocks
        self.counts = counts
        self.calls = 0
        self.batch: int | None = None  # the batch size the cached outputs were made for
        self.outputs: dict[int, object] = {}
        self.cached = False  # the current pass takes the deep blocks' outputs from the cache


class CachingStepHook(ModelHook):
    """On the UNet: one pass in ``every`` (and any pass of a new batch size) runs whole; the others are cached."""

    def __init__(self, state: _CacheState) -> None:
        super().__init__()
        self.state = state

    # Not traced under ``compile``: the step's decision runs eagerly, the UNet pass it makes is compiled.
    @torch.compiler.disable(recursive=False)
    def new_forward(self, module: torch.nn.Module, sample, *args, **kwargs):
        state = self.state
        full = state.calls % state.every == 0 or state.batch != sample.shape[0] or len(state.outputs) < state.blocks
        state.calls += 1
        state.counts["full" if full else "cached"] += 1
        if full:
            state.batch = sample.shape[0]
        state.cached = not full
        try:
            return self.fn_ref.original_forward(sample, *args, **kwargs)
        finally:
            state.cached = False


class CachedBlockHook(ModelHook):
    """On a deep block: keeps its output at a full pass, gives it back without running at a cached one."""

    def __init__(self, state: _CacheState, index: int) -> None:
        super().__init__()
        self.state = state
        self.index = index

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        if self.state.cached:
            return self.state.outputs[self.index]
        output = self.fn_ref.original_forward(*args, **kwargs)
        self.state.outputs[self.index] = output
        return output


@contextmanager
def feature_cache(unet: torch.nn.Module, every: int) -> Iterator[dict[str, int]]:
    """For the ``with`` body, the deep UNet blocks run at one step in ``every``; yields counts of full and cached
    steps. ``every`` <= 1: nothing changes."""
    counts = {"full": 0, "cached": 0}
    if every <= 1 or not hasattr(unet, "down_blocks"):
        yield counts
        return
    blocks = _deep_blocks(unet)
    state = _CacheState(every, len(blocks), counts)
    hooks = [(block, CachedBlockHook(state, index)) for index, block in enumerate(blocks)]
    with hooks_held([*hooks, (unet, CachingStepHook(state))], FEATURE_CACHE_HOOK):
        yield counts
