"""The SDXL outpainting pipeline: ``StableDiffusionXLInpaintPipeline`` with C-T-S region prompts (see ``sdxl.py``)."""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import StableDiffusionXLInpaintPipeline
from PIL import Image

from vipcli_model.cts.attention import CTSController
from vipcli_model.speed.feature_cache import feature_cache
from vipcli_model.speed.guidance_interval import limited_guidance
from vipcli_model.pipelines.sd import OutpaintPipelineOutput, RegionPromptsMixin
from vipcli_model.prompts import RegionPrompts

# Embedding inputs of the parent pipeline that this one computes itself from the texts.
_EMBEDDING_KEYWORDS = {"pooled_prompt_embeds", "negative_pooled_prompt_embeds", "prompt_2", "negative_prompt_2"}


class VipOutpaintXLPipeline(RegionPromptsMixin, StableDiffusionXLInpaintPipeline):
    """``StableDiffusionXLInpaintPipeline`` with Center / Total / Surrounding prompts.

    Same contract as ``VipOutpaintPipeline`` (SD-1.x/2.x): ``prompt`` is the Total prompt, ``center_prompt``
    and ``surrounding_prompt`` the region texts (empty: the Total), ``region_strength`` the zero-shot gate,
    ``cts`` a ready controller. With no negative prompt SDXL's own default applies (zero embeddings when the
    model's ``force_zeros_for_empty_prompt`` is set), so a plain call equals the parent pipeline's.
    """

    def encode_region_prompts(
        self,
        prompts: RegionPrompts,
        negative_prompt: str | None,
        device: torch.device,
        num_images: int,
        guidance: bool,
    ) -> dict[str, torch.Tensor | None]:
        """Encode Total, Center and Surrounding separately with both text encoders.

        Returns the Total's token embeddings, negative, pooled and negative pooled embeddings (the parent
        pipeline's layout) and, for the region branches, token embeddings in the UNet's batch order
        (``[negative; positive]`` with guidance). Only the Total's pooled embedding is used: it is global.
        """
        cache: dict[str, tuple] = {}

        def encode(text: str) -> tuple:
            if text not in cache:
                cache[text] = self.encode_prompt(
                    prompt=text,
                    device=device,
                    num_images_per_prompt=num_images,
                    do_classifier_free_guidance=guidance,
                    negative_prompt=negative_prompt,
                )
            return cache[text]

        total, negative, pooled, negative_pooled = encode(prompts.total)
        encoded: dict[str, torch.Tensor | None] = {
            "total": total, "negative": negative, "pooled": pooled, "negative_pooled": negative_pooled,
        }
        for key, text in (("center", prompts.center or prompts.total), ("surrounding", prompts.surrounding or prompts.total)):
            positive, negative_branch, _, _ = encode(text)
            encoded[key] = torch.cat([negative_branch, positive]) if guidance else positive
        return encoded

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
        guidance_scale: float = 7.5,
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
        """Inpaint ``image`` where ``mask_image`` is white, as ``StableDiffusionXLInpaintPipeline`` does, with region prompts.

        Other keywords go to the parent pipeline (``strength``, ``eta``, ``latents``, ``aesthetic_score``...).
        ``strength`` defaults to 1.0 as in the SD-1.x/2.x pipeline (diffusers' SDXL default, 0.9999, runs one step
        fewer than asked: none at all for ``num_inference_steps=1``).
        """
        # 1. Check inputs
        height, width = self.check_region_inputs(
            prompt, image, mask_image, height, width, num_images_per_prompt, num_inference_steps, region_strength, kwargs
        )
        given = sorted(set(kwargs) & _EMBEDDING_KEYWORDS)
        if given:
            raise ValueError(f"{', '.join(f'`{name}`' for name in given)} not supported: pass the prompts as text")
        device = self._execution_device
        guidance = guidance_scale > 1.0
        prompts = RegionPrompts(center=center_prompt or "", surrounding=surrounding_prompt or "", total=prompt or "")
        if cts is None and (center_prompt or surrounding_prompt or region_strength is not None):
            cts = CTSController(self.unet, region_strength=region_strength)

        # 2. Encode the three prompts, each on its own, with both text encoders; pooled: the Total's
        embeddings = self.encode_region_prompts(prompts, negative_prompt or None, device, num_images_per_prompt, guidance)

        # 3. The region mask at latent resolution, for routing tokens to Center / Surrounding
        region_mask = self.prepare_region_mask(mask_image, device)

        # 4. Denoise with diffusers' own loop; the levers are diffusers hooks held for this call only
        call = dict(
            {"strength": 1.0, **kwargs},
            image=image,
            mask_image=mask_image,
            prompt_embeds=embeddings["total"],
            negative_prompt_embeds=embeddings["negative"],
            pooled_prompt_embeds=embeddings["pooled"],
            negative_pooled_prompt_embeds=embeddings["negative_pooled"],
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            num_images_per_prompt=1,  # embeddings are already repeated num_images_per_prompt times
            generator=generator,
            callback_on_step_end=callback_on_step_end,
            output_type=output_type,
        )
        with feature_cache(self.unet, deep_cache) as cached, limited_guidance(
            self.unet, self.scheduler, guidance_interval if guidance else None
        ) as counts:
            images, info = self.run_with_cts(
                call, prompts, cts, (embeddings["center"], embeddings["surrounding"]), region_mask
            )
        images = list(images) if output_type == "pil" else images
        if not return_dict:
            return images, info
        return OutpaintPipelineOutput(images=images, cts=info, guided_steps=counts, cached_steps=cached)
