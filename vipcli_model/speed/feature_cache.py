"""DeepCache-style feature caching (Ma et al. 2024, "DeepCache: Accelerating Diffusion Models for Free").

Adjacent denoising steps produce very similar deep UNet features. With ``every=N``, one step in N runs the whole
UNet and keeps what its deep part produced; the N-1 steps after it run only the shallow ends (``conv_in``, the first
down block, the last up block, ``conv_out``) and take the deep features -- the input of the last up block -- from
that step (uniform caching, branch at the first level: the paper's setting for SD).

No UNet code is copied: for the cached steps, the deep blocks (down blocks after the first, the mid block, up
blocks before the last) answer with the outputs they gave at the last full step, through instance-level
``forward`` stand-ins; only the last up block's input matters, the others are then not read. A step whose batch
differs from the cached one (guidance interval: one conditional pass) runs whole and refreshes the cache.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from vipcli_model.speed.guidance_interval import forward_replaced


def _deep_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    blocks = [*list(unet.down_blocks)[1:], *list(unet.up_blocks)[:-1]]
    if getattr(unet, "mid_block", None) is not None:
        blocks.append(unet.mid_block)
    return blocks


@contextmanager
def feature_cache(unet: torch.nn.Module, every: int) -> Iterator[dict[str, int]]:
    """For the ``with`` body, the deep UNet blocks run at one step in ``every``; yields counts of full and cached
    steps. ``every`` <= 1: nothing changes."""
    counts = {"full": 0, "cached": 0}
    if every <= 1 or not hasattr(unet, "down_blocks"):
        yield counts
        return
    blocks = _deep_blocks(unet)
    outputs: dict[int, object] = {}
    cached_batch: list[int | None] = [None]
    hooks = [
        block.register_forward_hook(lambda module, args, output, key=index: outputs.__setitem__(key, output))
        for index, block in enumerate(blocks)
    ]
    own = unet.__dict__.get("forward")
    forward = unet.forward
    calls = [0]

    def caching_forward(sample, *args, **kwargs):
        full = calls[0] % every == 0 or cached_batch[0] != sample.shape[0] or len(outputs) < len(blocks)
        calls[0] += 1
        if full:
            counts["full"] += 1
            cached_batch[0] = sample.shape[0]
            return forward(sample, *args, **kwargs)
        counts["cached"] += 1
        for index, block in enumerate(blocks):
            block.forward = lambda *a, _key=index, **k: outputs[_key]
        try:
            return forward(sample, *args, **kwargs)
        finally:
            for block in blocks:
                del block.forward

    try:
        with forward_replaced(unet, caching_forward, own):
            yield counts
    finally:
        for hook in hooks:
            hook.remove()
