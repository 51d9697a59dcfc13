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

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from diffusers import FluxFillPipeline
from PIL import Image

from vipcli_model.cts.attention import DEFAULT_REGION_STRENGTH
from vipcli_model.errors import ModelLoadError, OptionError
from vipcli_model.pipelines.sd import RegionPromptsMixin
from vipcli_model.prompts import RegionPrompts
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


def joint_attention_bias(
    region: torch.Tensor, text_length: int, strength: float, dtype: torch.dtype, device: torch.device,
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


class VipOutpaintFluxFillPipeline(RegionPromptsMixin, FluxFillPipeline):
    """``FluxFillPipeline`` with Center / Total / Surrounding prompts routed by a joint-attention mask.

    Same contract as the UNet pipelines (``prompt`` is the Total prompt, ``center_prompt`` /
    ``surrounding_prompt`` the region texts, ``region_strength`` the gate). FLUX Fill takes no negative prompt:
    it is guidance-distilled, and ``guidance_scale`` is an input of the model (30 by default), not CFG.
    """

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
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        active = str(getattr(_AttentionBackendRegistry.get_active_backend()[0], "value", ""))
        chosen = {str(getattr(getattr(processor, "_attention_backend", None), "value", "") or active)
                  for processor in self.transformer.attn_processors.values()}
        unusable = sorted(name for name in chosen if name not in MASK_BACKENDS)
        if unusable:
            raise ModelLoadError(
                f"region prompts on FLUX need an attention backend that takes a mask; '{unusable[0]}' does not: "
                "use the native backend (unset DIFFUSERS_ATTN_BACKEND) or run without region prompts (`cts` off)"
            )

    def region_text_length(self, prompts: RegionPrompts, max_length: int) -> int:
        """T5 tokens of the Center and Surrounding streams: their longer text's, rounded up to REGION_TEXT_STEP.

        The Total keeps ``max_length`` (512: what a plain FLUX Fill run sees, so strength 0 is exact); the region
        streams need no 512 tokens of padding each, and every token saved is one the joint attention and the
        text MLPs of every block skip (``benchmarks/bench_families.py``). Nothing is truncated.
        """
        texts = [prompts.center or prompts.total, prompts.surrounding or prompts.total]
        ids = self.tokenizer_2(texts, padding=False, truncation=True, max_length=max_length).input_ids
        longest = max(len(tokens) for tokens in ids)
        return min(max_length, -(-longest // REGION_TEXT_STEP) * REGION_TEXT_STEP)

    def encode_region_prompts(self, prompts: RegionPrompts, device: torch.device, num_images: int, max_length: int,
                              region_length: int | None = None):
        """T5 token embeddings of Total, Center, Surrounding (each on its own); pooled CLIP of the Total.

        ``region_length``: T5 tokens of the Center and Surrounding embeddings (default ``max_length``).
        """
        cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

        def encode(text: str, length: int) -> tuple[torch.Tensor, torch.Tensor]:
            if (text, length) not in cache:
                embeds, pooled, _ = self.encode_prompt(
                    prompt=text, prompt_2=None, device=device, num_images_per_prompt=num_images,
                    max_sequence_length=length,
                )
                cache[text, length] = (embeds, pooled)
            return cache[text, length]

        region_length = region_length or max_length
        total, pooled = encode(prompts.total, max_length)
        center, _ = encode(prompts.center or prompts.total, region_length)
        surrounding, _ = encode(prompts.surrounding or prompts.total, region_length)
        return {"total": total, "center": center, "surrounding": surrounding, "pooled": pooled}

    def prepare_token_regions(self, mask_image: Image.Image, height: int, width: int) -> torch.Tensor:
        """The generate-weight of each packed image token (row-major), area-averaged: (N,)."""
        mask = self.prepare_region_mask(mask_image, torch.device("cpu"))  # latent resolution
        grid = (height // self.size_multiple, width // self.size_multiple)
        return F.adaptive_avg_pool2d(mask, grid).flatten()

    default_guidance_scale = 30.0  # an input of the guidance-distilled model, not classifier-free guidance

    def check_family_inputs(self, negative_prompt: str | None, guidance_interval: tuple[float, float] | None,
                            deep_cache: int, kwargs: dict) -> None:
        if negative_prompt:
            raise ValueError("`negative_prompt` is not supported by FLUX Fill (guidance-distilled: no negative branch)")
        if not covers_every_step(guidance_interval):
            raise ValueError("`guidance_interval`: FLUX Fill runs without classifier-free guidance")
        if deep_cache > 1:
            raise ValueError("`deep_cache`: feature caching needs a UNet, and FLUX Fill has a transformer")
        given = sorted(set(kwargs) & {"pooled_prompt_embeds", "prompt_2", "joint_attention_kwargs"})
        if given:
            raise ValueError(f"{', '.join(f'`{name}`' for name in given)} not supported: pass the prompts as text")

    def prepare_region_control(self, cts: JointRegionControl | None, prompts: RegionPrompts,
                               region_strength: float | None) -> JointRegionControl | None:
        """``cts`` as given (at ``region_strength`` when one is given), else one when a region prompt is given."""
        if cts is None and (prompts.center or prompts.surrounding or region_strength is not None):
            return self.region_controller(region_strength=region_strength)
        if cts is not None and region_strength is not None:
            return self.region_controller(region_strength=region_strength)
        return cts

    @contextmanager
    def speed_levers(
        self, guidance_interval: tuple[float, float] | None, deep_cache: int
    ) -> Iterator[tuple[dict[str, int], dict[str, int]]]:
        """None for FLUX Fill (``check_family_inputs`` refuses them): no counts."""
        yield {}, {}

    def encode_for_call(self, prompts: RegionPrompts, negative_prompt: str | None, device: torch.device,
                        num_images: int, guidance_scale: float, options: dict) -> dict[str, torch.Tensor | int]:
        """Step 2 of the call: T5 and CLIP, the region texts without needless padding (``region_text_length``)."""
        max_length = options.get("max_sequence_length", 512)
        region_length = self.region_text_length(prompts, max_length)
        embeddings = self.encode_region_prompts(prompts, device, num_images, max_length, region_length)
        return {**embeddings, "region_length": region_length}

    def total_prompt_inputs(self, embeddings: dict) -> dict[str, torch.Tensor]:
        """The pooled CLIP embedding (the Total's); the T5 text is chosen when denoising (one prompt, or three)."""
        return {"pooled_prompt_embeds": embeddings["pooled"]}

    def denoise_with_regions(self, call: dict, prompts: RegionPrompts, cts: JointRegionControl | None,
                             embeddings: dict, mask_image: Image.Image,
                             device: torch.device) -> tuple[object, dict[str, object]]:
        """Plain FLUX Fill when C-T-S changes nothing (no region prompt, strength 0, or region texts = Total); else
        the three texts in one sequence, routed by the joint-attention mask."""
        strength = cts.region_strength if cts is not None else 0.0
        same_texts = (prompts.center or prompts.total) == prompts.total and (
            prompts.surrounding or prompts.total
        ) == prompts.total
        if cts is None or strength == 0.0 or same_texts:
            info: dict[str, object] = {"enabled": cts is not None}
            if cts is not None:
                info.update(mode=cts.mode, gates=[strength], note="C-T-S equals plain attention here and was skipped")
            return FluxFillPipeline.__call__(self, prompt_embeds=embeddings["total"], **call).images, info
        self.check_attention_backend()
        text = torch.cat([embeddings["total"], embeddings["center"], embeddings["surrounding"]], dim=1)
        regions = self.prepare_token_regions(mask_image, call["height"], call["width"])
        bias = joint_attention_bias(regions, embeddings["total"].shape[1], strength, text.dtype, device,
                                    region_length=embeddings["center"].shape[1])
        images = FluxFillPipeline.__call__(
            self, prompt_embeds=text, joint_attention_kwargs={"attention_mask": bias}, **call
        ).images
        return images, {"enabled": True, "mode": cts.mode, "gates": [strength],
                        "region_text_tokens": embeddings["region_length"]}
