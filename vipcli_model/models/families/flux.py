"""FLUX.1 Fill: a rectified-flow transformer whose text and image tokens share joint attention, ~1024 px.

There is no cross-attention to decouple, so C-T-S becomes an attention mask (``flux_pipeline.py``): the Total,
Center and Surrounding T5 embeddings are concatenated into one text sequence; image tokens of the known center
attend to the Center and Total text tokens, image tokens to generate to the Surrounding and Total ones, and
image-to-image attention stays whole. The CLIP pooled embedding is a global modulation: the Total prompt's.
FLUX Fill is guidance-distilled (one transformer pass per step, ``guidance`` is an input of the model, 30 by
default) and is not trained by vip.
"""

from __future__ import annotations

from vipcli_model.models.families import ModelFamily


def matches(index: dict, transformer: dict) -> bool:
    """A pipeline around a ``FluxTransformer2DModel``."""
    return "transformer" in index and transformer.get("_class_name") == "FluxTransformer2DModel"


def pipeline_class() -> type:
    from vipcli_model.pipelines.flux import VipOutpaintFluxFillPipeline

    return VipOutpaintFluxFillPipeline


FAMILY = ModelFamily(
    name="flux-fill",
    label="FLUX Fill",
    matches=matches,
    pipeline_class=pipeline_class,
    steps=28,
    guidance=30.0,
    scheduler="flow-match",
    trainable=False,
    # region prompts ride the T5 stream (512 tokens); CLIP gives only the pooled Total, cut at its 77
    prompt_tokenizer="tokenizer_2",
    prompt_tokens=512,
)
