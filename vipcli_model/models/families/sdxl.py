"""Stable Diffusion XL inpainting: two CLIP text encoders, 9-channel UNet with added time / text conditioning, ~1024 px.

Region prompts on SDXL: each of the Total, Center and Surrounding texts is encoded on its own by both text
encoders, whose penultimate hidden states are concatenated as SDXL does (77 x 2048 for the real model). These
per-token embeddings are what C-T-S routes, in every ``attn2`` of the UNet, exactly as on SD-1.x (the processor in
``cts.py`` is shape-agnostic: any ``cross_attention_dim``, any token grid). The pooled embedding and the added
time ids feed the UNet's global time embedding, which no token position can route: they stay global and come from
the Total prompt.

Fast preset: LCM-LoRA SDXL (``latent-consistency/lcm-lora-sdxl``, arXiv 2311.05556) fused into the UNet, LCM
scheduler, 6 steps, guidance off: the same recipe and scheduler as SD-1.5's preset. TCD-SDXL-LoRA
(``h1t/TCD-SDXL-LoRA``, arXiv 2402.19159) has the same shape and per-step cost (a fused LoRA costs nothing per
step) and reports better detail than LCM at 4-8 steps in its own paper, but its sampler (``TCDScheduler`` with its
gamma) is one more scheduler to support; it runs through ``fast_lora='h1t/TCD-SDXL-LoRA'`` with the LCM scheduler.
"""

from __future__ import annotations

from vipcli_model.models.families import FastPreset, ModelFamily


def matches(index: dict, unet: dict) -> bool:
    """A UNet with SDXL's added conditioning (pooled text embedding + time ids)."""
    return "unet" in index and unet.get("addition_embed_type") == "text_time"


def pipeline_class() -> type:
    from vipcli_model.pipelines.sdxl import VipOutpaintXLPipeline

    return VipOutpaintXLPipeline


FAMILY = ModelFamily(
    name="sdxl",
    label="SDXL",
    matches=matches,
    pipeline_class=pipeline_class,
    steps=25,
    guidance=7.5,
    scheduler="dpm++",
    trainable=True,  # in adapter mode only
    # the LoRA's card: 2-8 steps, 4 as on SD-1.5
    fast=FastPreset(lora="latent-consistency/lcm-lora-sdxl", steps=4, guidance=1.0, scheduler="lcm"),
    tiny_vae="madebyollin/taesdxl",
)
