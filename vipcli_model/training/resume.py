"""Checkpoints of a training run: writing one (``save_checkpoint``) and resuming from one (``_restore``).

A mixin of :class:`recipe.TrainingRecipe`, whose attributes (trainable weights, optimizer, EMA, data position,
accelerator) it reads and restores.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vipcli_model.errors import InputError
from vipcli_model.training.checkpoint import (
    Checkpoint,
    capture_rng_state,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from vipcli_model.training.run_files import CHECKPOINTS, now, versions


class Checkpointing:
    """``save_checkpoint`` / ``_restore`` for the recipe (see the module docstring)."""

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step_N`` (main process), then keep the newest ``keep``."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        path = None
        self.saved_step = self.step
        if accelerator.is_main_process:
            folder = self.run_dir / CHECKPOINTS
            path = save_checkpoint(
                folder,
                self.step,
                trainable=self.trainable,
                optimizer=self.optimizer.state_dict(),
                ema=self.ema.state_dict() if self.ema is not None else None,
                rng=capture_rng_state(),
                state={
                    "data_position": self.examples_seen,
                    "epoch": self.examples_seen // len(self.report.images),
                    "epoch_offset": self.examples_seen % len(self.report.images),
                    "num_images": len(self.report.images),
                    "scheduler_step": self.step,
                    "num_processes": accelerator.num_processes,
                    "loss": self.last_loss,
                    "config": self.config.to_dict(),
                    "versions": versions(),
                    "created": now(),
                },
            )
            prune_checkpoints(folder, self.config.keep)
            self.emit("checkpoint", path=path)
        accelerator.wait_for_everyone()
        return path

    def _restore(self, checkpoint: Checkpoint) -> None:
        expected, found = set(self.trainable), set(checkpoint.trainable)
        if expected != found:
            raise InputError(
                f"checkpoint {checkpoint.path} does not match this model and mode "
                f"({len(expected - found)} weights missing, {len(found - expected)} unexpected)"
            )
        with torch.no_grad():
            for name, tensor in checkpoint.trainable.items():
                self.trainable[name].copy_(tensor)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        if self.ema is not None:
            if checkpoint.ema is None:
                raise InputError(f"checkpoint {checkpoint.path} has no EMA weights, but this run uses `ema`")
            self.ema.load_state_dict(checkpoint.ema)
        state = checkpoint.state
        self.step = int(state["step"])
        self.examples_seen = int(state["data_position"])
        self.last_loss = state.get("loss")
        if int(state.get("num_images", len(self.report.images))) != len(self.report.images):
            self.note(
                f"the data folder had {state['num_images']} usable images at step {self.step}, it has "
                f"{len(self.report.images)} now: the data order differs from an uninterrupted run"
            )
        if int(state.get("num_processes", self.accelerator.num_processes)) != self.accelerator.num_processes:
            self.note(
                f"resumed on {self.accelerator.num_processes} process(es), the checkpoint was written by "
                f"{state['num_processes']}: batches are split differently from an uninterrupted run"
            )
        restore_rng_state(checkpoint.rng)
        self.resumed_from = checkpoint.path
        self.saved_step = self.step
