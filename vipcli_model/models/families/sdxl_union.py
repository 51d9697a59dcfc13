"""Any SDXL checkpoint with ControlNet Union ProMax: a text-to-image SDXL UNet (4 input channels) guided by a
``ControlNetUnionModel`` that sees the photo on its canvas (``pipelines/sdxl_union.py``).

Chosen from the configs like every family: an SDXL UNet (``addition_embed_type="text_time"``) with 4 input channels
and a ``controlnet`` part. Region prompts route as on SDXL inpainting, in every ``attn2`` of the UNet; the pooled
embedding and time ids stay the Total's.

Fast preset: the route of the widely used outpainting demo (a Lightning SDXL checkpoint, 8 TCD steps): the
TCD-SDXL LoRA (``h1t/TCD-SDXL-LoRA``, arXiv 2402.19159) fused into the UNet, ``TCDScheduler``, 8 steps, guidance
off. A checkpoint that is already step-distilled (Lightning, Hyper, DMD2) needs no LoRA: run it with `scheduler`
tcd, `steps` 8, `guidance` 1 and no `fast`.

Pairing preset ``sdxl-union`` (`model`): that demo's pair, RealVisXL V5.0 Lightning with the ProMax, 8 TCD steps
at guidance 1.5 (the demo's scale; it guides the first 3 steps only, a guidance interval, which a ControlNet
cannot follow here: vip guides every step).
"""

from __future__ import annotations

from vipcli_model.models.families import FastPreset, ModelFamily, Pairing
from vipcli_model.models.families.sdxl import matches as sdxl_matches


def matches(index: dict, unet: dict) -> bool:
    """A text-to-image SDXL UNet paired with a ControlNet."""
    return sdxl_matches(index, unet) and "controlnet" in index and unet.get("in_channels", 4) == 4


def fits(unet: dict) -> bool:
    """The TCD LoRA's layers are SDXL's: both text encoders' widths (2048) in the cross-attention."""
    return unet.get("cross_attention_dim") == 2048


def pipeline_class() -> type:
    from vipcli_model.pipelines.sdxl_union import VipOutpaintXLUnionPipeline

    return VipOutpaintXLUnionPipeline


PAIRING = Pairing(preset="sdxl-union", controlnet="union", steps=8, guidance=1.5, scheduler="tcd")

FAMILY = ModelFamily(
    name="sdxl-union",
    label="SDXL + ControlNet Union",
    matches=matches,
    pipeline_class=pipeline_class,
    steps=25,
    guidance=5.0,  # the diffusers ControlNet Union pipelines' default
    scheduler="dpm++",
    trainable=False,
    fast=FastPreset(
        lora="h1t/TCD-SDXL-LoRA", steps=8, guidance=1.0, scheduler="tcd", fits=fits, made_for="SDXL (2048-wide)"
    ),
    tiny_vae="madebyollin/taesdxl",
    lora_family="sdxl",
)
