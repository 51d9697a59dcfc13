"""The outpainting pipeline: SD inpainting with C-T-S region prompts, over diffusers components."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionInpaintPipeline
from PIL import Image

from vipcli_model.config import SCHEDULERS
from vipcli_model.cts.attention import CTSController, CTSState
from vipcli_model.errors import OptionError
from vipcli_model.speed.feature_cache import feature_cache
from vipcli_model.speed.guidance_interval import limited_guidance
from vipcli_model.prompts import RegionPrompts

logger = logging.getLogger(__name__)

@dataclass
class OutpaintPipelineOutput:
    """Images at working resolution, and how C-T-S ran."""

    images: list[Image.Image] | np.ndarray  # PIL images, or an array with output_type="np"
    cts: dict[str, object] = field(default_factory=dict)  # how C-T-S ran: enabled, mode, gates
    guided_steps: dict[str, int] = field(default_factory=dict)  # with a guidance interval: guided / unguided steps
    cached_steps: dict[str, int] = field(default_factory=dict)  # with ``deep_cache``: full / cached UNet passes


class RegionPromptsMixin:
    """What every vip outpainting pipeline adds to its diffusers parent, whatever the model family.

    Scheduler choice, working resolution, input checks, the region mask at latent resolution,
    and the last step of a call: diffusers' own denoising loop, with the C-T-S state of that call in
    ``cross_attention_kwargs`` (or none where C-T-S equals plain attention). Each family's pipeline encodes the prompts.
    """

    def set_scheduler(self, name: str) -> None:
        """Swap the scheduler for one of ``SCHEDULERS``, keeping the model's noise schedule."""
        import diffusers

        if name not in SCHEDULERS:
            raise OptionError(f"`scheduler` '{name}' is not one of: {', '.join(SCHEDULERS)}")
        if name == "flow-match":
            raise OptionError(
                "`scheduler` 'flow-match' is for rectified-flow models (FLUX): pick another for this model"
            )
        class_name, extra = SCHEDULERS[name]
        scheduler_class = getattr(diffusers, class_name)
        self.scheduler = scheduler_class.from_config(self.scheduler.config, **extra)

    @property
    def size_multiple(self) -> int:
        """Working width and height must be multiples of this: the VAE's downsampling, and at least 8 (diffusers'
        SD and SDXL pipelines check for multiples of 8 whatever the VAE)."""
        return max(8, int(self.vae_scale_factor))

    def region_controller(self, adapter=None, region_strength: float | None = None) -> CTSController:
        """The C-T-S controller for one call: zero-shot at ``region_strength`` or a trained adapter's."""
        return CTSController(self.unet, adapter=adapter, region_strength=region_strength)

    @property
    def working_resolution(self) -> int:
        """The model's native resolution in pixels (512 for SD-1.5)."""
        return int(self.unet.config.sample_size) * int(self.vae_scale_factor)

    def check_region_inputs(
        self,
        prompt: object,
        image: object,
        mask_image: object,
        height: int | None,
        width: int | None,
        num_images_per_prompt: int,
        num_inference_steps: int,
        region_strength: float | None,
        extra: dict,
    ) -> tuple[int, int]:
        """Reject what this pipeline cannot do, naming the argument; returns (height, width)."""
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(
                f"`prompt` must be one string (a batch of prompts is not supported), got {type(prompt).__name__}"
            )
        for name, value in (("image", image), ("mask_image", mask_image)):
            if not isinstance(value, Image.Image):
                raise ValueError(f"`{name}` must be a PIL image, got {type(value).__name__}")
        width, height = (width or image.width), (height or image.height)
        multiple = self.size_multiple
        if height % multiple or width % multiple:
            raise ValueError(f"`height` and `width` must be multiples of {multiple}, got {width}x{height}")
        if image.size != (width, height) or mask_image.size != (width, height):
            raise ValueError(f"`image` {image.size} and `mask_image` {mask_image.size} must both be {width}x{height}")
        if num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be at least 1, got {num_images_per_prompt}")
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be at least 1, got {num_inference_steps}")
        if region_strength is not None and not 0.0 <= region_strength <= 1.0:
            raise ValueError(f"`region_strength` must be in [0, 1], got {region_strength}")
        unsupported = sorted(set(extra) & {"prompt_embeds", "negative_prompt_embeds", "callback", "callback_steps"})
        if unsupported:
            names = ", ".join(f"`{name}`" for name in unsupported)
            raise ValueError(f"{names} not supported: pass the prompts as text")
        return height, width

    def prepare_region_mask(self, mask_image: Image.Image, device: torch.device) -> torch.Tensor:
        """The mask (1 = generate) area-averaged to latent resolution: soft on the seam."""
        array = np.asarray(mask_image.convert("L"), dtype=np.float32) / 255.0
        mask = torch.from_numpy(array)[None, None]
        latent_size = (mask.shape[-2] // self.vae_scale_factor, mask.shape[-1] // self.vae_scale_factor)
        return F.adaptive_avg_pool2d(mask, latent_size).to(device)

    # ---- the call: one template for every family, over the lifecycle methods above and the family's hooks below

    default_guidance_scale: float = 7.5  # the family's ``guidance_scale`` when none is given
    call_defaults: dict = {}  # the parent pipeline's keywords this family sets unless given (SDXL: ``strength``)

    @torch.no_grad()
    def __call__(  # type: ignore[override]
        self,
        prompt: str | None = None,
        image: Image.Image | None = None,
        mask_image: Image.Image | None = None,
        *,
        center_prompt: str | None = None,
        surrounding_prompt: str | None = None,
        region_strength: float | None = None,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        cts: CTSController | None = None,
        guidance_interval: tuple[float, float] | None = None,
        deep_cache: int = 0,
        callback_on_step_end: Callable | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **kwargs,
    ) -> OutpaintPipelineOutput | tuple:
        """Inpaint ``image`` where ``mask_image`` is white, as the parent diffusers pipeline does, with region prompts.

        ``prompt`` is the Total prompt; ``center_prompt`` describes the known pixels and ``surrounding_prompt`` the
        region to generate (either one, empty or missing, falls back to ``prompt``). With a region prompt, C-T-S runs
        with gate ``region_strength`` (default 0.5); ``cts`` passes a ready controller instead (a trained adapter).
        Without either it is plain inpainting. ``guidance_interval`` ``(low, high)``: classifier-free guidance only at
        steps whose noise level sigma is in ``(low, high]``, one conditional UNet pass at the others
        (``guidance_interval.py``; None: every step). ``deep_cache`` N > 1: the deep UNet blocks run at one step in N,
        their features reused in between (``feature_cache.py``). ``guidance_scale`` defaults to the family's. The
        image and mask are PIL images of the same size, a multiple of ``size_multiple``; other keywords go to the
        parent pipeline (``strength``, ``eta``, ``latents``...).
        """
        # 1. Check inputs
        height, width = self.check_region_inputs(
            prompt, image, mask_image, height, width, num_images_per_prompt, num_inference_steps, region_strength,
            kwargs,
        )
        self.check_family_inputs(negative_prompt, guidance_interval, deep_cache, kwargs)
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        prompts = RegionPrompts(center=center_prompt or "", surrounding=surrounding_prompt or "", total=prompt or "")
        cts = self.prepare_region_control(cts, prompts, region_strength)
        device = self._execution_device

        # 2. Encode the three prompts, each on its own
        embeddings = self.encode_for_call(prompts, negative_prompt, device, num_images_per_prompt, guidance_scale,
                                          kwargs)

        # 3. The parent pipeline's inputs: its own keywords, the Total prompt's embeddings
        call = dict(
            {**self.call_defaults, **kwargs},
            image=image,
            mask_image=mask_image,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            num_images_per_prompt=1,  # embeddings are already repeated num_images_per_prompt times
            generator=generator,
            callback_on_step_end=callback_on_step_end,
            output_type=output_type,
            **self.total_prompt_inputs(embeddings),
        )

        # 4. Denoise with diffusers' own loop, region prompts routed; the speed levers are hooks held for this call
        interval = guidance_interval if guidance_scale > 1.0 else None
        with self.speed_levers(interval, deep_cache) as (guided, cached):
            images, info = self.denoise_with_regions(call, prompts, cts, embeddings, mask_image, device)

        # 5. Output
        images = list(images) if output_type == "pil" else images
        if not return_dict:
            return images, info
        return OutpaintPipelineOutput(images=images, cts=info, guided_steps=guided, cached_steps=cached)

    def check_family_inputs(self, negative_prompt: str | None, guidance_interval: tuple[float, float] | None,
                            deep_cache: int, kwargs: dict) -> None:
        """What this family refuses besides ``check_region_inputs`` (SD: nothing more)."""

    def prepare_region_control(self, cts: CTSController | None, prompts: RegionPrompts,
                               region_strength: float | None) -> CTSController | None:
        """The C-T-S settings of this call: ``cts`` as given, else zero-shot when a region prompt or strength is."""
        if cts is None and (prompts.center or prompts.surrounding or region_strength is not None):
            cts = self.region_controller(region_strength=region_strength)
        return cts

    @contextmanager
    def speed_levers(
        self, guidance_interval: tuple[float, float] | None, deep_cache: int
    ) -> Iterator[tuple[dict[str, int], dict[str, int]]]:
        """The guidance interval and feature cache held on the UNet for the ``with`` body; yields their counts."""
        with feature_cache(self.unet, deep_cache) as cached, limited_guidance(
            self.unet, self.scheduler, guidance_interval
        ) as guided:
            yield guided, cached

    def denoise_with_regions(self, call: dict, prompts: RegionPrompts, cts: CTSController | None, embeddings: dict,
                             mask_image: Image.Image, device: torch.device) -> tuple[object, dict[str, object]]:
        """The parent pipeline's denoising loop, with the region embeddings and mask for C-T-S."""
        region_mask = self.prepare_region_mask(mask_image, device)
        return self.run_with_cts(call, prompts, cts, (embeddings["center"], embeddings["surrounding"]), region_mask)

    def run_with_cts(
        self,
        call: dict,
        prompts: RegionPrompts,
        cts: CTSController | None,
        region_embeddings: tuple[torch.Tensor, torch.Tensor],
        region_mask: torch.Tensor,
    ) -> tuple[object, dict[str, object]]:
        """Run the parent pipeline's ``__call__`` with ``call``, C-T-S on when it changes anything.

        ``region_embeddings`` are the Center and Surrounding embeddings in the UNet's batch order; they reach the
        C-T-S processors through ``cross_attention_kwargs``. Returns the images and how C-T-S ran (for the metadata).
        """
        # Zero-shot with both region texts equal to the total: the three branches are the same
        # attention, so C-T-S is exactly plain attention; skip its cost.
        same_texts = (prompts.center or prompts.total) == prompts.total and (
            prompts.surrounding or prompts.total
        ) == prompts.total
        parent_call = super().__call__  # the diffusers pipeline this mixin is combined with
        if cts is None:
            return parent_call(**call).images, {"enabled": False}
        info = {"enabled": True, "mode": cts.mode, "gates": [round(g, 4) for g in cts.gate_values()]}
        if cts.adapter is None and same_texts:
            info["note"] = "region prompts equal the total prompt: C-T-S equals plain attention and was skipped"
            return parent_call(**call).images, info
        center, surrounding = region_embeddings
        cts.install()
        state = CTSState(center=center, surrounding=surrounding, mask=region_mask)
        attention_kwargs = {**(call.get("cross_attention_kwargs") or {}), **cts.attention_kwargs(state)}
        return parent_call(**{**call, "cross_attention_kwargs": attention_kwargs}).images, info


class VipOutpaintPipeline(RegionPromptsMixin, StableDiffusionInpaintPipeline):
    """``StableDiffusionInpaintPipeline`` with Center / Total / Surrounding prompts.

    The denoising loop is diffusers' own; this class adds the region prompts: it encodes each of
    the three texts on its own (the official VIP inference ends up with three identical
    embeddings), pairs each with the negative prompt for classifier-free guidance, and passes them to the
    C-T-S processors of the UNet through ``cross_attention_kwargs`` (the processors are installed on the first
    region call and equal the UNet's own without that entry).
    """

    def encode_region_prompts(
        self,
        prompts: RegionPrompts,
        negative_prompt: str,
        device: torch.device,
        num_images: int,
        guidance: bool,
    ) -> dict[str, torch.Tensor]:
        """Encode Total, Center and Surrounding separately.

        Returns the total's positive and negative embeddings (diffusers' layout) and, for the
        region branches, embeddings already in the UNet's batch order: ``[negative; positive]``
        with guidance, ``[positive]`` without. An empty Center or Surrounding falls back to the
        Total text, so a plain ``prompt`` gives plain inpainting.
        """
        total_text = prompts.total
        encoded: dict[str, torch.Tensor] = {}
        cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

        def encode(text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
            if text not in cache:
                cache[text] = self.encode_prompt(text, device, num_images, guidance, negative_prompt)
            return cache[text]

        total, negative = encode(total_text)
        encoded["total"], encoded["negative"] = total, negative
        for key, text in (("center", prompts.center or total_text), ("surrounding", prompts.surrounding or total_text)):
            positive, negative_branch = encode(text)
            encoded[key] = torch.cat([negative_branch, positive]) if guidance else positive
        return encoded

    def encode_for_call(self, prompts: RegionPrompts, negative_prompt: str | None, device: torch.device,
                        num_images: int, guidance_scale: float, options: dict) -> dict[str, torch.Tensor]:
        """Step 2 of the call: the three prompts encoded (``options``: the parent pipeline's keywords of the call)."""
        return self.encode_region_prompts(prompts, negative_prompt or "", device, num_images, guidance_scale > 1.0)

    def total_prompt_inputs(self, embeddings: dict) -> dict[str, torch.Tensor]:
        """The parent pipeline's embedding keywords: the Total prompt's (and its negative)."""
        return {"prompt_embeds": embeddings["total"], "negative_prompt_embeds": embeddings["negative"]}
