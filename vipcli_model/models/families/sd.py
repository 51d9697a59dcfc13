"""Stable Diffusion 1.x / 2.x inpainting: one CLIP text encoder, 9-channel UNet, ~512 px (768 for some 2.x)."""

from __future__ import annotations

from vipcli_model.models.families import ModelFamily


def matches(index: dict, unet: dict) -> bool:
    """A UNet pipeline with one text encoder and no added (SDXL-style) conditioning."""
    return "unet" in index and "text_encoder_2" not in index and unet.get("addition_embed_type") is None


def pipeline_class() -> type:
    from vipcli_model.pipelines.sd import VipOutpaintPipeline

    return VipOutpaintPipeline


FAMILY = ModelFamily(
    name="sd",
    label="SD-1.x/2.x",
    matches=matches,
    pipeline_class=pipeline_class,
    resolution=512,
    steps=16,  # with the guidance interval below: 23 UNet passes instead of 50 (issue 19; toy world held)
    guidance=7.5,
    scheduler="dpm++",
    fast_lora="latent-consistency/lcm-lora-sdv1-5",
    trainable=True,
    # guidance only at noise levels sigma in (1.0, 5.42]: the upper bound is Kynkaanniemi et al.'s for SDXL (the
    # same noise schedule); the lower one trades the low-noise guided steps for speed (benchmarks/toyworld)
    guidance_interval=(1.0, 5.42),
)
