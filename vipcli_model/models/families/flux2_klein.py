"""FLUX.2 [klein]: a step-distilled rectified-flow transformer (4B / 9B) with one Qwen3 text encoder, ~1 MP.

It is no fill model: diffusers inpaints with it by in-context reference (``Flux2KleinInpaintPipeline``: noisy
target tokens beside clean tokens of the source image, the known region pasted back every step), and C-T-S is a
joint-attention mask over ``[Total | Center | Surrounding | target | reference]`` tokens (``flux2_klein.py`` in
``pipelines/``). The distilled models run 4 steps without guidance; outpainting starts the new area from pure
noise (strength 1). Inputs over ~1 MP are worked on at vip's working resolution and pasted back at full size.
Not trained by vip.
"""

from __future__ import annotations

from vipcli_model.models.families import ModelFamily


def matches(index: dict, transformer: dict) -> bool:
    """A pipeline around a ``Flux2Transformer2DModel`` with one text encoder (FLUX.2 [klein]; FLUX.2 [dev] has
    a Mistral encoder and guidance embeddings)."""
    return (
        "transformer" in index
        and transformer.get("_class_name") == "Flux2Transformer2DModel"
        and not transformer.get("guidance_embeds", True)
    )


def pipeline_class() -> type:
    from vipcli_model.pipelines.flux2_klein import VipOutpaintFlux2KleinPipeline

    return VipOutpaintFlux2KleinPipeline


FAMILY = ModelFamily(
    name="flux2-klein",
    label="FLUX.2 [klein]",
    matches=matches,
    pipeline_class=pipeline_class,
    steps=4,
    guidance=1.0,  # step-distilled: guidance off, one transformer pass per step
    scheduler="flow-match",
    trainable=False,
    # region prompts ride the Qwen3 stream: 512 tokens, of which the chat template takes ~20
    prompt_tokens=480,
)
