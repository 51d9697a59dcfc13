"""The SDXL outpainting pipeline: ``StableDiffusionXLInpaintPipeline`` with C-T-S region prompts (see ``sdxl.py``)."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionXLInpaintPipeline

from vipcli_model.pipelines.sd import RegionPromptsMixin
from vipcli_model.prompts import RegionPrompts

# Embedding inputs of the parent pipeline that this one computes itself from the texts.
_EMBEDDING_KEYWORDS = {"pooled_prompt_embeds", "negative_pooled_prompt_embeds", "prompt_2", "negative_prompt_2"}


class VipOutpaintXLPipeline(RegionPromptsMixin, StableDiffusionXLInpaintPipeline):
    """``StableDiffusionXLInpaintPipeline`` with Center / Total / Surrounding prompts.

    Same call as ``VipOutpaintPipeline`` (SD-1.x/2.x): ``prompt`` is the Total prompt, ``center_prompt``
    and ``surrounding_prompt`` the region texts (empty: the Total), ``region_strength`` the zero-shot gate,
    ``cts`` a ready controller. With no negative prompt SDXL's own default applies (zero embeddings when the
    model's ``force_zeros_for_empty_prompt`` is set), so a plain call equals the parent pipeline's.
    ``strength`` defaults to 1.0 as in the SD-1.x/2.x pipeline (diffusers' SDXL default, 0.9999, runs one step
    fewer than asked: none at all for ``num_inference_steps=1``).
    """

    call_defaults = {"strength": 1.0}

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
        regions = (("center", prompts.center or prompts.total), ("surrounding", prompts.surrounding or prompts.total))
        for key, text in regions:
            positive, negative_branch, _, _ = encode(text)
            encoded[key] = torch.cat([negative_branch, positive]) if guidance else positive
        return encoded

    def check_family_inputs(self, negative_prompt: str | None, guidance_interval: tuple[float, float] | None,
                            deep_cache: int, kwargs: dict) -> None:
        given = sorted(set(kwargs) & _EMBEDDING_KEYWORDS)
        if given:
            raise ValueError(f"{', '.join(f'`{name}`' for name in given)} not supported: pass the prompts as text")

    def encode_for_call(self, prompts: RegionPrompts, negative_prompt: str | None, device: torch.device,
                        num_images: int, guidance_scale: float, options: dict) -> dict[str, torch.Tensor | None]:
        """Step 2 of the call: both text encoders; with no negative prompt, SDXL's own default applies."""
        return self.encode_region_prompts(prompts, negative_prompt or None, device, num_images, guidance_scale > 1.0)

    def total_prompt_inputs(self, embeddings: dict) -> dict[str, torch.Tensor | None]:
        """The Total prompt's token and pooled embeddings, and their negatives (pooled: global, the Total's)."""
        return {
            "prompt_embeds": embeddings["total"],
            "negative_prompt_embeds": embeddings["negative"],
            "pooled_prompt_embeds": embeddings["pooled"],
            "negative_pooled_prompt_embeds": embeddings["negative_pooled"],
        }
