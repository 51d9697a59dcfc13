"""The fine-tuning recipe of `vip train`: setup / train / save_checkpoint / cleanup (torchtune's shape).

What one optimizer step does (``TrainingRecipe.train`` reads top to bottom):

1. learning rate of every parameter group = its peak x ``lr_factor(step)`` (a pure function);
2. for each of ``grad_accum`` micro-batches: encode the image and the masked image with the frozen
   VAE, the three prompts with the frozen text encoder, add noise at random timesteps, run the
   9-channel UNet (noisy latents | mask | masked-image latents) with C-T-S attention, and take the
   MSE to the noise (epsilon prediction; v-prediction models get the velocity); backward;
3. clip the gradient norm, AdamW step, update the EMA;
4. report (callback + ``metrics.jsonl``), checkpoint every ``save_every`` steps, validation
   outpaint every ``validate_every`` steps.

Devices and data parallelism come from Hugging Face accelerate: ``accelerate launch -m vipcli.main
train ...`` (or ``torchrun``) runs one process per device; each process reads its own slice of every
global batch (``data.ProcessBatches``), gradients are averaged by DDP, and only the main process
writes files. Randomness is derived from (seed, step, micro-batch, process), not from global RNG
streams, so a resumed run computes the steps an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vipcli_model.cts.attention import CTSAdapter, CTSController
from vipcli_model.errors import InputError, OptionError
from vipcli_model.training.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    load_checkpoint,
    remove_temporaries,
    write_json_atomic,
)
from vipcli_model.training.config import TrainConfig, config_from_dict, resumed_config
from vipcli_model.training.data import (
    DataOrder,
    DataReport,
    OutpaintExamples,
    ProcessBatches,
    collate_examples,
    scan_training_data,
)
from vipcli_model.training.denoiser import (
    CTSDenoiser,
    encode_texts,
    min_snr_weights,
    region_weighted_mean,
    sdxl_conditioning,
    step_generator,
)
from vipcli_model.training.ema import ExponentialMovingAverage
from vipcli_model.training.events import EventCallback, TrainEvent, TrainResult
from vipcli_model.training.export import save_lora, save_model_folder
from vipcli_model.training.gates import GATES, closing_note, gate_report
from vipcli_model.training.preflight import check_before_loading, make_accelerator, no_usable_images_message
from vipcli_model.training.resume import Checkpointing
from vipcli_model.training.run_files import (
    CHECKPOINTS,
    METRICS,
    append_metrics,
    check_run_dir,
    now,
    run_config_path,
    truncate_metrics,
    versions,
)
from vipcli_model.training.schedule import lr_factor
from vipcli_model.training.validation import Validation

logger = logging.getLogger(__name__)

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


class TrainingRecipe(Checkpointing):
    """One training run. ``setup`` -> ``train`` -> ``cleanup``; ``run_training`` does all three."""

    def __init__(self, config: TrainConfig, run_dir: str | Path, on_event: EventCallback | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.on_event = on_event
        self.step = 0
        self.examples_seen = 0
        self.last_loss: float | None = None
        self.resumed_from: Path | None = None
        self.saved_step: int | None = None  # the step of the newest checkpoint written or resumed from
        self.ema: ExponentialMovingAverage | None = None
        self.validation: Validation | None = None

    # ------------------------------------------------------------------ events

    def emit(self, kind: str, **fields: Any) -> None:
        if self.on_event is not None and self.accelerator.is_main_process:
            self.on_event(TrainEvent(kind, step=self.step, max_steps=self.config.max_steps, **fields))

    def note(self, message: str) -> None:
        logger.info(message)
        self.emit("note", message=message)

    # ------------------------------------------------------------------ setup

    def setup(self, resume: bool = False) -> None:
        """Accelerator, checkpoint to resume, data, models, optimizer, loader; nothing trains yet."""
        config = self.config
        check_before_loading(config)
        check_run_dir(self.run_dir, config, resume=resume)  # every file the run writes, before hours of work
        # 1. Devices and processes
        self.accelerator = make_accelerator(config)
        self.device = self.accelerator.device
        # 2. The checkpoint to continue from (a temp folder left by a killed run is cleaned first)
        checkpoint = self._setup_checkpoint(resume)
        # 3. Data: every image decoded once up front; broken ones reported and left out
        self.report = self._setup_data()
        # 4. Models: loaded the way `vip outpaint --model` loads them; only the intended parts train
        torch.manual_seed(config.seed)  # adapter and LoRA initialisation
        self._setup_models()
        # 5. Optimizer: AdamW over the adapter's groups (gates: own lr, no decay) and UNet weights
        self._setup_optimizer()
        # 6. Restore the checkpoint: weights, optimizer, EMA, step, data position, RNG
        if checkpoint is not None:
            self._restore(checkpoint)
        # 7. The data stream, from the saved position
        self.batches = self._setup_loader()
        # 8. The run folder: config + versions, metrics cut back to the resumed step
        self._setup_run_dir()
        self.emit(
            "start",
            metrics={
                **self.report.to_dict(),
                "trainable_parameters": sum(p.numel() for p in self.trainable.values()),
                "num_processes": self.accelerator.num_processes,
                "device": str(self.device),
                "mixed_precision": self.accelerator.mixed_precision,
                "effective_batch": config.batch_size * config.grad_accum * self.accelerator.num_processes,
                "start_step": self.step,
                "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            },
        )

    def _setup_checkpoint(self, resume: bool) -> Checkpoint | None:
        """The checkpoint a resumed run continues from (None: from step 0)."""
        accelerator, checkpoints = self.accelerator, self.run_dir / CHECKPOINTS
        if not resume:
            return None
        if not self.run_dir.is_dir():
            raise OptionError(f"`resume=True`: {self.run_dir} does not exist (nothing to resume)")
        if accelerator.is_main_process:
            for leftover in remove_temporaries(checkpoints) + remove_temporaries(self.run_dir):
                self.note(f"removed {leftover.name}, left unfinished by the interrupted run")
        accelerator.wait_for_everyone()
        latest = latest_checkpoint(checkpoints)
        if latest is None:
            self.note(f"no checkpoint in {checkpoints} yet: starting from step 0")
            return None
        checkpoint = load_checkpoint(latest)
        # Settings that change what a step computes must be the checkpoint's.
        resumed_config(config_from_dict(checkpoint.state["config"]), self.config.to_dict())
        return checkpoint

    def _setup_data(self) -> DataReport:
        config = self.config

        def scan_progress(done: int, total: int) -> None:
            self.emit("scan", metrics={"done": done, "total": total})

        report = scan_training_data(
            config.data_dir, config.captions or None, resolution=config.resolution, on_progress=scan_progress
        )
        if not report.images:
            raise InputError(no_usable_images_message(config.data_dir, report))
        return report

    def _setup_models(self) -> None:
        from diffusers import DDPMScheduler

        from vipcli_model.config import ModelConfig
        from vipcli_model.models.families import family_of_pipeline
        from vipcli_model.models.loading import load_pipeline

        config = self.config
        pipe = load_pipeline(ModelConfig(model=config.model, device="cpu", dtype="fp32"))
        family = family_of_pipeline(pipe)
        if not family.trainable:
            raise OptionError(
                f"`model`: vip train supports SD-1.x/2.x and SDXL models; {family.label} training is not supported yet"
            )
        if family.name != "sd" and config.mode != "adapter":
            raise OptionError(
                f"`mode`: {family.label} trains in adapter mode only ({config.mode} is not supported yet)"
            )
        self.family = family
        self.pipe = pipe
        self.base_scheduler = pipe.scheduler  # validation may swap pipe.scheduler; the saved model keeps this one
        self.unet, self.vae, self.text_encoder, self.tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.text_encoder_2 = getattr(pipe, "text_encoder_2", None)  # SDXL's second (pooled) encoder
        for frozen in (self.unet, self.vae, self.text_encoder, self.text_encoder_2):
            if frozen is None:
                continue
            frozen.requires_grad_(False)
            frozen.eval()

        # The C-T-S adapter always trains; lora adds LoRA on the UNet's attention, full the whole UNet.
        self.adapter = CTSAdapter(
            self.unet, rank=config.rank, region_strength=config.region_strength, out_delta=config.out_delta
        )
        if config.mode == "lora":
            from peft import LoraConfig

            self.unet.add_adapter(
                LoraConfig(
                    r=config.lora_rank,
                    lora_alpha=config.lora_alpha,
                    init_lora_weights="gaussian",
                    target_modules=LORA_TARGETS,
                )
            )
        elif config.mode == "full":
            self.unet.requires_grad_(True)
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

        # Frozen weights may run in the mixed-precision dtype; anything trained or saved stays fp32.
        precision = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.accelerator.mixed_precision, torch.float32)
        self.frozen_dtype = precision if config.mode == "adapter" else torch.float32
        for module in (self.vae, self.text_encoder, self.text_encoder_2, self.unet):
            if module is None:
                continue
            module.to(self.device)
            if self.frozen_dtype != torch.float32:
                module.to(dtype=self.frozen_dtype)
        if self.device.type != "cpu":  # channels-last VAE is a measured CPU choice of load_pipeline, not for GPUs
            self.vae.to(memory_format=torch.contiguous_format)
        self.adapter.to(self.device, torch.float32)
        self.unet.train()
        self.controller = CTSController(self.unet, adapter=self.adapter)
        self.controller.install()

    def _setup_optimizer(self) -> None:
        """AdamW over the adapter's groups and the UNet weights that train; DDP wraps the model; EMA."""
        config = self.config
        groups = self.adapter.parameter_groups(config.lr, config.gate_lr, config.weight_decay)
        unet_parameters = [parameter for parameter in self.unet.parameters() if parameter.requires_grad]
        if unet_parameters:
            groups.append(
                {
                    "params": unet_parameters,
                    "lr": config.effective_unet_lr(),
                    "weight_decay": config.weight_decay,
                    "name": "unet",
                }
            )
        for group in groups:
            group["peak_lr"] = group["lr"]
        optimizer = torch.optim.AdamW(groups, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps)
        denoiser = CTSDenoiser(self.unet, self.adapter, self.controller)
        self.model, self.optimizer = self.accelerator.prepare(denoiser, optimizer)
        self.trainable = {f"adapter.{name}": p for name, p in self.adapter.named_parameters()}
        self.trainable.update({f"unet.{name}": p for name, p in self.unet.named_parameters() if p.requires_grad})
        if config.ema:
            self.ema = ExponentialMovingAverage(self.trainable, config.ema_decay)

    def _setup_loader(self) -> Iterator[dict]:
        """This process's batches, from the data position the run is at."""
        config, accelerator = self.config, self.accelerator
        self.order = DataOrder(len(self.report.images), config.seed, position=self.examples_seen)
        dataset = OutpaintExamples(
            self.report.images,
            resolution=config.resolution,
            seed=config.seed,
            mask_mix=config.mask_mix,
            prompt_dropout=config.prompt_dropout,
            branch_dropout=config.branch_dropout,
        )
        workers = config.num_workers if config.num_workers >= 0 else (4 if self.device.type == "cuda" else 0)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=ProcessBatches(
                self.order, config.batch_size, accelerator.process_index, accelerator.num_processes
            ),
            collate_fn=collate_examples,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
        )
        return iter(loader)

    def _setup_run_dir(self) -> None:
        accelerator = self.accelerator
        if accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                run_config_path(self.run_dir),
                {
                    "config": self.config.to_dict(),
                    "versions": versions(),
                    "data": self.report.to_dict(),
                    "num_processes": accelerator.num_processes,
                    "mixed_precision": accelerator.mixed_precision,
                    "device": str(self.device),
                    "updated": now(),
                },
            )
            truncate_metrics(self.run_dir / METRICS, self.step)
        accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ one micro-batch

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return encode_texts(
            self.pipe, self.tokenizer, self.text_encoder, texts, self.device, self.family.name == "sdxl"
        )

    def sdxl_conditioning(self, totals: list[str], height: int, width: int, dtype: torch.dtype) -> dict | None:
        """SDXL's global conditioning of the Total prompts: pooled embedding and time ids (None for SD)."""
        if self.family.name != "sdxl":
            return None
        return sdxl_conditioning(self.pipe, self.text_encoder_2, totals, (height, width), dtype, self.device)

    def loss_step(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """The denoising loss of one micro-batch (``generator`` draws every random number of it)."""
        pixels = batch["pixels"].to(self.device, self.frozen_dtype)
        mask = batch["mask"].to(self.device, self.frozen_dtype)  # 1 = generate
        size = len(batch["total"])
        scaling = self.vae.config.scaling_factor
        with torch.no_grad(), self.accelerator.autocast():
            latents = self.vae.encode(pixels).latent_dist.sample(generator) * scaling
            masked_latents = self.vae.encode(pixels * (1 - mask)).latent_dist.sample(generator) * scaling
            embeddings = self.encode_texts(batch["total"] + batch["center"] + batch["surrounding"])
            added = self.sdxl_conditioning(batch["total"], pixels.shape[-2], pixels.shape[-1], embeddings.dtype)
        total, center, surrounding = embeddings.split(size)
        latent_size = latents.shape[-2:]
        unet_mask = F.interpolate(mask, size=latent_size)  # nearest, as the inpainting pipeline does
        region = batch["region"].to(self.device, torch.float32) if "region" in batch else mask.float()
        region_mask = F.adaptive_avg_pool2d(region, latent_size)  # soft on the seam, as at inference
        noise = torch.randn(latents.shape, generator=generator).to(self.device, latents.dtype)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (size,), generator=generator)
        timesteps = timesteps.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        model_input = torch.cat([noisy, unet_mask.to(noisy.dtype), masked_latents], dim=1)
        prediction = self.model(model_input, timesteps, total, center, surrounding, region_mask, added)
        v_prediction = self.noise_scheduler.config.prediction_type == "v_prediction"
        target = self.noise_scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
        known_weight = self.config.known_loss_weight
        if not self.config.snr_gamma and known_weight == 1.0:
            return F.mse_loss(prediction.float(), target.float())
        errors = F.mse_loss(prediction.float(), target.float(), reduction="none")
        per_example = region_weighted_mean(errors, unet_mask, known_weight)
        if not self.config.snr_gamma:
            return per_example.mean()
        return (
            per_example * min_snr_weights(self.noise_scheduler, timesteps, self.config.snr_gamma, v_prediction)
        ).mean()

    # ------------------------------------------------------------------ the loop

    def train(self) -> None:
        """Optimizer steps from ``self.step`` to ``max_steps``; checkpoints and validation on the way."""
        config, accelerator, optimizer = self.config, self.accelerator, self.optimizer
        parameters = list(self.trainable.values())
        step_times: deque[float] = deque(maxlen=20)
        while self.step < config.max_steps:
            started = time.perf_counter()
            step = self.step

            # 1. Learning rate: a pure function of the step
            factor = lr_factor(
                step,
                max_steps=config.max_steps,
                warmup_steps=config.warmup_steps,
                schedule=config.schedule,
                min_ratio=config.min_lr_ratio,
            )
            for group in optimizer.param_groups:
                group["lr"] = group["peak_lr"] * factor

            # 2. Forward and backward over the micro-batches; DDP averages gradients on the last one
            loss_sum = torch.zeros((), device=self.device)
            for micro in range(config.grad_accum):
                batch = next(self.batches)
                self.examples_seen += config.batch_size * accelerator.num_processes
                last = micro == config.grad_accum - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(self.model):
                    loss = self.loss_step(batch, step_generator(config.seed, step, micro, accelerator.process_index))
                    accelerator.backward(loss / config.grad_accum)
                loss_sum += loss.detach() / config.grad_accum

            # 3. Clip, step, average
            grad_norm = accelerator.clip_grad_norm_(parameters, config.max_grad_norm or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update()
            self.step += 1

            # 4. Report
            self.last_loss = float(accelerator.reduce(loss_sum, "mean"))
            step_times.append(time.perf_counter() - started)
            seconds_per_step = sum(step_times) / len(step_times)
            metrics = {
                "step": self.step,
                "loss": self.last_loss,
                "lr": optimizer.param_groups[0]["lr"],
                "gate_lr": optimizer.param_groups[1]["lr"],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "epoch": round(self.examples_seen / len(self.report.images), 4),
                "steps_per_second": 1.0 / seconds_per_step if seconds_per_step > 0 else None,
                "eta_seconds": seconds_per_step * (config.max_steps - self.step),
                "gates_mean": float(self.adapter.gates().detach().mean()),
            }
            if accelerator.is_main_process:
                append_metrics(self.run_dir / METRICS, {**metrics, "time": now()})
            self.emit("step", metrics=metrics)
            if not math.isfinite(self.last_loss):
                raise OptionError(
                    f"the loss became {self.last_loss} at step {self.step}: lower `lr`, or use `mixed_precision` no"
                )

            # 5. Checkpoint and validation outpaint
            if config.save_every and self.step % config.save_every == 0:
                self.save_checkpoint()
            if config.validate_every and (self.step % config.validate_every == 0 or self.step == config.max_steps):
                self.validate()

        if self.saved_step != self.step:  # the end of the run is always a checkpoint (to extend it later)
            self.save_checkpoint()

    # ------------------------------------------------------------------ files

    def validate(self) -> Path | None:
        """Outpaint a fixed image with a fixed seed; save ``validation/step_N.png`` (main process)."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        path = None
        if accelerator.is_main_process:
            if self.validation is None:
                self.validation = Validation(self.config, self.pipe, self.adapter, self.report.images, self.run_dir)
            self.controller.remove()  # the pipeline installs its own C-T-S for the call
            self.unet.eval()
            try:
                averaged = self.ema.applied() if self.ema is not None else contextlib.nullcontext()
                with averaged, torch.no_grad(), accelerator.autocast():
                    result = self.validation.outpaint()
            finally:
                self.unet.train()
                self.controller.install()
            path = self.validation.save(result, self.step)
            self.emit("validation", path=path)
        accelerator.wait_for_everyone()
        return path

    def save_result(self) -> tuple[Path | None, Path | None, Path | None]:
        """The run's product (main process): the adapter, plus a model folder when the UNet trained.

        With ``--ema`` the averaged weights are the result (the last checkpoint keeps both).
        """
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        adapter_path = model_path = lora_path = None
        if accelerator.is_main_process:
            if self.ema is not None:
                self.ema.copy_to_parameters()
            self.controller.remove()
            self.report_gates()
            if self.config.mode == "adapter":
                adapter_path = self.adapter.save(self.run_dir, base_model=self.config.model)
            else:
                if self.config.mode == "lora":
                    lora_path = save_lora(self.unet, self.run_dir)
                model_path = save_model_folder(
                    self.run_dir,
                    vae=self.vae,
                    text_encoder=self.text_encoder,
                    tokenizer=self.tokenizer,
                    unet=self.unet,
                    scheduler=self.base_scheduler,
                )
                adapter_path = self.adapter.save(self.run_dir, base_model=str(model_path))
            self.emit("done", path=adapter_path, metrics={"loss": self.last_loss})
        accelerator.wait_for_everyone()
        return adapter_path, model_path, lora_path

    def report_gates(self) -> dict:
        """Write the learned gate of every block to ``gates.json`` (``gates.py``); a note when they closed toward 0."""
        report = gate_report(
            self.adapter.block_names,
            self.adapter.gates().detach().cpu().tolist(),
            initial=self.config.region_strength,
            step=self.step,
        )
        write_json_atomic(self.run_dir / GATES, report)
        if (note := closing_note(report, self.config.gate_lr)) is not None:
            self.note(note)
        return report

    def cleanup(self) -> None:
        controller = getattr(self, "controller", None)
        if controller is not None:
            controller.remove()
        self.batches = iter(())
        self.validation = None


def run_training(
    config: TrainConfig, run_dir: str | Path, *, resume: bool = False, on_event: EventCallback | None = None
) -> TrainResult:
    """Train C-T-S on ``config.data_dir`` into ``run_dir``; ``resume`` continues from its latest checkpoint."""
    recipe = TrainingRecipe(config, run_dir, on_event=on_event)
    try:
        recipe.setup(resume=resume)
        recipe.train()
        adapter_path, model_path, lora_path = recipe.save_result()
    finally:
        recipe.cleanup()
    return TrainResult(
        run_dir=Path(run_dir),
        step=recipe.step,
        adapter_path=adapter_path,
        model_path=model_path,
        lora_path=lora_path,
        report=recipe.report,
        is_main_process=recipe.accelerator.is_main_process,
        final_loss=recipe.last_loss,
        resumed_from=recipe.resumed_from,
    )
