"""Errors raised by the vip library.

Every error a user can cause (bad input, missing model, bad option value) is a ``VipError``
subclass whose message is one line that names the culprit and the fix. The CLI maps these
types to exit codes in one place (``vipcli.main``); anything else is a bug and gets a traceback
only with ``VIP_DEBUG=1``.
"""

from __future__ import annotations

from typing import Iterable


class VipError(Exception):
    """Base class for every error vip reports to a user."""

    exit_code: int = 1


class InputError(VipError):
    """An input file is missing, unreadable, corrupt, or of an unsupported kind."""

    exit_code = 3


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
    """An output cannot be written (exists without --overwrite, unwritable folder...)."""

    exit_code = 5


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
