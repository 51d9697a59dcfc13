"""What ``run_training`` reports while it runs (``TrainEvent``, through a callback) and returns (``TrainResult``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vipcli_model.training.data import DataReport


@dataclass
class TrainEvent:
    """What the recipe reports to its caller (the library never prints).

    kind: "scan" (images checked: metrics done/total), "start", "step", "checkpoint",
          "validation", "note" (a message), "done".
    """

    kind: str
    step: int = 0
    max_steps: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    message: str = ""


EventCallback = Callable[[TrainEvent], None]


@dataclass
class TrainResult:
    """Where a finished run put its results."""

    run_dir: Path
    step: int
    adapter_path: Path | None  # RUN_DIR/cts_adapter.safetensors
    model_path: Path | None  # RUN_DIR/model (lora and full modes: a diffusers folder)
    lora_path: Path | None  # RUN_DIR/unet_lora (lora mode: diffusers LoRA weights, unmerged)
    report: DataReport
    is_main_process: bool
    final_loss: float | None
    resumed_from: Path | None
