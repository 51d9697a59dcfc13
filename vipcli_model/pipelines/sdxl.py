"""The SDXL outpainting pipeline: ``StableDiffusionXLInpaintPipeline`` with C-T-S region prompts."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import StableDiffusionXLInpaintPipeline
from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput

from vipcli_model.pipelines.regions import RegionPromptsMixin, region_call


@dataclass
class OutpaintXLPipelineOutput(StableDiffusionXLPipelineOutput):
    """The parent's output (``images``; indexable), and how C-T-S ran."""

    cts: dict[str, object] = field(default_factory=dict)  # how C-T-S ran: enabled, mode, gates
    guided_steps: dict[str, int] = field(default_factory=dict)  # with a guidance interval: guided / unguided steps
    cached_steps: dict[str, int] = field(default_factory=dict)  # with ``deep_cache``: full / cached UNet passes


class VipOutpaintXLPipeline(RegionPromptsMixin, StableDiffusionXLInpaintPipeline):
    """``StableDiffusionXLInpaintPipeline`` with Center / Total / Surrounding prompts.

    Called like the parent, with its defaults (``strength`` 0.9999: one step fewer than asked; vip's outpainter
    passes 1.0), and the same region keywords as ``VipOutpaintPipeline``. ``center_prompt_embeds`` /
    ``surrounding_prompt_embeds`` are token embeddings like ``prompt_embeds`` (both encoders' widths concatenated);
    the pooled embedding is global and stays the Total's.
    """

    output_class = OutpaintXLPipelineOutput
    __call__ = region_call(StableDiffusionXLInpaintPipeline.__call__)

    def encode_total(self, call: dict, device: torch.device, guidance: bool) -> tuple[dict, torch.Tensor | None]:
        """The Total prompt with both encoders as the parent would (one row per prompt): the parent's embedding
        keywords, and the negative token embeddings the region branches pair with."""
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        encoded = self.encode_prompt(
            prompt=call["prompt"],
            prompt_2=call["prompt_2"],
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=guidance,
            negative_prompt=call["negative_prompt"],
            negative_prompt_2=call["negative_prompt_2"],
            **{name: call[name] for name in names},
            lora_scale=(call["cross_attention_kwargs"] or {}).get("scale"),
            clip_skip=call["clip_skip"],
        )
        texts = dict.fromkeys(("prompt", "prompt_2", "negative_prompt", "negative_prompt_2"))
        return {**texts, **dict(zip(names, encoded))}, encoded[1]

    def encode_region_texts(self, texts: list[str], call: dict, device: torch.device) -> torch.Tensor:
        """Token embeddings of the region texts with both encoders, one row per text."""
        return self.encode_prompt(
            prompt=texts,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            clip_skip=call["clip_skip"],
        )[0]
