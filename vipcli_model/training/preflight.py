"""Before any model loads: the config and data checks of `vip train` (``--dry-run`` is these alone) and the
accelerate setup that refuses mixed-precision modes the machine cannot run."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vipcli_model.errors import OptionError
from vipcli_model.training.config import TrainConfig, check_config
from vipcli_model.training.data import DataReport, scan_training_data
from vipcli_model.training.events import EventCallback, TrainEvent


def inspect_training(config: TrainConfig, on_event: EventCallback | None = None) -> DataReport:
    """``--dry-run``: check the config, that the model can be had (cache or hub, as the run finds it) and the data
    (counts, broken files, caption coverage); load no model."""
    from vipcli_model.models.catalog import INPAINT
    from vipcli_model.models.offline import check_available

    check_before_loading(config)
    check_available(config.model, INPAINT, what="inpainting model")

    def progress(done: int, total: int) -> None:
        if on_event is not None:
            on_event(TrainEvent("scan", metrics={"done": done, "total": total}))

    return scan_training_data(
        config.data_dir, config.captions or None, resolution=config.resolution, on_progress=progress
    )


def no_usable_images_message(data_dir, report: DataReport, shown: int = 10) -> str:
    """Why nothing can train, in one line naming each broken file and its reason (the first ``shown``)."""
    if not report.broken:
        return f"no usable training images in {data_dir}: it holds no image files"
    listed = "; ".join(f"{key}: {reason}" for key, reason in report.broken[:shown])
    more = f"; and {len(report.broken) - shown} more" if len(report.broken) > shown else ""
    return f"no usable training images in {data_dir}: {len(report.broken)} broken ({listed}{more})"


def check_before_loading(config: TrainConfig) -> None:
    check_config(config)
    if config.validation_image and not Path(config.validation_image).is_file():
        raise OptionError(f"validation_image {config.validation_image}: no such file")


def make_accelerator(config: TrainConfig):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise OptionError("`mixed_precision` fp16 needs a CUDA GPU: use no (fp32) or bf16 on this machine")
    if config.mixed_precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise OptionError("`mixed_precision` bf16: this GPU has no bf16 support, use fp16")
    # DDP needs every trainable parameter to get a gradient each step (find_unused_parameters off):
    # C-T-S routes by each caption's center box (by the sampled mask when the captions give none);
    # both leave known and generated area in every example, and the token masks are area averages,
    # so in every block some token routes to Center and some to Surrounding.
    # Launched as several processes (accelerate launch / torchrun) on a machine without CUDA:
    # accelerate only goes data-parallel over CPUs (gloo) when told to use the CPU.
    distributed_without_cuda = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        mixed_precision=config.mixed_precision,
        cpu=distributed_without_cuda,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
