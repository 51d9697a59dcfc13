"""A run folder's own files: ``config.json`` (the config a run started or resumed with, and the
library versions), ``metrics.jsonl`` (one line per step) and the checks on them."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path

from vipcli_model.errors import InputError, OutputError
from vipcli_model.files import atomic_write_text
from vipcli_model.training.checkpoint import latest_checkpoint, list_checkpoints
from vipcli_model.training.config import TrainConfig, config_from_dict

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
RUN_CONFIG = "config.json"


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
    """The config a run will resume with: its latest checkpoint's, else its config.json, else None."""
    run_dir = Path(run_dir)
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
