"""Errors raised by the vip library.

Every error a user can cause (bad input, missing model, bad option value) is a ``VipError``
subclass whose message is one line that names the culprit and the fix. The CLI maps these
types to exit codes in one place (``vipcli.main``); anything else is a bug and gets a traceback
only with ``VIP_DEBUG=1``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable


class VipError(Exception):
    """Base class for every error vip reports to a user."""

    exit_code: int = 1


class InputError(VipError):
    """An input file is missing, unreadable, corrupt, or of an unsupported kind."""

    exit_code = 3


class OutOfMemory(InputError):
    """One input's work ran out of memory (GPU or system): the message says which and what to try."""


class OptionError(VipError, ValueError):
    """An option value, or a combination of options, makes no sense."""

    exit_code = 2


class ModelNotFoundError(VipError):
    """A model (or adapter) is neither local nor cached, and cannot be downloaded."""

    exit_code = 4


class ModelLoadError(VipError):
    """A model was found but could not be loaded (wrong format, incompatible adapter...)."""

    exit_code = 4


class OutputError(VipError):
    """An output cannot be written (exists without `overwrite`, unwritable folder...)."""

    exit_code = 5


class Cancelled(VipError):
    """The caller asked a run to stop (``cancel`` set): it stopped at the next denoising step."""

    exit_code = 130


class CaptionerError(VipError):
    """The captioner (local VLM or HTTP server) failed or answered something unusable."""

    exit_code = 6


MIXED_FAILURES_EXIT_CODE = 1  # a batch whose failures are of different kinds


def batch_exit_code(codes: Iterable[int]) -> int:
    """The exit code of a run whose failed inputs have these ``exit_code``s (one per failure).

    0 when none; the code they all share (3 when every failure is an unreadable input, 5 when
    every one is an output problem...), whether or not other inputs succeeded; 1 when they differ.
    """
    codes = set(codes)
    if not codes:
        return 0
    return codes.pop() if len(codes) == 1 else MIXED_FAILURES_EXIT_CODE


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the machine ran out of memory: ``MemoryError``, or torch's out-of-memory errors.

    torch is looked up only when already imported (a preview imports none); MPS and older CUDA builds raise a
    plain ``RuntimeError`` that says "out of memory".
    """
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    kinds = tuple(
        kind
        for kind in (
            getattr(torch, "OutOfMemoryError", None),
            getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None),
        )
        if isinstance(kind, type)
    )
    if kinds and isinstance(exc, kinds):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def on_gpu(exc: BaseException) -> bool:
    """Whether an out-of-memory error ``exc`` is about GPU memory (else the system's)."""
    return not isinstance(exc, MemoryError) and "CPUAllocator" not in str(exc)


def what_ran_out(exc: BaseException, device: str | None = None) -> str:
    """What an out-of-memory error ``exc`` ran out of, in a few words: "GPU memory on cuda:0 (it tried to allocate
    2.00 GiB)" or "system memory". ``device``: where the work ran, when the error does not say."""
    if not on_gpu(exc):
        return "system memory"
    text = str(exc)
    if "MPS" in text:
        where = "mps"
    elif (gpu := re.search(r"GPU (\d+)", text)) is not None:
        where = f"cuda:{gpu.group(1)}"
    else:
        where = device if device and device not in ("auto", "cpu") else None
    tried = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]?i?B)", text)
    return (
        "GPU memory"
        + (f" on {where}" if where else "")
        + (f" (it tried to allocate {tried.group(1)})" if tried else "")
    )


def release_cached_memory() -> None:
    """Give memory a failed input held back to the system and the GPU, so the next input starts with all of it."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
