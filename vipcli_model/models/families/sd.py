"""Stable Diffusion 1.x / 2.x inpainting: one CLIP text encoder, 9-channel UNet, ~512 px (768 for some 2.x)."""

from __future__ import annotations

from vipcli_model.models.families import FastPreset, ModelFamily


def matches(index: dict, unet: dict) -> bool:
    """A UNet pipeline with one text encoder and no added (SDXL-style) conditioning."""
    return "unet" in index and "text_encoder_2" not in index and unet.get("addition_embed_type") is None


def pipeline_class() -> type:
    from vipcli_model.pipelines.sd import VipOutpaintPipeline

    return VipOutpaintPipeline


def is_sd1(unet: dict) -> bool:
    """Not an SD-2.x UNet: SD-2.x reads OpenCLIP ViT-H text (1024 wide), SD-1.x CLIP ViT-L (768)."""
    return unet.get("cross_attention_dim") != 1024


FAMILY = ModelFamily(
    name="sd",
    label="SD-1.x/2.x",
    matches=matches,
    pipeline_class=pipeline_class,
    steps=16,  # with the guidance interval below: 23 UNet passes instead of 50 (the toy world's scores held)
    guidance=7.5,
    scheduler="dpm++",
    trainable=True,
    # guidance only at noise levels sigma in (1.0, 5.42]: the upper bound is Kynkaanniemi et al.'s for SDXL (the
    # same noise schedule); the lower one trades the low-noise guided steps for speed (benchmarks/toyworld)
    guidance_interval=(1.0, 5.42),
    # LCM-LoRA's own recommendation and evaluation: 2-8 steps, 4 as the default (arXiv 2311.05556); its layers are
    # SD-1.5's, so an SD-2.x model (same family, wider text) needs a LoRA of its own
    fast=FastPreset(
        lora="latent-consistency/lcm-lora-sdv1-5",
        steps=4,
        guidance=1.0,
        scheduler="lcm",
        fits=is_sd1,
        made_for="SD-1.x",
    ),
    tiny_vae="madebyollin/taesd",
)
