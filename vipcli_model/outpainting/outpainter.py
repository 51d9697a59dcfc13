"""The chain for one image, wired in one place: canvas + mask -> C-T-S pipeline -> blend -> result.

Models load once in :class:`Outpainter`; each call outpaints one image. The model runs at its
working resolution whatever the photo's size; the generated part is upscaled and the original
pasted back at full resolution, so a 4000-px photo never needs 4000-px diffusion. Many images
to files (inputs, prompts, names, saving) is ``vipcli_model.outpainting.run.outpaint_images``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from vipcli_model.config import (
    BlendConfig,
    DetailConfig,
    ExpansionConfig,
    GenerationConfig,
    ModelConfig,
    check_generation,
)
from vipcli_model.cts.attention import CTSAdapter
from vipcli_model.errors import ModelLoadError, OptionError
from vipcli_model.models import hub
from vipcli_model.models.families import family_of_pipeline, pairing_of, resolve_generation, resolve_pairing
from vipcli_model.models.loading import (
    is_channels_last,
    load_fast_lora,
    load_pipeline,
    model_settings,
    resolve_adapter_path,
    tiny_vae_spec,
)
from vipcli_model.outpainting.blend import color_match, paste_back
from vipcli_model.outpainting.canvas import Geometry, prepare_geometry, to_working_resolution
from vipcli_model.outpainting.detail import check_detail, detail_results
from vipcli_model.outpainting.metadata import outpaint_metadata
from vipcli_model.pipelines.sd import VipOutpaintPipeline
from vipcli_model.prompts import RegionPrompts
from vipcli_model.speed.guidance_interval import covers_every_step

__all__ = ["COMPILE_OPTIONS", "OutpaintResult", "Outpainter"]

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]
LatentsCallback = Callable[[int, int, torch.Tensor], None]  # (step, steps, the latents after that step)

# ``compile``: options for ``torch.nn.Module.compile`` of the denoiser (torch.compile's defaults: the inductor backend).
# C-T-S runs dense under compilation, so the UNet compiles into one graph per canvas size and batch size (a guidance
# interval adds the conditional-only batch: two graphs).
COMPILE_OPTIONS: dict = {}


@dataclass
class OutpaintResult:
    """Final images at canvas size, with everything needed to reproduce them."""

    images: list[Image.Image]
    geometry: Geometry
    prompts: RegionPrompts
    seed: int  # the first image's; image k was made with ``seed + k`` (``seeds``), as `num_images` 1 remakes it
    metadata: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # for the user: what the run chose not to do (detail pass)

    @property
    def seeds(self) -> list[int]:
        """Each image's own seed: a run with that seed and one image makes exactly that image."""
        return [self.seed + index for index in range(len(self.images))]


class Outpainter:
    """Loads the model (and adapter) once, then outpaints images one by one."""

    def __init__(self, model: ModelConfig, pipeline: VipOutpaintPipeline | None = None, *, tqdm_class=None) -> None:
        """``tqdm_class`` draws download progress when a model is fetched on first use (None: silent)."""
        model = resolve_pairing(model)  # a pairing preset (`model` sdxl-union): its ControlNet, its defaults
        self.pairing = pairing_of(model)
        self.pipe = pipeline if pipeline is not None else load_pipeline(model, tqdm_class=tqdm_class)
        self.model_name = hub.resolve_spec(model.model)
        self.family = family_of_pipeline(self.pipe)
        # the fast LoRA and autoencoder that run, as the metadata records them
        model = self.model_config = model_settings(self.pipe, model)
        tiny = type(getattr(self.pipe, "vae", None)).__name__ == "AutoencoderTiny"
        self.vae_name = (
            tiny_vae_spec(self.pipe, model.vae) if tiny and model.vae != "full" else ("tiny" if tiny else "full")
        )
        if model.fast_lora:
            load_fast_lora(self.pipe, model.fast_lora, tqdm_class=tqdm_class)
        self.adapter: CTSAdapter | None = None
        if model.adapter:
            if not hasattr(self.pipe, "unet"):
                raise OptionError(
                    f"`adapter`: C-T-S adapters are trained for UNet models (SD, SDXL), not {self.family.label}"
                )
            adapter_path = resolve_adapter_path(model.adapter)
            self.adapter = CTSAdapter.load(adapter_path, self.pipe.unet, base_model=self.model_name)
            self.adapter.to(device=self.pipe.device, dtype=self.pipe.unet.dtype)
            self.adapter.requires_grad_(False)
        if model.compile:
            # Lazy: compiles on the first pass, after the LoRA fuse and adapter above. torch's Module.compile assigns
            # no forward, so the diffusers hooks of the memory plan and the speed levers stay on the module (the
            # levers' per-step decisions run eagerly around the compiled UNet).
            self.denoiser.compile(**COMPILE_OPTIONS)

    @property
    def denoiser(self) -> torch.nn.Module:
        """The UNet, or the transformer of transformer families (FLUX)."""
        return getattr(self.pipe, "unet", None) or self.pipe.transformer

    @property
    def native_resolution(self) -> int:
        return self.pipe.working_resolution

    def prompt_window(self) -> tuple[object, int]:
        """The tokenizer and token count of the text stream that carries region prompts (a captioner's text is
        fitted to them): CLIP's 77 on SD / SDXL, T5's 512 on FLUX Fill."""
        return getattr(self.pipe, self.family.prompt_tokenizer, None), self.family.prompt_tokens

    def runtime(self) -> dict[str, object]:
        """How the pipeline is set up, for the output metadata."""
        return {
            "family": self.family.name,
            "vae": self.vae_name,
            "vae_tiling": bool(getattr(self.pipe.vae, "use_tiling", False)),
            "vae_channels_last": is_channels_last(self.pipe.vae),
            "device": str(self.pipe.device),
            "dtype": str(self.denoiser.dtype).replace("torch.", ""),
            "memory": plan.to_dict() if (plan := getattr(self.pipe, "vip_memory_plan", None)) is not None else None,
        }

    def outpaint(
        self,
        image: Image.Image,
        prompts: RegionPrompts,
        *,
        expansion: ExpansionConfig = ExpansionConfig(),
        generation: GenerationConfig = GenerationConfig(),
        blend: BlendConfig = BlendConfig(),
        alpha: Image.Image | None = None,
        extra_mask: Image.Image | None = None,
        step_callback: StepCallback | None = None,
        detail: DetailConfig | None = None,
        tile_callback: StepCallback | None = None,
        source: str = "",
        prompt_info: dict | None = None,
        latents_callback: LatentsCallback | None = None,
    ) -> OutpaintResult:
        """Outpaint one image. ``prompts`` may be empty (unconditional).

        ``detail``: the detail pass after generation (``detail.py``; None: off), ``tile_callback(done, total)``
        after each of its tiles. ``latents_callback(step, steps, latents)`` after each denoising step, with the
        current latents (``outpainting.session.LatentPreview`` turns them into a picture).
        """
        # what the caller left unset: the family's (its fast preset's when a fast LoRA is fused)
        fast = self.model_config.fast_lora is not None
        generation = resolve_generation(generation, self.family, fast=fast, pairing=self.pairing)
        check_generation(generation, blend)
        if detail is not None:
            check_detail(detail, self.pipe.size_multiple)
        geometry = prepare_geometry(
            image,
            expansion,
            self.native_resolution,
            alpha=alpha,
            extra_mask=extra_mask,
            multiple=self.pipe.size_multiple,
        )
        seed = generation.seed if generation.seed is not None else random.randrange(2**32)
        if not geometry.has_work:
            raise OptionError(
                "nothing to generate: the canvas equals the image and no `mask` or transparency marks a region"
            )
        work_image, work_mask = to_working_resolution(geometry)
        logger.info(
            "%s: canvas %dx%d, photo at %s, generated at %dx%d; %d image(s) from seed %d, %d steps of %s",
            source or "image", *geometry.plan.canvas_size, geometry.plan.image_box, *work_image.size,
            generation.num_images, seed, generation.steps, generation.scheduler,
        )  # fmt: skip

        self.pipe.set_scheduler(generation.scheduler)
        interval = {}
        if not covers_every_step(generation.guidance_interval):
            if not hasattr(self.pipe, "unet"):
                raise OptionError(f"`guidance_interval`: {self.family.label} runs without classifier-free guidance")
            interval = {"guidance_interval": generation.guidance_interval}
        if generation.deep_cache > 1:
            if not hasattr(self.pipe, "unet"):
                raise OptionError(
                    f"`deep_cache`: feature caching needs a UNet, and {self.family.label} has a transformer"
                )
            interval["deep_cache"] = generation.deep_cache
        finals: list[Image.Image] = []
        color_info, detail_infos, notes = [], [], []
        # one pipeline call per image, each with its own seed (seed + k): image k of a run is exactly what a
        # one-image run with its recorded seed makes (a batch would draw every image's noise from one generator)
        for index in range(generation.num_images):
            controller = None
            if generation.cts:
                strength = generation.region_strength
                controller = self.pipe.region_controller(adapter=self.adapter, region_strength=strength)
            output = self._generate(
                prompts,
                work_image,
                work_mask,
                generation,
                controller,
                seed + index,
                interval,
                step_callback,
                index,
                latents_callback,
            )
            generated = output.images[0]
            if blend.color_match:
                generated, info = color_match(generated, work_image, work_mask)
                color_info.append(info)
            upscaled = generated.resize(geometry.plan.canvas_size, Image.Resampling.LANCZOS)
            # into the upscaled copy itself: a 100-megapixel canvas is not held three more times
            final = paste_back(upscaled, geometry.canvas, geometry.mask, feather=blend.feather, in_place=True)
            finals.append(final)
            if detail is not None:  # the detail pass: the generated area refined in tiles at full resolution
                detail_info, detail_notes = detail_results(
                    self.pipe,
                    [final],
                    geometry,
                    prompts,
                    generation,
                    detail,
                    seed=seed + index,
                    controller=controller,
                    feather=blend.feather,
                    color_match=blend.color_match,
                    on_tile=tile_callback,
                )
                detail_infos.append(detail_info)
                notes += [note for note in detail_notes if note not in notes]

        metadata = outpaint_metadata(
            source=source,
            model_name=self.model_name,
            model=self.model_config,
            prompts=prompts,
            prompt_info=prompt_info,
            seed=seed,
            generation=generation,
            cts=output.cts,
            expansion=expansion,
            geometry=geometry,
            blend=blend,
            color_correction=color_info,
            runtime={
                **self.runtime(),
                "guided_steps": getattr(output, "guided_steps", None) or None,
                "cached_steps": getattr(output, "cached_steps", None) or None,
            },
        )
        if detail_infos:
            metadata["detail"] = dict(detail_infos[0])
            if "seconds" in detail_infos[0]:
                metadata["detail"]["seconds"] = round(sum(info["seconds"] for info in detail_infos), 2)
        return OutpaintResult(
            images=finals, geometry=geometry, prompts=prompts, seed=seed, metadata=metadata, notes=notes
        )

    def _generate(
        self,
        prompts,
        work_image,
        work_mask,
        generation,
        controller,
        seed,
        levers,
        step_callback,
        index,
        latents_callback,
    ) -> Any:
        """One image at working resolution: the pipeline run with ``seed`` (``levers``: guidance interval, cache)."""
        steps = generation.steps
        progress = None
        if step_callback is not None:  # the run's steps over all its images
            total = steps * generation.num_images
            progress = lambda done, _steps: step_callback(index * steps + done, total)  # noqa: E731
        try:
            return self.pipe(
                prompt=prompts.total,
                image=work_image,
                mask_image=work_mask,
                width=work_image.width,  # the pipeline's default is the model's native size, not the image's
                height=work_image.height,
                strength=1.0,  # the new area starts from pure noise (SDXL's own default, 0.9999, runs a step less)
                center_prompt=prompts.center,
                surrounding_prompt=prompts.surrounding,
                negative_prompt=generation.negative,
                num_inference_steps=steps,
                guidance_scale=generation.guidance,
                num_images_per_prompt=1,
                generator=torch.Generator(device="cpu").manual_seed(seed),
                cts=controller,
                callback_on_step_end=_step_end(progress, steps, latents_callback),
                **levers,
            )
        except torch._dynamo.exc.TorchDynamoException as exc:
            if not self.model_config.compile:
                raise
            cause = getattr(exc, "inner_exception", None) or exc  # what the compiler itself raised
            reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise ModelLoadError(
                f"`compile`: torch.compile could not compile the UNet on {self.pipe.device} ({reason}): "
                "run without `compile`"
            ) from exc


def _step_end(
    step_callback: StepCallback | None, steps: int, latents_callback: LatentsCallback | None = None
) -> Callable | None:
    """diffusers' ``callback_on_step_end`` reporting ``(step, steps)`` to ``step_callback`` and the latents to
    ``latents_callback``."""
    if step_callback is None and latents_callback is None:
        return None

    def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
        if latents_callback is not None and tensors.get("latents") is not None:
            latents_callback(step + 1, steps, tensors["latents"])
        if step_callback is not None:
            step_callback(step + 1, steps)
        return {}

    return on_step_end
