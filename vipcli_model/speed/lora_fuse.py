"""Fusing a LoRA into the weights it adapts, cheaply on a CPU.

diffusers' ``fuse_lora`` (PEFT's merge) computes each LoRA product into new tensors, scales it into another and
adds it into its weight; a convolution's product goes through a convolution of the weights. On a CPU
:func:`fuse_lora` merges the plain layers itself: one matrix product per layer into a reused buffer, then the add
(``benchmarks/bench_lora_fuse.py``). Where the weights were converted at load (the default preset's fp16 files
run in fp32: ordinary memory) the add is in place: x0.50-x0.87 of diffusers' fuse time (benchmarks/RESULTS.md).
Where they lie in a safetensors file that diffusers memory-mapped (fp32 files loaded as fp32 on a Linux CPU),
adding in place would copy the file's pages one 4 KB fault at a time: the sums go into new memory and the old
pages go back to the file cache (24.7 s through diffusers, 8.8 s so). On a GPU it is diffusers' own fuse.

May import cts and the shared modules.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import torch


class FusedLayers(NamedTuple):
    """What ``fuse_lora_weights`` merged itself: ``merged`` layers, of which ``out_of_place`` into new memory."""

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
    mapped = _file_mapped([layer.get_base_layer().weight for layer in plain])
    fresh = _huge_page_buffer(sum(layer.get_base_layer().weight.numel() for layer, out in zip(plain, mapped) if out))
    scratch, used = torch.empty(0), 0
    with torch.no_grad():
        for layer, out_of_place in zip(plain, mapped):
            base = layer.get_base_layer()
            weight, weight_a, weight_b = base.weight, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
            if scratch.numel() < weight.numel() or scratch.device != weight.device:
                scratch = torch.empty(weight.numel(), device=weight.device)
            product = scratch[: weight.numel()].view(weight_b.shape[0], -1)  # (out, in * kernel)
            torch.matmul(weight_b.flatten(1), weight_a.flatten(1), out=product)
            scaling = layer.scaling[adapter]
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
            layer.merged_adapters.append(adapter)
    return FusedLayers(merged=len(plain), out_of_place=sum(mapped))


def _plain_lora_layer(layer, adapter: str) -> bool:
    """A LoRA layer whose merge is ``weight + scaling * B @ A`` in fp32 on one device (what vip merges itself)."""
    base = layer.get_base_layer()
    weight_a, weight_b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    return (
        adapter not in getattr(layer, "lora_variant", {})
        and not getattr(layer, "lora_bias", {}).get(adapter)
        and weight_a.dtype == weight_b.dtype == base.weight.dtype == torch.float32
        and weight_a.device == base.weight.device
        and (
            (type(base) is torch.nn.Linear and not getattr(layer, "fan_in_fan_out", False))
            # any kernel: A has the base's kernel, B is 1x1, so delta[o, i, y, x] = sum_r B[o, r] A[r, i, y, x]
            or (
                type(base) is torch.nn.Conv2d
                and base.groups == 1
                and weight_b.shape[2:] == (1, 1)
                and weight_a.shape[2:] == base.weight.shape[2:]
            )
        )
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
