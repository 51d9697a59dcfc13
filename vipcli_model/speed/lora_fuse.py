"""Fusing a LoRA into the weights it adapts, cheaply on a CPU.

diffusers' ``fuse_lora`` (PEFT's merge) computes each LoRA product into new tensors, scales it into another and
adds it into its weight; a convolution's product goes through a convolution of the weights. On a CPU vip merges the
plain layers itself: one matrix product per layer into a reused buffer, then the add
(``benchmarks/bench_lora_fuse.py``). Where the weights were converted at load (the default preset's fp16 files
run in fp32: ordinary memory) the add is in place: x0.50-x0.87 of diffusers' fuse time (benchmarks/RESULTS.md).
Where they lie in a safetensors file that diffusers memory-mapped (fp32 files loaded as fp32 on a Linux CPU),
adding in place would copy the file's pages one 4 KB fault at a time: the sums go into new memory and the old
pages go back to the file cache (24.7 s through diffusers, 8.8 s so). On a GPU it is diffusers' own fuse.

Two ways in: :func:`fuse_lora_state_dict` takes the LoRA as ``pipe.lora_state_dict`` reads it (diffusers' own
reading and key conversion) and adds it into the UNet's weights with no LoRA layer made at all, where every layer
is the plain case (what a few-step LoRA such as LCM-LoRA is); :func:`fuse_lora` merges a LoRA already loaded
through ``pipe.load_lora_weights`` (PEFT's layers), for everything else. Both give diffusers' fused weights to the
bit (tested); the first skips making and removing 278 PEFT layers for LCM-LoRA-SD1.5 (~0.5 s of a 4-step run here).

May import cts and the shared modules.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import torch


class FusedLayers(NamedTuple):
    """What vip merged itself (``fuse_lora_weights``, ``fuse_lora_state_dict``): ``merged`` layers, of which
    ``out_of_place`` into new memory."""

    merged: int
    out_of_place: int


def fuse_lora(pipe, adapter: str) -> FusedLayers:
    """Fuse ``adapter`` into ``pipe``'s weights: vip's merge where its plain layers lie on a CPU (where it pays:
    see the module's notes), else ``pipe.fuse_lora``. The weights are the same to the bit either way (tested);
    the LoRA layers stay until ``pipe.unload_lora_weights()``."""
    plain = [layer for layer in _lora_layers(pipe, adapter) if _plain_lora_layer(layer, adapter)]
    if any(layer.get_base_layer().weight.device.type == "cpu" for layer in plain):
        return fuse_lora_weights(pipe, adapter)
    pipe.fuse_lora(adapter_names=[adapter], lora_scale=1.0)
    return FusedLayers(merged=0, out_of_place=0)


def _lora_layers(pipe, adapter: str) -> list:
    """The LoRA layers of ``pipe`` that hold ``adapter`` unmerged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [
        module
        for part in pipe.components.values()
        if isinstance(part, torch.nn.Module)
        for module in part.modules()
        if isinstance(module, BaseTunerLayer)
        and adapter in getattr(module, "lora_A", {})
        and adapter not in module.merged_adapters
    ]


def fuse_lora_weights(pipe, adapter: str) -> FusedLayers:
    """Merge ``adapter`` into the base weights of every LoRA layer of ``pipe``: what ``pipe.fuse_lora()`` does,
    to the same bits (tested), at a fraction of its cost on CPU.

    PEFT's merge computes ``B @ A`` into a new tensor, multiplies it by the scaling into another, then adds it
    into the weight; convolutions with a kernel (LCM-LoRA's ResNet and resampler 3x3 convolutions) go through a
    convolution of the weights. Here every plain layer takes one matrix product (over the flattened kernel for
    convolutions) into a reused buffer, the scaling in place (skipped at 1: a product by 1 is exact), and the
    same add. Where that add lands depends on where the weight lives:

    - in a memory-mapped weights file (fp32 safetensors loaded as fp32 on a CPU), adding in place makes the kernel copy
      each 4 KB page on its first write. The sums go instead into one new buffer advised for 2 MB pages, and the
      pages of the replaced weights are handed back to the file cache, so the process ends with the same memory
      as after an in-place add. LCM-LoRA-SD1.5's shape on 2 CPU cores (benchmarks/bench_lora_fuse.py): 17.8 s in
      place, 8.8 s so, 24.7 s through diffusers; most of the 8.8 s is the first touch of 3.4 GB of new memory;
    - anywhere else (ordinary memory, a GPU): in place.

    Layers outside the plain case (LoRA variants such as DoRA, a LoRA bias, fan-in-fan-out, grouped
    convolutions, half precision) merge through PEFT itself.
    """
    plain = []
    for layer in _lora_layers(pipe, adapter):
        if _plain_lora_layer(layer, adapter):
            plain.append(layer)
        else:
            layer.merge(adapter_names=[adapter])
    fused = _merge(
        [
            (
                layer.get_base_layer().weight,
                layer.lora_A[adapter].weight,
                layer.lora_B[adapter].weight,
                layer.scaling[adapter],
            )
            for layer in plain
        ]
    )
    for layer in plain:
        layer.merged_adapters.append(adapter)
    return fused


def read_lora(pipe, folder: str, weight_name: str) -> tuple[dict, dict | None, dict | None]:
    """A LoRA file as ``pipe.load_lora_weights`` reads it (diffusers' ``lora_state_dict``, its key conversions):
    the state dict, the network alphas and the file's adapter metadata."""
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    read = {"unet_config": pipe.unet.config} if isinstance(pipe, StableDiffusionXLLoraLoaderMixin) else {}  # as SDXL's
    return pipe.lora_state_dict(folder, weight_name=weight_name, return_lora_metadata=True, **read)


def fuse_lora_state_dict(pipe, state_dict: dict, network_alphas: dict | None, metadata: dict | None = None):
    """Add a LoRA, as ``pipe.lora_state_dict(..., return_lora_metadata=True)`` reads it, straight into the
    weights of ``pipe.unet``: the weights ``pipe.load_lora_weights`` then ``pipe.fuse_lora()`` give, to the bit
    (tested), with no LoRA layer made. A :class:`FusedLayers`, or None with nothing changed where the LoRA or the
    UNet is not the plain case; the caller then loads it through diffusers (``load_lora_weights`` and
    :func:`fuse_lora`).

    The plain case: UNet layers only (no text encoder), each with its two factors and nothing else (no DoRA, no LoRA
    bias, no adapter config in the file's metadata), one rank and at most one alpha for all layers (then each
    layer's scaling is diffusers' and PEFT's ``alpha / rank``, 1 without alphas), and every layer a plain one (see
    ``fuse_lora_weights``) in fp32 on the CPU.
    """
    factors = _plain_unet_factors(pipe.unet, state_dict, network_alphas, metadata)
    return None if factors is None else _merge(factors)


def _plain_unet_factors(unet, state_dict: dict, network_alphas: dict | None, metadata: dict | None):
    """(weight, A, B, scaling) for each layer of a plain-case LoRA on ``unet`` (see ``fuse_lora_state_dict``),
    the factors in the weights' dtype; None otherwise."""
    if metadata or not state_dict or any(not key.startswith("unet.") for key in state_dict):
        return None
    layers = {key.removeprefix("unet."): value for key, value in state_dict.items()}
    if "lora_A" not in next(iter(layers)):  # diffusers' own step before making the layers
        from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

        layers = convert_unet_state_dict_to_peft(layers)
    names = {key.split(".lora_")[0] for key in layers}
    if set(layers) != {f"{name}.lora_{factor}.weight" for name in names for factor in "AB"}:
        return None
    ranks = {layers[f"{name}.lora_B.weight"].shape[1] for name in names if layers[f"{name}.lora_B.weight"].ndim > 1}
    alphas = {value for key, value in (network_alphas or {}).items() if key.startswith("unet.")}
    if len(ranks) != 1 or len(alphas) > 1:
        return None
    rank = ranks.pop()
    scaling = (alphas.pop() if alphas else rank) / rank
    factors = []
    for name in sorted(names):
        try:
            base = unet.get_submodule(name)
        except AttributeError:
            return None
        weight_a, weight_b = layers[f"{name}.lora_A.weight"], layers[f"{name}.lora_B.weight"]
        weight = getattr(base, "weight", None)
        if not (
            isinstance(weight, torch.Tensor)
            and weight.dtype == torch.float32
            and weight.device.type == "cpu"
            and _plain_shapes(base, weight_a, weight_b, rank)
        ):
            return None
        factors.append((weight, weight_a.to(torch.float32), weight_b.to(torch.float32), scaling))
    return factors


def _plain_shapes(base, weight_a: torch.Tensor, weight_b: torch.Tensor, rank: int) -> bool:
    """Are A and B the factors PEFT makes for ``base`` at ``rank`` (a plain linear or convolution)?"""
    if type(base) is torch.nn.Linear:
        return weight_a.shape == (rank, base.in_features) and weight_b.shape == (base.out_features, rank)
    if type(base) is torch.nn.Conv2d and base.groups == 1:
        # any kernel: A has the base's kernel, B is 1x1, so delta[o, i, y, x] = sum_r B[o, r] A[r, i, y, x]
        kernel = (rank, base.in_channels, *base.kernel_size)
        return weight_a.shape == kernel and weight_b.shape == (base.out_channels, rank, 1, 1)
    return False


def _merge(factors: list[tuple]) -> FusedLayers:
    """``weight += scaling * B @ A`` for each (weight, A, B, scaling): in place, or into new memory for weights
    mapped from a file (see ``fuse_lora_weights``)."""
    weights = [weight for weight, _, _, _ in factors]
    mapped = _file_mapped(weights)
    fresh = _huge_page_buffer(sum(weight.numel() for weight, out in zip(weights, mapped) if out))
    scratch, used = torch.empty(0), 0
    with torch.no_grad():
        for (weight, weight_a, weight_b, scaling), out_of_place in zip(factors, mapped):
            if scratch.numel() < weight.numel() or scratch.device != weight.device:
                scratch = torch.empty(weight.numel(), device=weight.device)
            product = scratch[: weight.numel()].view(weight_b.shape[0], -1)  # (out, in * kernel)
            torch.matmul(weight_b.flatten(1), weight_a.flatten(1), out=product)
            if scaling != 1:
                product.mul_(scaling)
            if out_of_place:
                old = weight.data
                new = fresh[used : used + weight.numel()].view(weight.shape)
                used += weight.numel()
                torch.add(old, product.view(weight.shape), out=new)
                weight.data = new
                _release_pages(old)
            else:
                weight.data += product.view(weight.shape)
    return FusedLayers(merged=len(factors), out_of_place=sum(mapped))


def _plain_lora_layer(layer, adapter: str) -> bool:
    """A LoRA layer whose merge is ``weight + scaling * B @ A`` in fp32 on one device (what vip merges itself)."""
    base = layer.get_base_layer()
    weight_a, weight_b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    return (
        adapter not in getattr(layer, "lora_variant", {})
        and not getattr(layer, "lora_bias", {}).get(adapter)
        and weight_a.dtype == weight_b.dtype == base.weight.dtype == torch.float32
        and weight_a.device == base.weight.device
        and not getattr(layer, "fan_in_fan_out", False)
        and _plain_shapes(base, weight_a, weight_b, weight_a.shape[0])
    )


# Linux memory advice (<sys/mman.h>); elsewhere the fuse adds in place.
_MADV_DONTNEED, _MADV_HUGEPAGE = 4, 14
_HUGE_PAGE = 2 << 20


@functools.lru_cache(maxsize=1)
def _madvise():
    """libc's ``madvise`` on Linux, else None."""
    import sys

    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def _file_mapped(tensors: list[torch.Tensor]) -> list[bool]:
    """For each tensor: does its memory lie wholly in a file-backed mapping of this process (Linux's
    /proc/self/maps; a safetensors file opened by diffusers on CPU)? False wherever that cannot be told."""
    import bisect

    if not tensors or _madvise() is None:
        return [False] * len(tensors)
    try:
        text = Path("/proc/self/maps").read_text()
    except OSError:
        return [False] * len(tensors)
    spans = []  # (start, end) of mappings of a regular file: an inode and a path, not a device or shared memory
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if (
            len(fields) == 6
            and fields[4] != "0"
            and fields[5].startswith("/")
            and not fields[5].startswith(("/dev/", "/memfd:", "/SYSV"))
        ):
            start, end = (int(value, 16) for value in fields[0].split("-"))
            spans.append((start, end))
    spans.sort()
    starts = [start for start, _ in spans]

    def inside(tensor: torch.Tensor) -> bool:
        if tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.numel() == 0:
            return False
        first = tensor.data_ptr()
        last = first + tensor.numel() * tensor.element_size()
        index = bisect.bisect_right(starts, first) - 1
        # a tensor spans one mapping (one file, mapped whole); adjacent mappings of the same file are not merged
        return index >= 0 and spans[index][0] <= first and last <= spans[index][1]

    return [inside(tensor) for tensor in tensors]


def _huge_page_buffer(numel: int) -> torch.Tensor:
    """A new fp32 CPU buffer of ``numel`` values whose pages the kernel may back with 2 MB pages (one page fault
    per 2 MB instead of per 4 KB; Linux transparent huge pages, where enabled)."""
    if numel == 0:
        return torch.empty(0)
    raw = torch.empty(numel + _HUGE_PAGE // 4)
    start = -raw.data_ptr() % _HUGE_PAGE // 4  # values to skip to a 2 MB boundary
    buffer = raw[start : start + numel]
    madvise = _madvise()
    if madvise is not None:
        madvise(buffer.data_ptr(), numel * 4 // _HUGE_PAGE * _HUGE_PAGE, _MADV_HUGEPAGE)  # advice: failure is harmless
    return buffer


def _release_pages(tensor: torch.Tensor) -> None:
    """Unmap the whole pages of a replaced weight that lies in a file-backed mapping (see ``_file_mapped``).

    The pages go back to the file cache (the next run finds them there); the process's memory no longer counts
    them, and a later read of these addresses sees the file's bytes again. Only for a tensor ``_file_mapped``
    said True for (on ordinary memory this would zero the pages), whose pages nothing wrote since the file was
    mapped (the fuse never writes them).
    """
    import os

    madvise = _madvise()
    if madvise is None:
        return
    page = os.sysconf("SC_PAGE_SIZE")
    first = tensor.data_ptr()
    last = first + tensor.numel() * tensor.element_size()
    first = -(-first // page) * page  # whole pages only: a neighbour's bytes may share the edge pages
    last = last // page * page
    if last > first:
        madvise(first, last - first, _MADV_DONTNEED)
