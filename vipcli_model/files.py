"""Files: atomic writes, image discovery, image keys and JSON Lines reading, shared by every stage.

* ``atomic_write`` / ``atomic_write_bytes`` / ``atomic_write_text``: write to ``.<name>.<random>.tmp``
  beside the target, then rename over it, so a reader (or a killed run) never sees half a file.
  ``durable=True`` also fsyncs the file and its folder (outputs, checkpoints); caches skip that.
* ``find_images``: image files under a folder, recursive, hidden entries skipped, sorted.
* ``image_key``: an image's name relative to its data folder, the key of captions, prompts and outputs;
  ``unique_image_keys``: keys without suffix that stay distinct (``x.png`` and ``x.jpg``: ``x_png``, ``x_jpg``).
* ``read_jsonl``: the records of a JSON Lines file, where a torn last line (a run killed mid-write)
  is skipped with a warning and a bad line elsewhere is an error naming it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from vipcli_model.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


# ---------------------------------------------------------------- atomic writes


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], *, durable: bool = True) -> None:
    """Call ``write(stream)`` on a temp file beside ``path``, then rename it over ``path``.

    The temp file is removed on any error (``OSError`` propagates for the caller to report).
    The file gets the usual umask permissions (``os.open``, not ``mkstemp``, which gives 0600).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        with os.fdopen(os.open(temporary, flags, 0o666), "wb") as stream:
            write(stream)
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    if durable:
        fsync_folder(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    atomic_write(path, lambda stream: stream.write(data), durable=durable)


def atomic_write_text(path: str | Path, text: str, *, durable: bool = True) -> None:
    """``text`` as UTF-8, atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def fsync_folder(folder: Path) -> None:
    """Persist a rename itself (POSIX); harmless to skip where folders cannot be opened."""
    with contextlib.suppress(OSError, AttributeError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


# ---------------------------------------------------------------- images in folders


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def find_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (``IMAGE_SUFFIXES`` in any case), recursive, hidden entries
    (names starting with ".") skipped, sorted."""
    found: list[Path] = []
    for root, dirnames, filenames in os.walk(folder):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        found.extend(Path(root) / name for name in filenames if not name.startswith(".") and is_image_name(name))
    return sorted(found)


def image_key(path: str | Path, root: str | Path | None = None, *, suffix: bool = True) -> str:
    """An image's name: its path relative to ``root``, with '/' separators and no leading "./".

    With ``root``, ``path`` is a file path (absolute, or relative to the working directory) and
    both are resolved first. Without it, ``path`` is taken as already relative. ``suffix=False``
    drops the file suffix, so that ``a/b.png`` and ``a/b.jpg`` share the key ``a/b`` (``vip eval``
    pairs outputs with ground truth that way).
    """
    path = Path(path)
    if root is not None:
        path = Path(os.path.relpath(path.resolve(), Path(root).resolve()))
    if not suffix:
        path = path.with_suffix("")
    return path.as_posix().removeprefix("./")


def unique_image_keys(paths: Sequence[str | Path]) -> list[str]:
    """Keys without suffix for relative image paths, one distinct key each (``vip eval``'s output names).

    ``a/b.png`` is ``a/b``; images that would share a key (``x.png`` and ``x.jpg``) each carry their
    suffix: ``x_png``, ``x_jpg`` (the naming ``vip outpaint`` uses); a key still taken after that
    gets ``_2``, ``_3``... in input order. Keys are compared ignoring case, as file names are on
    macOS and Windows.
    """
    plain = [image_key(path, suffix=False) for path in paths]
    shared = Counter(key.casefold() for key in plain)
    taken: set[str] = set()
    keys: list[str] = []
    for path, key in zip(paths, plain):
        if shared[key.casefold()] > 1:
            key = f"{key}_{Path(path).suffix.lstrip('.').lower()}"
        candidate, number = key, 1
        while candidate.casefold() in taken:
            number += 1
            candidate = f"{key}_{number}"
        taken.add(candidate.casefold())
        keys.append(candidate)
    return keys


# ---------------------------------------------------------------- JSON Lines


def read_jsonl(
    path: str | Path, check: Callable[[Any], None] | None = None, *, what: str = "a JSON record"
) -> list[tuple[int, Any]]:
    """(line number, record) for each non-blank line of a JSON Lines file.

    ``check(record)`` raises ``ValueError`` for a record of the wrong shape. A last line that does
    not parse or check and has no final newline is torn (a run killed mid-write): it is skipped
    with a logged warning. A bad line anywhere else is an ``InputError`` naming the line and
    ``what`` it should be. Reading errors (``OSError``, a missing file) are the caller's to report.
    """
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    records: list[tuple[int, Any]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
            if check is not None:
                check(record)
        except (UnicodeDecodeError, ValueError) as exc:
            if number == len(lines) and not data.endswith(b"\n"):
                logger.warning("%s: ignoring an incomplete last line (an interrupted run?)", path)
                continue
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"{path}, line {number}: not {what} ({reason}); fix or delete that line") from exc
        records.append((number, record))
    return records
