"""A run folder's own files: ``config.json`` (the config a run started or resumed with, and the
library versions), ``metrics.jsonl`` (one line per step), what else a run writes there, and the checks on them."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path

from vipcli_model.cts.adapter import ADAPTER_FILENAME
from vipcli_model.errors import InputError, OutputError
from vipcli_model.files import atomic_write_text
from vipcli_model.images.outputs import DestinationKind, check_destination
from vipcli_model.training.checkpoint import latest_checkpoint, list_checkpoints
from vipcli_model.training.config import TrainConfig, config_from_dict
from vipcli_model.training.export import LORA_FOLDER, MODEL_FOLDER
from vipcli_model.training.gates import GATES

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
RUN_CONFIG = "config.json"
VALIDATION = "validation"


def versions() -> dict[str, str]:
    """Library versions recorded with a run (config.json and checkpoints)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("vip-outpaint", "torch", "diffusers", "transformers", "accelerate", "safetensors", "peft"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def run_config_path(run_dir: Path) -> Path:
    return Path(run_dir) / RUN_CONFIG


def load_run_config(run_dir: str | Path) -> TrainConfig | None:
    """The config a run will resume with: its latest checkpoint's, else its config.json, else None.

    A ``run_dir`` the run could not write in (a file, a read-only folder) is an ``OutputError`` first.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=True)
    latest = latest_checkpoint(run_dir / CHECKPOINTS)
    sources = ([latest / "state.json"] if latest else []) + [run_config_path(run_dir)]
    for source in sources:
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {source}: {exc}") from exc
        return config_from_dict(data["config"])
    return None


def run_dir_entries(config: TrainConfig) -> list[tuple[str, DestinationKind]]:
    """What a run with ``config`` writes in its run folder, by name, and whether each is a file or a folder."""
    entries: list[tuple[str, DestinationKind]] = [
        (RUN_CONFIG, "file"),
        (METRICS, "append"),
        (GATES, "file"),
        (ADAPTER_FILENAME, "file"),
        (CHECKPOINTS, "folder"),
    ]
    if config.validate_every:
        entries.append((VALIDATION, "folder"))
    if config.mode in ("lora", "full"):
        entries.append((MODEL_FOLDER, "folder"))
    if config.mode == "lora":
        entries.append((LORA_FOLDER, "folder"))
    return entries


def check_run_dir(run_dir: Path, config: TrainConfig | None = None, *, resume: bool = False) -> None:
    """Refuse a run folder the run could not finish in (``OutputError``), before any model loads.

    The folder must be one (or be creatable) and writable; with ``config``, so must every file and folder the run
    writes in it: a file where the run keeps a folder (or the reverse) would otherwise fail it hours in. A new run
    (not ``resume``) never mixes its files into another run's folder.
    """
    run_dir = Path(run_dir)
    if (problem := check_destination(run_dir, kind="folder", argument="run_dir")) is not None:
        raise problem
    for name, kind in run_dir_entries(config) if config is not None else []:
        # the run's own files: a new run in a folder without checkpoints replaces them
        if (problem := check_destination(run_dir / name, kind=kind, overwrite=True)) is not None:
            raise OutputError(f"{problem}; the run writes its {name} there: move it, or choose another `run_dir`")
    if not resume:
        check_fresh_run_dir(run_dir)


def check_fresh_run_dir(run_dir: Path) -> None:
    """A new run never mixes its files into another run's folder."""
    if list_checkpoints(run_dir / CHECKPOINTS) or (run_dir / "cts_adapter.safetensors").exists():
        raise OutputError(
            f"{run_dir} already holds a training run: pass `resume=True` to continue it, or choose another `run_dir`"
        )


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def append_metrics(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written by a run killed after its last checkpoint) and torn lines."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept), durable=False)
