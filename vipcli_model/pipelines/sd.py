"""The outpainting pipeline: SD inpainting with C-T-S region prompts, over diffusers components."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import StableDiffusionInpaintPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

from vipcli_model.pipelines.regions import RegionPromptsMixin, region_call


@dataclass
class OutpaintPipelineOutput(StableDiffusionPipelineOutput):
    """The parent's output (``images``, ``nsfw_content_detected``; indexable), and how C-T-S ran."""

    cts: dict[str, object] = field(default_factory=dict)  # how C-T-S ran: enabled, mode, gates
    guided_steps: dict[str, int] = field(default_factory=dict)  # with a guidance interval: guided / unguided steps
    cached_steps: dict[str, int] = field(default_factory=dict)  # with ``deep_cache``: full / cached UNet passes


class VipOutpaintPipeline(RegionPromptsMixin, StableDiffusionInpaintPipeline):
    """``StableDiffusionInpaintPipeline`` with Center / Total / Surrounding prompts.

    Called like the parent (same parameters and defaults, same output class with fields added); the region keywords
    come on top. The denoising loop is diffusers' own: the Center and Surrounding prompts are encoded each on its
    own, each paired with the negative prompt for classifier-free guidance, and reach the C-T-S processors of the
    UNet through ``cross_attention_kwargs`` (the processors are installed on the first region call and equal the
    UNet's own without that entry).
    """

    output_class = OutpaintPipelineOutput
    __call__ = region_call(StableDiffusionInpaintPipeline.__call__)

    def encode_total(self, call: dict, device: torch.device, guidance: bool) -> tuple[dict, torch.Tensor | None]:
        """The Total prompt encoded as the parent would (one row per prompt): the parent's embedding keywords, and
        the negative embeddings the region branches pair with."""
        positive, negative = self.encode_prompt(
            call["prompt"],
            device,
            1,
            guidance,
            call["negative_prompt"],
            prompt_embeds=call["prompt_embeds"],
            negative_prompt_embeds=call["negative_prompt_embeds"],
            lora_scale=(call["cross_attention_kwargs"] or {}).get("scale"),
            clip_skip=call["clip_skip"],
        )
        texts = {"prompt": None, "negative_prompt": None}
        return {**texts, "prompt_embeds": positive, "negative_prompt_embeds": negative}, negative

    def encode_region_texts(self, texts: list[str], call: dict, device: torch.device) -> torch.Tensor:
        """Token embeddings of the region texts, one row per text."""
        return self.encode_prompt(texts, device, 1, False, clip_skip=call["clip_skip"])[0]
