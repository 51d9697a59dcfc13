"""The FLUX Fill outpainting pipeline: ``FluxFillPipeline`` with C-T-S as a joint-attention mask (see ``flux.py``).

FLUX has no cross-attention: text and image tokens attend to each other in one joint attention (19 double-stream
and 38 single-stream blocks, text tokens first). The three prompts are encoded separately by T5 and concatenated
into one text sequence ``[Total | Center | Surrounding]`` (``text_ids`` are zeros, so the blocks share positions
without clashing); one additive mask, passed to every block through ``joint_attention_kwargs``, routes them:

- each text block attends to itself and to every image token (so each stream is what a plain run of its prompt
  would compute from the image);
- every image token attends to every image token (image-to-image attention stays whole, as outpainting needs);
- the Total text keeps its 512 tokens (a plain run's); the Center and Surrounding texts get as many tokens as the
  longer of them needs, rounded up to 64 (``region_text_length``), not 512 of padding each: the sequence, and so
  the cost of every block, grows by 2 x 64 tokens for short prompts instead of 2 x 512;
- an image token with generate-weight ``m`` (1 = to generate, 0 = known; soft on the seam) attends to the Total
  text with weight ``1 - g``, to the Center text with ``g * (1 - m)`` and to the Surrounding text with ``g * m``:
  the weights are added to the attention logits as logarithms, so they scale each text's share of the attention.
  ``g`` is the region strength. At ``g = 0`` only the Total text is seen: exactly plain FLUX Fill.

The mask needs an attention backend that accepts one (diffusers' native SDPA does; flash backends do not): the
pipeline checks this and says so. The CLIP pooled embedding is a global modulation and comes from the Total prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import FluxFillPipeline
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

from vipcli_model.cts.attention import DEFAULT_REGION_STRENGTH
from vipcli_model.errors import ModelLoadError, OptionError
from vipcli_model.pipelines.regions import RegionInputs, RegionPromptsMixin, region_call
from vipcli_model.speed.guidance_interval import covers_every_step

# The Center and Surrounding T5 streams are as long as their longer text, rounded up to this many tokens.
REGION_TEXT_STEP = 64

# Attention backends that take an attention mask (diffusers' AttentionBackendName values).
MASK_BACKENDS = ("native", "_native_math", "_native_efficient", "_native_cudnn", "_native_npu", "_native_xla")


@dataclass
class JointRegionControl:
    """C-T-S for joint attention, for one call: the region strength is the only setting (no trainable adapter)."""

    region_strength: float = DEFAULT_REGION_STRENGTH
    mode: str = "joint-mask"
    adapter: None = None

    def gate_values(self) -> list[float]:
        return [self.region_strength]


def check_mask_backend(transformer: torch.nn.Module) -> None:
    """Refuse attention backends that ignore or reject a mask, naming the one in use (FLUX.1 and FLUX.2)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = str(getattr(_AttentionBackendRegistry.get_active_backend()[0], "value", ""))
    chosen = {
        str(getattr(getattr(processor, "_attention_backend", None), "value", "") or active)
        for processor in transformer.attn_processors.values()
    }
    unusable = sorted(name for name in chosen if name not in MASK_BACKENDS)
    if unusable:
        raise ModelLoadError(
            f"region prompts on FLUX need an attention backend that takes a mask; '{unusable[0]}' does not: "
            "use the native backend (unset DIFFUSERS_ATTN_BACKEND) or run without region prompts (`cts` off)"
        )


def check_transformer_inputs(options: dict, label: str, no_negative: str) -> None:
    """What a guidance-free transformer family (``label``) cannot take, refused by name; ``no_negative``: why it
    has no negative prompt (and what to do), after the family's name."""
    if options["negative_prompt"]:
        raise ValueError(f"`negative_prompt` is not supported by {label} {no_negative}")
    if not covers_every_step(options["guidance_interval"]):
        raise ValueError(f"`guidance_interval`: {label} runs without classifier-free guidance")
    if options["deep_cache"] > 1:
        raise ValueError(f"`deep_cache`: feature caching needs a UNet, and {label} has a transformer")
    given = [options[f"{region}_prompt_embeds"] for region in ("center", "surrounding")]
    if all(tensor is not None for tensor in given) and given[0].shape[1] != given[1].shape[1]:
        raise ValueError(
            f"`center_prompt_embeds` ({given[0].shape[1]} tokens) and `surrounding_prompt_embeds` "
            f"({given[1].shape[1]} tokens) must have as many tokens: pad the shorter"
        )


def joint_region_control(
    pipe: Any, cts: JointRegionControl | None, regions: RegionInputs, region_strength: float | None
) -> JointRegionControl | None:
    """``cts`` as given (at ``region_strength`` when one is given), else one when a region prompt is given."""
    if region_strength is not None or (cts is None and regions.given):
        return pipe.region_controller(region_strength=region_strength)
    return cts


def joint_attention_bias(
    region: torch.Tensor,
    text_length: int,
    strength: float,
    dtype: torch.dtype,
    device: torch.device,
    region_length: int | None = None,
) -> torch.Tensor:
    """The additive mask (1, 1, S, S) over ``[Total | Center | Surrounding | image]`` tokens (module docstring).

    ``region``: (N,) generate-weight of each image token in packed (row-major) order, in [0, 1].
    ``text_length``: the Total's tokens; ``region_length``: the Center's and the Surrounding's (default: the same).
    """
    region = region.to(device=device, dtype=torch.float32).clamp(0.0, 1.0)
    region_length = text_length if region_length is None else region_length
    count = region.shape[0]
    ends = [text_length, text_length + region_length, text_length + 2 * region_length]
    size = ends[-1] + count
    bias = torch.full((size, size), float("-inf"), device=device)
    image = slice(ends[-1], size)
    blocks = [slice(start, end) for start, end in zip([0, *ends[:2]], ends)]
    for block in blocks:  # each text block: itself and the image
        bias[block, block] = 0.0
        bias[block, image] = 0.0
    bias[image, image] = 0.0
    total, center, surrounding = blocks
    weights = torch.tensor(1.0 - strength, device=device).log()
    bias[image, total] = weights
    bias[image, center] = (strength * (1.0 - region)).log()[:, None]
    bias[image, surrounding] = (strength * region).log()[:, None]
    return bias.to(dtype)[None, None]


@dataclass
class OutpaintFluxPipelineOutput(FluxPipelineOutput):
    """The parent's output (``images``; indexable), and how C-T-S ran."""

    cts: dict[str, object] = field(default_factory=dict)  # how C-T-S ran: enabled, mode, gates, region text tokens
    guided_steps: dict[str, int] = field(default_factory=dict)  # always empty: FLUX Fill has no guidance interval
    cached_steps: dict[str, int] = field(default_factory=dict)  # always empty: FLUX Fill has no feature cache


def flux_region_keywords(
    *,
    center_prompt: str | list[str] | None = None,
    surrounding_prompt: str | list[str] | None = None,
    center_prompt_embeds: torch.Tensor | None = None,
    surrounding_prompt_embeds: torch.Tensor | None = None,
    region_strength: float | None = None,
    cts: Any = None,
    guidance_interval: tuple[float, float] | None = None,
    deep_cache: int = 0,
    negative_prompt: str | None = None,
) -> None:
    """The region keywords (T5 embeddings for ``*_prompt_embeds``); ``negative_prompt`` only to refuse it by name:
    the parent has none, and callers written for the UNet families pass one."""


class VipOutpaintFluxFillPipeline(RegionPromptsMixin, FluxFillPipeline):
    """``FluxFillPipeline`` with Center / Total / Surrounding prompts routed by a joint-attention mask.

    Called like the parent (same parameters and defaults, same output class with fields added); the region keywords
    come on top, ``center_prompt_embeds`` / ``surrounding_prompt_embeds`` being T5 embeddings like
    ``prompt_embeds`` (the pooled CLIP embedding is global and stays the Total's). FLUX Fill takes no negative
    prompt: it is guidance-distilled, and ``guidance_scale`` is an input of the model (30 by default), not CFG.
    """

    output_class = OutpaintFluxPipelineOutput
    __call__ = region_call(FluxFillPipeline.__call__, flux_region_keywords)

    @property
    def size_multiple(self) -> int:
        """Latents are packed 2x2 into tokens: sizes are multiples of twice the VAE's downsampling."""
        return int(self.vae_scale_factor) * 2

    @property
    def working_resolution(self) -> int:
        return int(self.default_sample_size) * int(self.vae_scale_factor)

    def set_scheduler(self, name: str) -> None:
        """FLUX keeps its own flow-matching scheduler; ``flow-match`` is the only choice."""
        if name != "flow-match":
            raise OptionError(f"`scheduler` '{name}' does not run FLUX Fill (a rectified-flow model): use flow-match")

    def region_controller(self, adapter=None, region_strength: float | None = None) -> JointRegionControl:
        if adapter is not None:
            raise OptionError(
                "`adapter`: C-T-S adapters are trained for UNet models (SD, SDXL); FLUX Fill runs zero-shot"
            )
        strength = DEFAULT_REGION_STRENGTH if region_strength is None else region_strength
        return JointRegionControl(region_strength=strength)

    def check_attention_backend(self) -> None:
        """Refuse attention backends that ignore or reject a mask, naming the one in use."""
        check_mask_backend(self.transformer)

    def region_text_length(self, texts: list[str], max_length: int) -> int:
        """T5 tokens of the Center and Surrounding streams: their longest text's, rounded up to REGION_TEXT_STEP.

        The Total keeps ``max_sequence_length`` (512: what a plain FLUX Fill run sees, so strength 0 is exact); the
        region streams need no 512 tokens of padding each, and every token saved is one the joint attention and the
        text MLPs of every block skip (``benchmarks/bench_families.py``). Nothing is truncated.
        """
        ids = self.tokenizer_2(texts, padding=False, truncation=True, max_length=max_length).input_ids
        longest = max(len(tokens) for tokens in ids)
        return min(max_length, -(-longest // REGION_TEXT_STEP) * REGION_TEXT_STEP)

    def check_family_inputs(self, call: dict, options: dict) -> None:
        check_transformer_inputs(options, "FLUX Fill", "(guidance-distilled: no negative branch)")

    def prepare_region_control(
        self, cts: JointRegionControl | None, regions: RegionInputs, region_strength: float | None
    ) -> JointRegionControl | None:
        return joint_region_control(self, cts, regions, region_strength)

    @contextmanager
    def speed_levers(
        self, guidance_interval: tuple[float, float] | None, deep_cache: int
    ) -> Iterator[tuple[dict[str, int], dict[str, int]]]:
        """None for FLUX Fill (``check_family_inputs`` refuses them): no counts."""
        yield {}, {}

    def prepare_token_regions(self, call: dict, count: int) -> torch.Tensor:
        """The generate-weight of each packed image token (row-major), area-averaged: (1 or ``count``, N)."""
        if call["mask_image"] is None:
            raise ValueError("region prompts need `mask_image` (where to generate): give one")
        multiple = self.size_multiple
        height = call["height"] or self.working_resolution
        width = call["width"] or self.working_resolution
        mask = self.region_mask_processor(multiple).preprocess(call["mask_image"], height=height, width=width)
        regions = F.adaptive_avg_pool2d(mask.float(), (height // multiple, width // multiple)).flatten(1)
        return regions.repeat(count // regions.shape[0], 1) if regions.shape[0] > 1 else regions

    def denoise_with_regions(
        self, call: dict, regions: RegionInputs, cts: JointRegionControl | None
    ) -> tuple[object, dict[str, object]]:
        """The parent's call, plain when C-T-S changes nothing (no region prompt, strength 0, or region texts = Total);
        else the three texts in one sequence, routed by the joint-attention mask."""
        strength = cts.region_strength if cts is not None else 0.0
        if cts is None or strength == 0.0 or regions.same_as_total:
            info: dict[str, object] = {"enabled": cts is not None}
            if cts is not None:
                info.update(mode=cts.mode, gates=[strength], note="C-T-S equals plain attention here and was skipped")
            return self.parent_call(call), info
        self.check_attention_backend()
        device = self._execution_device
        max_length = call["max_sequence_length"]
        total, pooled, _ = self.encode_prompt(
            prompt=call["prompt"],
            prompt_2=call["prompt_2"],
            device=device,
            num_images_per_prompt=1,
            prompt_embeds=call["prompt_embeds"],
            pooled_prompt_embeds=call["pooled_prompt_embeds"],
            max_sequence_length=max_length,
            lora_scale=(call["joint_attention_kwargs"] or {}).get("scale"),
        )
        given = [tensor for tensor in (regions.center_embeds, regions.surrounding_embeds) if tensor is not None]
        texts = [text for region in (regions.center, regions.surrounding) for text in region or regions.total or []]
        region_length = given[0].shape[1] if given else self.region_text_length(texts, max_length)

        def stream(texts: list[str] | None, embeds: torch.Tensor | None) -> torch.Tensor:
            if embeds is None and (texts or regions.total):
                embeds = self.encode_prompt(
                    prompt=texts or regions.total, prompt_2=None, device=device, max_sequence_length=region_length
                )[0]
            elif embeds is None:  # the Total given as embeddings only: the missing region is the Total
                if total.shape[1] != region_length:
                    raise ValueError(
                        f"with `prompt_embeds` ({total.shape[1]} tokens) and one region given as embeddings "
                        f"({region_length} tokens), give the other region too, or as many tokens as `prompt_embeds`"
                    )
                embeds = total
            return embeds.to(device=device, dtype=total.dtype)

        # FLUX's encode_prompt repeats text, not embeddings, per image: every stream is repeated here, once
        copies = call["num_images_per_prompt"]
        text = torch.cat(
            [
                total,
                stream(regions.center, regions.center_embeds),
                stream(regions.surrounding, regions.surrounding_embeds),
            ],
            dim=1,
        ).repeat_interleave(copies, 0)
        pooled = pooled.repeat_interleave(copies, 0)
        token_regions = self.prepare_token_regions(call, text.shape[0])
        bias = torch.cat(
            [
                joint_attention_bias(row, total.shape[1], strength, text.dtype, device, region_length=region_length)
                for row in token_regions
            ]
        )
        attention = {**(call["joint_attention_kwargs"] or {}), "attention_mask": bias}
        output = self.parent_call(
            {
                **call,
                "prompt": None,
                "prompt_2": None,
                "prompt_embeds": text,
                "pooled_prompt_embeds": pooled,
                "num_images_per_prompt": 1,
                "joint_attention_kwargs": attention,
            }
        )
        return output, {"enabled": True, "mode": cts.mode, "gates": [strength], "region_text_tokens": region_length}
