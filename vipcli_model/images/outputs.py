"""Inputs and output names of a run: which images, and one distinct file per result.

Inputs are files, folders (searched recursively) and glob patterns. Each input keeps the path it
has below the folder or pattern it was found under, so ``-o DIR`` can mirror the folder structure.

Output names (the README's "Output names" and ``man vip-outpaint`` say the same):

- beside each input, or under ``-o DIR`` at the input's relative path: ``<stem>_<kind>.png``, where
  ``kind`` is ``outpaint`` (``outpaint_1``, ``outpaint_2``... with several results per input), or
  ``canvas`` and ``mask`` for a preview;
- inputs that would share a name (``x.png`` and ``x.jpg`` in one folder) each carry their own
  suffix: ``x_png_outpaint.png``, ``x_jpg_outpaint.png``;
- a name still taken after that (an input named ``x_png.png`` beside those) gets ``_2``, ``_3``...
  after the stem, in input order.

Names are compared ignoring case (as macOS and Windows file systems do), so a run never writes
two results to one file.

``check_destination`` finds what would stop a file or folder from being written (an existing file
without ``overwrite``, a folder that cannot be written, a "folder" that is a file) before any
model loads, so a run does not spend minutes generating what it cannot save. It is the one check
of every command that writes: outpaint and edit (``check_destinations``, per input), captioning's
JSON Lines file, training's run folder and the evaluation's ``out_dir``.

``outputs_finished`` is what a resumed run (``skip_existing``) asks of one input's files: are they all there, each
a whole image whose metadata records the same job ("job": the settings as the user gave them)?
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vipcli_model.errors import InputError, OptionError, OutputError
from vipcli_model.images.io import SAVE_FORMATS, expand_inputs

_GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class InputImage:
    """One image of a run."""

    path: Path  # as found (relative to the working folder when the spec was)
    relative: Path  # below the folder or pattern it was found under; a file given by name: its name


def find_inputs(specs: Sequence[str | Path]) -> tuple[list[InputImage], list[tuple[str, str]]]:
    """Images named by ``specs`` in order, without duplicates, and the specs that gave none (with why).

    Searching is ``image_io.expand_inputs``'s (recursive, sorted, hidden entries skipped).
    """
    found: list[InputImage] = []
    seen: set[Path] = set()
    missing: list[tuple[str, str]] = []
    for spec in map(str, specs):
        paths, problems = expand_inputs([spec])
        missing.extend(problems)
        base = _base_folder(spec)
        for path in paths:
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                relative = path.relative_to(base) if base is not None else Path(path.name)
            except ValueError:
                relative = Path(path.name)
            found.append(InputImage(path=path, relative=relative))
    return found, missing


def _base_folder(spec: str) -> Path | None:
    """The folder a spec's images are relative to: the folder itself, a pattern's fixed leading
    folders; ``None`` for a file."""
    literal = Path(os.path.expanduser(spec))
    if literal.is_dir():
        return literal
    if literal.is_file() or not glob.has_magic(spec):
        return None
    fixed = []
    for part in literal.parts:
        if any(char in part for char in _GLOB_CHARACTERS):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def output_kinds(*, preview: bool, num_images: int) -> list[str]:
    """The name endings of one input's results."""
    if preview:
        return ["canvas", "mask"]
    if num_images == 1:
        return ["outpaint"]
    return [f"outpaint_{index + 1}" for index in range(num_images)]


def plan_outputs(inputs: Sequence[InputImage], output: str | Path | None, kinds: Sequence[str]) -> list[list[Path]]:
    """The files each input's results go to (one list per input, one path per kind), all distinct.

    ``output``: ``None`` (beside each input), a folder, or one file name (.png/.jpg/.jpeg/.webp)
    when the run writes exactly one file.
    """
    if output is not None:
        target = Path(output)
        is_file_name = target.suffix != "" and not target.is_dir()
        if is_file_name and target.suffix.lower() in SAVE_FORMATS:
            if len(inputs) > 1 or len(kinds) > 1:
                raise OptionError(
                    f"`output` {output} names one file, but this run writes several: pass a folder instead"
                )
            return [[target] for _ in inputs]
        if is_file_name:
            raise OptionError(
                f"`output` {output}: unsupported image type '{target.suffix}' (use .png, .jpg or .webp, or a folder)"
            )
    folders = [(Path(output) / item.relative.parent) if output is not None else item.path.parent for item in inputs]
    shared = Counter((_fold(folder), item.path.stem.casefold()) for folder, item in zip(folders, inputs))
    taken: set[str] = set()
    plans: list[list[Path]] = []
    for folder, item in zip(folders, inputs):
        stem = item.path.stem
        if shared[(_fold(folder), stem.casefold())] > 1:
            stem = f"{stem}_{item.path.suffix.lstrip('.').lower()}"
        candidate, number = stem, 1
        while any(_fold(folder / f"{candidate}_{kind}.png") in taken for kind in kinds):
            number += 1
            candidate = f"{stem}_{number}"
        paths = [folder / f"{candidate}_{kind}.png" for kind in kinds]
        taken.update(_fold(path) for path in paths)
        plans.append(paths)
    return plans


def _fold(path: Path) -> str:
    return os.path.normpath(os.path.abspath(path)).casefold()


DestinationKind = Literal["file", "append", "folder"]


def check_destination(
    path: str | Path, *, kind: DestinationKind = "file", overwrite: bool = False, argument: str | None = None
) -> OutputError | None:
    """Why ``path`` cannot be written, or ``None`` when it can; found without writing anything.

    ``kind``: "file", a file made or replaced whole (an existing one needs ``overwrite``); "append", a file added to
    and resumed from (it may exist, it must be writable); "folder", a folder a run writes in (it may exist, as when a
    run resumes). Every kind fails on a file where a folder goes or the reverse, a parent that is a file, and a
    folder this process cannot write to (permissions, a read-only file system). ``argument``: the library argument
    that named ``path``, put first in the message so the user sees what to change.
    """
    path = Path(path)
    named = f"`{argument}` {path}" if argument else str(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        return OutputError(f"{named} is a file, not a folder")
    if kind != "folder" and path.is_dir():
        return OutputError(f"{named} is a folder, not a file")
    if kind == "file" and path.exists() and not overwrite:
        return OutputError(f"{named} exists; pass `overwrite=True` to replace it")
    if kind == "folder" and path.is_dir():
        folder = path
    else:
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if folder.exists() and not folder.is_dir():
            return OutputError(f"{named} cannot be written there: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        return OutputError(f"{named}: cannot write to folder {folder} (read-only or permission denied)")
    if kind == "append" and path.exists() and not os.access(path, os.W_OK):
        return OutputError(f"{named}: cannot write to it (read-only or permission denied)")
    return None


def check_destinations(destinations: Sequence[Path], overwrite: bool) -> OutputError | None:
    """Why one input's result files cannot be written (the first problem), or ``None`` when they can."""
    for destination in destinations:
        if (problem := check_destination(destination, overwrite=overwrite)) is not None:
            return problem
    return None


def free_folder(root: str | Path, image: str | Path, kinds: Sequence[str]) -> Path:
    """``root``, or the first numbered folder below it (``2``, ``3``...) where none of ``image``'s result files (one
    per kind, named as ``plan_outputs`` names them) exist yet: a session's runs of one photo never overwrite."""
    found, missing = find_inputs([str(image)])
    if not found:
        raise InputError(f"{image}: {missing[0][1] if missing else 'not an image'}")
    folder, number = Path(root), 1
    while any(path.exists() for path in plan_outputs(found, folder, kinds)[0]):
        number += 1
        folder = Path(root) / str(number)
    return folder


def job_settings(settings: dict) -> dict:
    """``settings`` as a file's metadata holds them after a JSON round trip (tuples as lists), to compare."""
    return json.loads(json.dumps(settings))


def outputs_finished(destinations: Sequence[Path], job: dict, overwrite: bool = False) -> bool:
    """True when every file of ``destinations`` is there and was made by ``job`` (its metadata's "job" equals it).

    False when some are missing (those there were made by ``job``), or, with ``overwrite``, when one was made
    otherwise (it is to be replaced). Without ``overwrite`` a file made otherwise is an ``OutputError`` naming the
    settings that differ. Writes are atomic (``files.atomic_write``), so a file under its final name is whole; a
    file that still does not read to its end is not taken for a finished one.
    """
    job = job_settings(job)
    there = 0
    for destination in destinations:
        if not destination.is_file():
            continue
        differs = _differs(destination, job)
        if differs is None:
            there += 1
        elif overwrite:
            return False
        else:
            raise OutputError(f"{destination} {differs}: pass `overwrite=True` to replace it, or give another `output`")
    return there == len(destinations)


def _differs(path: Path, job: dict) -> str | None:
    """How the file at ``path`` differs from an output of ``job`` (None: it is one)."""
    from PIL import Image

    from vipcli_model.images.io import read_metadata

    try:
        with Image.open(path) as image:
            image.verify()  # every chunk to the end, checksums included
        stored = (read_metadata(path).get("vip") or {}).get("job")
    except (InputError, OSError, SyntaxError, ValueError) as exc:
        return f"exists but cannot be read as a finished image ({str(exc).splitlines()[0] if str(exc) else exc})"
    if not isinstance(stored, dict):
        return "exists and records no vip job settings (made by another program or an older vip)"
    changed = [
        f"`{name}` {stored.get(name)!r}, now {job.get(name)!r}"
        for name in [*job, *(name for name in stored if name not in job)]
        if stored.get(name) != job.get(name)
    ]
    if not changed:
        return None
    shown = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
    return f"was made with other settings ({shown})"
