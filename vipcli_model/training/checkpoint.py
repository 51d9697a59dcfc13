"""Training checkpoints: written atomically, kept in a rolling window, found again on ``--resume``.

A checkpoint is a folder ``RUN_DIR/checkpoints/step_N/``::

    trainable.safetensors   the trainable weights ("adapter.*", and "unet.*" in lora/full mode)
    ema.safetensors         their exponential moving average (only with --ema)
    optimizer.pt            AdamW state (torch.save of a plain dict)
    rng.pt                  python / numpy / torch RNG states of the writing process
    state.json              step, data position, schedule step, config, versions

It is written into ``checkpoints/.tmp-step_N-XXXX/``, every file fsynced, then renamed to
``step_N`` in one ``os.rename`` (atomic on POSIX), and the parent folder fsynced. A process killed
at any moment therefore leaves either a complete ``step_N`` or a ``.tmp-*`` folder, which
:func:`latest_checkpoint` never picks and :func:`remove_temporaries` deletes on resume. Old
checkpoints are deleted by renaming them to ``.trash-*`` first, for the same reason.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vipcli_model.errors import InputError, OutputError
from vipcli_model.files import atomic_write_text, fsync_folder

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "vip-train-checkpoint"
CHECKPOINT_VERSION = 1
STEP_PATTERN = re.compile(r"^step_(\d+)$")
REQUIRED_FILES = ("trainable.safetensors", "optimizer.pt", "rng.pt", "state.json")


@dataclass
class Checkpoint:
    """A checkpoint read back: plain tensors and dicts, on the CPU."""

    path: Path
    step: int
    trainable: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    state: dict[str, Any]


# ------------------------------------------------------------------------------ files


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside ``path``, fsync, rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def discard_folder(folder: Path) -> None:
    """Delete a folder so that a kill mid-way never leaves something that looks like a checkpoint."""
    trash = folder.with_name(f".trash-{folder.name}-{secrets.token_hex(4)}")
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return
    fsync_folder(folder.parent)
    shutil.rmtree(trash, ignore_errors=True)


# ------------------------------------------------------------------------------ RNG


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy (legacy global) and torch (CPU, and CUDA when present) RNG states."""
    version, internal, gauss = random.getstate()
    bit_generator, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [bit_generator, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    bit_generator, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((bit_generator, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ save / find / load


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``folder`` as (step, path), oldest first (temp and trash folders ignored)."""
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = STEP_PATTERN.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete ``.tmp-*`` / ``.trash-*`` folders left by a killed run; returns what was removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if entry.name.startswith((".tmp-", ".trash-")):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def save_checkpoint(
    folder: Path,
    step: int,
    *,
    trainable: Mapping[str, torch.Tensor],
    optimizer: Mapping[str, Any],
    state: Mapping[str, Any],
    ema: Mapping[str, torch.Tensor] | None = None,
    rng: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``folder/step_<step>/`` atomically and return its path."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step}"
    temporary = folder / f".tmp-step_{step}-{secrets.token_hex(4)}"
    try:
        temporary.mkdir()
        files = []

        def tensors_to_cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}

        save_file(tensors_to_cpu(trainable), str(temporary / "trainable.safetensors"))
        files.append("trainable.safetensors")
        if ema is not None:
            save_file(tensors_to_cpu(ema), str(temporary / "ema.safetensors"))
            files.append("ema.safetensors")
        torch.save(dict(optimizer), temporary / "optimizer.pt")
        torch.save(dict(rng if rng is not None else capture_rng_state()), temporary / "rng.pt")
        files += ["optimizer.pt", "rng.pt"]
        payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "step": step, **state}
        (temporary / "state.json").write_text(
            json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
        )
        files.append("state.json")
        for name in files:
            fsync_file(temporary / name)
        fsync_folder(temporary)
        if final.exists():  # the same step written again (a resumed run that re-saves its last step)
            discard_folder(final)
        os.rename(temporary, final)
        fsync_folder(folder)
    except OSError as exc:
        shutil.rmtree(temporary, ignore_errors=True)
        raise OutputError(f"cannot write checkpoint {final}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


def prune_checkpoints(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; returns the deleted paths."""
    found = list_checkpoints(folder)
    doomed = [path for _step, path in found[:-keep]] if keep > 0 else []
    for path in doomed:
        discard_folder(path)
    return doomed


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint folder, refusing an incomplete or foreign one with a message naming it."""
    from safetensors.torch import load_file

    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise InputError(
            f"checkpoint {path} is incomplete (no {', '.join(missing)}): delete it to resume from an earlier one"
        )
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {state.get('format')!r}")
        if state.get("format_version") != CHECKPOINT_VERSION:
            raise ValueError(f"format version {state.get('format_version')}, this vip reads {CHECKPOINT_VERSION}")
        trainable = load_file(str(path / "trainable.safetensors"))
        ema = load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").is_file() else None
        optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable part makes the checkpoint unusable
        raise InputError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}): delete it to resume from an earlier one"
        ) from exc
    return Checkpoint(
        path=path, step=int(state["step"]), trainable=trainable, ema=ema, optimizer=optimizer, rng=rng, state=state
    )
