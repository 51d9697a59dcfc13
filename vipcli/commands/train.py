"""`vip train`: fine-tune C-T-S (and optionally the UNet) on a folder of images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..console import info, out_console, quiet_third_party, warn
from ..options import ModelOpt
from ..render import TrainingRenderer, print_training_report


def train(
    data_dir: Annotated[
        Optional[str],
        typer.Argument(
            help="Folder of training images, searched recursively. Not needed with --resume.", show_default=False
        ),
    ] = None,
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Run folder: config.json, metrics.jsonl, gates.json, checkpoints/, validation/ and the result "
            "(cts_adapter.safetensors; model/ in lora and full modes).",
            show_default=False,
        ),
    ] = ...,  # type: ignore[assignment]
    model: ModelOpt = None,
    captions: Annotated[
        Optional[str],
        typer.Option(
            "--captions",
            help="Captions from `vip caption --for-training --jsonl` (JSON Lines, image paths relative to DATA_DIR). "
            "Default: DATA_DIR/captions.jsonl when it exists. Images without a caption train unconditionally.",
            rich_help_panel="Data",
        ),
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config",
            help="TOML file with any setting of the run (flat keys named like the options, with underscores, e.g. "
            "max_steps = 4000, mask_mix = {ratio = 1.0}); options given here win over it.",
            rich_help_panel="Data",
        ),
    ] = None,
    resolution: Annotated[
        Optional[int],
        typer.Option(
            "--resolution",
            help="Training size: images are resized and center-cropped to this square. Default 256 (the paper's).",
            rich_help_panel="Data",
        ),
    ] = None,
    mode: Annotated[
        Optional[str],
        typer.Option(
            "--mode",
            help="What trains: adapter (C-T-S branch weights and gates; default), lora (+ LoRA on the UNet's "
            "attention; needs peft), full (+ the whole UNet).",
            rich_help_panel="Training",
        ),
    ] = None,
    max_steps: Annotated[
        Optional[int], typer.Option("--max-steps", help="Optimizer steps. Default 2000.", rich_help_panel="Training")
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option("--batch-size", help="Images per process per micro-step. Default 4.", rich_help_panel="Training"),
    ] = None,
    grad_accum: Annotated[
        Optional[int],
        typer.Option("--grad-accum", help="Micro-steps per optimizer step. Default 1.", rich_help_panel="Training"),
    ] = None,
    lr: Annotated[
        Optional[float],
        typer.Option(
            "--lr", help="Peak learning rate of the C-T-S branch weights. Default 1e-4.", rich_help_panel="Training"
        ),
    ] = None,
    gate_lr: Annotated[
        Optional[float],
        typer.Option(
            "--gate-lr",
            help="Peak learning rate of the C-T-S gates (no weight decay; 0 keeps them at the zero-shot strength). "
            "Default 1e-5, a tenth of --lr's.",
            rich_help_panel="Training",
        ),
    ] = None,
    rank: Annotated[
        Optional[int],
        typer.Option("--rank", help="Rank of the C-T-S branch deltas. Default 16.", rich_help_panel="Training"),
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option(
            "--seed",
            help="Seeds data order, masks, prompt dropout, noise and timesteps. Default 0.",
            rich_help_panel="Training",
        ),
    ] = None,
    mixed_precision: Annotated[
        Optional[str],
        typer.Option("--mixed-precision", help="no (fp32, default), fp16 (CUDA) or bf16.", rich_help_panel="Training"),
    ] = None,
    ema: Annotated[
        Optional[bool],
        typer.Option(
            "--ema/--no-ema",
            help="Keep an exponential moving average of the trained weights and save it as the result.",
            rich_help_panel="Training",
            show_default=False,
        ),
    ] = None,
    gradient_checkpointing: Annotated[
        bool,
        typer.Option(
            "--gradient-checkpointing",
            help="Recompute UNet activations during backward: less memory, slower. --no-gradient-checkpointing turns "
            "it off where --config turns it on.",
            rich_help_panel="Training",
        ),
    ] = False,
    # a flag of its own, not "--gradient-checkpointing/--no-...": two names that long leave help no room at 80 columns
    no_gradient_checkpointing: Annotated[bool, typer.Option("--no-gradient-checkpointing", hidden=True)] = False,
    save_every: Annotated[
        Optional[int],
        typer.Option(
            "--save-every",
            help="Checkpoint every N steps (and at the end); 0: only at the end. Default 500.",
            rich_help_panel="Run",
        ),
    ] = None,
    keep: Annotated[
        Optional[int],
        typer.Option("--keep", help="Checkpoints kept (older ones are deleted). Default 3.", rich_help_panel="Run"),
    ] = None,
    validate_every: Annotated[
        Optional[int],
        typer.Option(
            "--validate-every",
            help="Save a validation outpaint (fixed image and seed) to RUN/validation/step_N.png every N steps; 0: "
            "never. Default 500.",
            rich_help_panel="Run",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out from its latest checkpoint, with its saved settings (only --max-steps, "
            "--save-every, --keep, --validate-every may change).",
            rich_help_panel="Run",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check the settings and the data (counts, broken files, caption coverage) and exit; trains nothing.",
            rich_help_panel="Run",
        ),
    ] = False,
) -> None:
    """Fine-tune C-T-S attention on a folder of images; the result is an adapter for `vip outpaint --adapter`.

    Each step samples an outpaint mask per image (ratio, one- and two-sided expansion, irregular
    border masks), encodes the Center / Surrounding / Total captions, and trains the denoising loss.
    Broken images are reported and left out; images without a caption train unconditionally.

    Examples:

      vip caption data/ --for-training --jsonl data/captions.jsonl

      vip train data/ --out runs/scenery --max-steps 2000

      vip outpaint photo.jpg --ratio 2x --adapter runs/scenery

    Check the settings and the data without training:

      vip train data/ --out runs/scenery --dry-run

    Continue an interrupted run, or extend a finished one:

      vip train --out runs/scenery --resume --max-steps 4000

    Train the whole UNet too (the result adds RUN/model, a diffusers folder:
    vip outpaint photo.jpg --model runs/unet/model --adapter runs/unet):

      vip train data/ --out runs/unet --mode full --mixed-precision bf16

    Several GPUs or machines: data-parallel through Hugging Face accelerate, with the
    same arguments. One process per GPU, --batch-size is per process, only the main
    process writes files. Across machines, RUN must be on a shared disk and DATA_DIR at the
    same path on every machine:

      accelerate launch --multi_gpu --num_processes 4 -m vipcli.main \\
          train data/ --out runs/scenery

      accelerate launch --config_file machines.yaml -m vipcli.main \\
          train data/ --out /shared/runs/scenery

    (machines.yaml from `accelerate config`: num_machines, machine_rank, main_process_ip on each machine.)

    torchrun --nproc_per_node 4 -m vipcli.main train ... works the same way, and runs
    data-parallel over CPU processes (gloo) on a machine without a GPU.
    """
    from vipcli_model.errors import InputError, OptionError
    from vipcli_model.training.config import TrainConfig, apply_overrides, load_toml, normalize_paths, resumed_config

    if not resume and not data_dir:
        raise OptionError("pass the folder of training images (DATA_DIR), or --resume to continue a run")
    run_dir = Path(out).expanduser()
    file_values: dict[str, Any] = {}
    if config is not None:
        file_values = load_toml(config)
        apply_overrides(TrainConfig(), file_values, source=f"--config {config}")  # report its problems on their own
    given = {
        "data_dir": data_dir,
        "model": model,
        "captions": captions,
        "resolution": resolution,
        "mode": mode,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "lr": lr,
        "gate_lr": gate_lr,
        "rank": rank,
        "seed": seed,
        "mixed_precision": mixed_precision,
        "ema": ema,
        "gradient_checkpointing": True if gradient_checkpointing else (False if no_gradient_checkpointing else None),
        "save_every": save_every,
        "keep": keep,
        "validate_every": validate_every,
    }
    explicit = normalize_paths({**file_values, **{key: value for key, value in given.items() if value is not None}})

    from vipcli_model.training.preflight import inspect_training
    from vipcli_model.training.run_files import check_run_dir, load_run_config

    saved = load_run_config(run_dir) if resume else None
    if resume and saved is None:
        if not data_dir:
            raise OptionError(f"--resume: {run_dir} holds no run to continue (no config.json or checkpoint)")
        warn(f"{run_dir} holds no run yet: starting a new one")
    settings = resumed_config(saved, explicit) if saved is not None else apply_overrides(TrainConfig(), explicit)

    if dry_run:
        report = inspect_training(settings)
        check_run_dir(run_dir, settings, resume=resume)
        print_training_report(report.to_dict(), out_console)
        if not report.images:
            raise InputError(f"no usable training images in {settings.data_dir}: nothing to train")
        out_console.print(
            f"ok: {len(report.images)} image(s) ready; settings valid (mode {settings.mode}, {settings.max_steps} "
            "steps)",
            highlight=False,
        )
        return

    quiet_third_party()
    from vipcli_model.training.recipe import run_training

    renderer = TrainingRenderer()
    with renderer:
        result = run_training(settings, run_dir, resume=resume, on_event=renderer)
    if not result.is_main_process:
        return
    loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    info(f"[green]done:[/] {result.step} steps{loss}")
    if result.model_path is not None:
        info(f"use it: vip outpaint IMAGE --model {result.model_path} --adapter {result.adapter_path}")
        out_console.print(str(result.model_path), highlight=False)
    else:
        from vipcli_model.models.hub import DEFAULT_INPAINT_MODEL

        model_option = f" --model {settings.model}" if settings.model != DEFAULT_INPAINT_MODEL else ""
        info(f"use it: vip outpaint IMAGE --adapter {result.adapter_path}{model_option}")
    out_console.print(str(result.adapter_path), highlight=False)
