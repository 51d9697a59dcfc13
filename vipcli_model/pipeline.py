"""The outpainting pipeline: SD inpainting with C-T-S region prompts, over diffusers components."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionInpaintPipeline
from PIL import Image

from .cts import CTSController, CTSState
from .errors import OptionError
from .prompts import RegionPrompts

logger = logging.getLogger(__name__)

# name -> (diffusers scheduler class, extra config)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpm++-karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}

StepCallback = Callable[[int, int], None]


@dataclass
class OutpaintPipelineOutput:
    """Images at working resolution, and how C-T-S ran."""

    images: list[Image.Image]
    cts: dict[str, object] = field(default_factory=dict)


class VipOutpaintPipeline(StableDiffusionInpaintPipeline):
    """``StableDiffusionInpaintPipeline`` with Center / Total / Surrounding prompts.

    The denoising loop is diffusers' own; this class adds the region prompts: it encodes each of
    the three texts on its own (the official VIP inference ends up with three identical
    embeddings), pairs each with the negative prompt for classifier-free guidance, and installs
    C-T-S processors on the UNet for the duration of one call only.
    """

    def set_scheduler(self, name: str) -> None:
        """Swap the scheduler for one of ``SCHEDULERS``, keeping the model's noise schedule."""
        import diffusers

        if name not in SCHEDULERS:
            raise OptionError(f"--scheduler '{name}' is not one of: {', '.join(SCHEDULERS)}")
        class_name, extra = SCHEDULERS[name]
        scheduler_class = getattr(diffusers, class_name)
        self.scheduler = scheduler_class.from_config(self.scheduler.config, **extra)

    @property
    def working_resolution(self) -> int:
        """The model's native resolution in pixels (512 for SD-1.5)."""
        return int(self.unet.config.sample_size) * int(self.vae_scale_factor)

    def check_region_inputs(
        self, image: Image.Image, mask_image: Image.Image, height: int, width: int, num_images: int, steps: int
    ) -> None:
        multiple = self.vae_scale_factor
        if height % multiple or width % multiple:
            raise OptionError(f"height and width must be multiples of {multiple}, got {width}x{height}")
        if image.size != (width, height) or mask_image.size != (width, height):
            raise OptionError(f"image {image.size} and mask {mask_image.size} must both be {width}x{height}")
        if num_images < 1:
            raise OptionError(f"--num-images must be at least 1, got {num_images}")
        if steps < 1:
            raise OptionError(f"--steps must be at least 1, got {steps}")

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
        Total text, so a plain ``--prompt`` gives plain inpainting.
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

    def prepare_region_mask(self, mask_image: Image.Image, device: torch.device) -> torch.Tensor:
        """The mask (1 = generate) area-averaged to latent resolution: soft on the seam."""
        array = np.asarray(mask_image.convert("L"), dtype=np.float32) / 255.0
        mask = torch.from_numpy(array)[None, None]
        latent_size = (mask.shape[-2] // self.vae_scale_factor, mask.shape[-1] // self.vae_scale_factor)
        return F.adaptive_avg_pool2d(mask, latent_size).to(device)

    @torch.no_grad()
    def __call__(  # type: ignore[override]
        self,
        image: Image.Image,
        mask_image: Image.Image,
        prompts: RegionPrompts,
        negative_prompt: str = "",
        *,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        num_images: int = 1,
        generator: torch.Generator | None = None,
        cts: CTSController | None = None,
        step_callback: StepCallback | None = None,
    ) -> OutpaintPipelineOutput:
        """Outpaint ``image`` where ``mask_image`` is white, at the image's size (the working resolution).

        ``cts=None`` runs plain inpainting with the Total prompt.
        """
        width, height = image.size
        # 1. Check inputs
        self.check_region_inputs(image, mask_image, height, width, num_images, num_inference_steps)
        device = self._execution_device
        guidance = guidance_scale > 1.0

        # 2. Encode the three prompts, each on its own
        embeddings = self.encode_region_prompts(prompts, negative_prompt, device, num_images, guidance)

        # 3. The region mask at latent resolution, for routing tokens to Center / Surrounding
        region_mask = self.prepare_region_mask(mask_image, device)

        # 4. Progress reported through a callback, never printed
        def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            if step_callback is not None:
                step_callback(step + 1, num_inference_steps)
            return {}

        # 5. Denoise with C-T-S installed for this call only
        call = dict(
            image=image,
            mask_image=mask_image,
            prompt_embeds=embeddings["total"],
            negative_prompt_embeds=embeddings["negative"],
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            num_images_per_prompt=1,  # embeddings are already repeated num_images times
            generator=generator,
            callback_on_step_end=on_step_end,
            output_type="pil",
        )
        # Zero-shot with both region texts equal to the total: the three branches are the same
        # attention, so C-T-S is exactly plain attention; skip its cost.
        same_texts = (prompts.center or prompts.total) == prompts.total and (
            prompts.surrounding or prompts.total
        ) == prompts.total
        if cts is None:
            images = super().__call__(**call).images
            info: dict[str, object] = {"enabled": False}
        elif cts.adapter is None and same_texts:
            images = super().__call__(**call).images
            info = {"enabled": True, "mode": cts.mode, "gates": [round(g, 4) for g in cts.gate_values()],
                    "note": "region prompts equal the total prompt: C-T-S equals plain attention and was skipped"}
        else:
            state = CTSState(center=embeddings["center"], surrounding=embeddings["surrounding"], mask=region_mask)
            with cts.active(state):
                images = super().__call__(**call).images
            info = {"enabled": True, "mode": cts.mode, "gates": [round(g, 4) for g in cts.gate_values()]}
        return OutpaintPipelineOutput(images=list(images), cts=info)
