"""The FLUX.2 [klein] outpainting pipeline: ``Flux2KleinInpaintPipeline`` with C-T-S as a joint-attention mask.

FLUX.2 [klein] is no fill model: its transformer takes no mask. diffusers inpaints with it by in-context reference:
the noisy *target* tokens are joined with clean *reference* tokens of the whole source image (the canvas with its
filler), ``[text | target | reference]`` in one joint attention (double- then single-stream blocks), and the known
region is pasted back into the target latents after every step. The text is one Qwen3 stream (hidden states of
three layers), padded to 512 tokens with no text mask, with positions ``0..511`` on its own rotary axis.

As on FLUX.1 Fill (``flux.py``), the three prompts become one text sequence ``[Total | Center | Surrounding]`` and
one additive mask, passed to every block through ``attention_kwargs``, routes them:

- each text stream attends to itself and to every image token (target and reference), and its rotary positions
  start at 0, as in a plain run of its prompt (``encode_prompt``);
- a target token with generate-weight ``m`` attends to the Total text with weight ``1 - g``, to the Center text
  with ``g * (1 - m)`` and to the Surrounding text with ``g * m`` (``g``: the region strength); image tokens
  attend to every image token;
- reference tokens are the source image as the model was trained to read it: they attend to the Total text and
  to every image token;
- the Total keeps its 512 tokens (a plain run's: strength 0 is exactly the plain pipeline); the Center and
  Surrounding streams are as long as the longer of them needs, rounded up to 64 (``region_text_length``).

``hide_reference_filler``: the reference tokens over the area to generate hold the pre-filled canvas (the
filler); with it, every token sees them with weight ``1 - m`` (hidden where the region is generated), so the
transformer cannot copy the filler from them. The filler still reaches the known latents through the autoencoder's
global layers (its normalisation and attention): on the toy model that path carries nearly all of its influence
(``benchmarks/RESULTS.md``), so this is off by default.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import Flux2KleinInpaintPipeline
from diffusers.pipelines.flux2.pipeline_output import Flux2PipelineOutput

from vipcli_model.cts.attention import DEFAULT_REGION_STRENGTH
from vipcli_model.errors import OptionError
from vipcli_model.pipelines.flux import (
    REGION_TEXT_STEP,
    JointRegionControl,
    check_mask_backend,
    check_transformer_inputs,
    joint_region_control,
)
from vipcli_model.pipelines.regions import RegionInputs, RegionPromptsMixin, region_call

# The pipeline downscales inputs over this many pixels (diffusers: 1024 x 1024) before working on them.
MAX_PIXELS = 1024 * 1024


def klein_attention_bias(
    target: torch.Tensor,
    reference: torch.Tensor,
    text_length: int,
    region_length: int,
    strength: float,
    dtype: torch.dtype,
    device: torch.device,
    hide_filler: bool = False,
) -> torch.Tensor:
    """The additive mask (1, 1, S, S) over ``[Total | Center | Surrounding | target | reference]`` tokens.

    ``target`` / ``reference``: (N,) / (M,) generate-weight of each target and reference token in packed order,
    in [0, 1]. ``text_length``: the Total's tokens; ``region_length``: the Center's and the Surrounding's (0: no
    region streams). ``hide_filler``: reference tokens are seen with weight ``1 - m`` (module docstring).
    """
    target = target.to(device=device, dtype=torch.float32).clamp(0.0, 1.0)
    reference = reference.to(device=device, dtype=torch.float32).clamp(0.0, 1.0)
    ends = [text_length, text_length + region_length, text_length + 2 * region_length]
    image_start = ends[-1]
    reference_start = image_start + target.shape[0]
    size = reference_start + reference.shape[0]
    bias = torch.full((size, size), float("-inf"), device=device)
    image, targets, references = (
        slice(image_start, size),
        slice(image_start, reference_start),
        slice(reference_start, size),
    )
    total, center, surrounding = (slice(start, end) for start, end in zip([0, *ends[:2]], ends))
    for block in (total, center, surrounding):  # each text stream: itself and the image
        bias[block, block] = 0.0
        bias[block, image] = 0.0
    bias[image, image] = 0.0
    bias[references, total] = 0.0
    bias[targets, total] = torch.tensor(1.0 - strength, device=device).log()
    bias[targets, center] = (strength * (1.0 - target)).log()[:, None]
    bias[targets, surrounding] = (strength * target).log()[:, None]
    if hide_filler:
        bias[:, references] += (1.0 - reference).log()[None, :]
    return bias.to(dtype)[None, None]


@dataclass
class OutpaintFlux2PipelineOutput(Flux2PipelineOutput):
    """The parent's output (``images``; indexable), and how C-T-S ran."""

    cts: dict[str, object] = field(default_factory=dict)  # how C-T-S ran: enabled, mode, gates, region text tokens
    guided_steps: dict[str, int] = field(default_factory=dict)  # always empty: no guidance interval here
    cached_steps: dict[str, int] = field(default_factory=dict)  # always empty: no feature cache here


def klein_region_keywords(
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
    hide_reference_filler: bool = False,
) -> None:
    """The region keywords (Qwen3 embeddings for ``*_prompt_embeds``), ``hide_reference_filler`` (module
    docstring); ``negative_prompt`` only to refuse it by name: callers written for the UNet families pass one."""


class VipOutpaintFlux2KleinPipeline(RegionPromptsMixin, Flux2KleinInpaintPipeline):
    """``Flux2KleinInpaintPipeline`` with Center / Total / Surrounding prompts routed by a joint-attention mask.

    Called like the parent (same parameters and defaults, same output class with fields added); the region keywords
    come on top, ``center_prompt_embeds`` / ``surrounding_prompt_embeds`` being Qwen3 embeddings like
    ``prompt_embeds``. The distilled models run without guidance (``guidance_scale`` 1); region prompts are refused
    with classifier-free guidance (the undistilled base models), whose negative pass has no region streams.
    """

    output_class = OutpaintFlux2PipelineOutput
    __call__ = region_call(Flux2KleinInpaintPipeline.__call__, klein_region_keywords)
    _text_segments: tuple[int, ...] | None = None  # the text streams' lengths during a routed call
    _hide_filler: bool = False  # `hide_reference_filler` of the call in progress

    @property
    def size_multiple(self) -> int:
        """Latents are packed 2x2 into tokens: sizes are multiples of twice the VAE's downsampling."""
        return int(self.vae_scale_factor) * 2

    @property
    def working_resolution(self) -> int:
        """1024 px less one size step (1008 on the real model): vip's working size, rounded to ``size_multiple``,
        then stays under MAX_PIXELS, which the parent would scale down to a size vip did not plan."""
        return int(self.default_sample_size) * int(self.vae_scale_factor) - self.size_multiple

    def set_scheduler(self, name: str) -> None:
        """FLUX.2 keeps its own flow-matching scheduler; ``flow-match`` is the only choice."""
        if name != "flow-match":
            raise OptionError(
                f"`scheduler` '{name}' does not run FLUX.2 [klein] (a rectified-flow model): use flow-match"
            )

    def region_controller(self, adapter=None, region_strength: float | None = None) -> JointRegionControl:
        if adapter is not None:
            raise OptionError(
                "`adapter`: C-T-S adapters are trained for UNet models (SD, SDXL); FLUX.2 [klein] runs zero-shot"
            )
        strength = DEFAULT_REGION_STRENGTH if region_strength is None else region_strength
        return JointRegionControl(region_strength=strength)

    def encode_prompt(
        self,
        prompt: str | list[str],
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        text_encoder_out_layers: tuple[int, ...] = (9, 18, 27),
    ):
        """The parent's, and during a routed call each text stream's rotary positions start at 0 (as in a plain run
        of its prompt) instead of running on across the joined streams."""
        embeds, text_ids = super().encode_prompt(
            prompt=prompt,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            prompt_embeds=prompt_embeds,
            max_sequence_length=max_sequence_length,
            text_encoder_out_layers=text_encoder_out_layers,
        )
        segments = self._text_segments
        if prompt_embeds is not None and segments and embeds.shape[1] == sum(segments):
            parts = embeds.split([length for length in segments if length], dim=1)
            text_ids = torch.cat([self._prepare_text_ids(part) for part in parts], dim=1).to(text_ids.device)
        return embeds, text_ids

    @contextmanager
    def routed_text(self, segments: tuple[int, ...]) -> Iterator[None]:
        """``encode_prompt`` gives each of ``segments`` its own positions for the ``with`` body."""
        self._text_segments = segments
        try:
            yield
        finally:
            self._text_segments = None

    def region_text_length(self, texts: list[str], max_length: int) -> int:
        """Qwen3 tokens of the Center and Surrounding streams (chat template included): their longest text's,
        rounded up to REGION_TEXT_STEP, at most ``max_length``. Nothing is truncated that a plain run keeps."""
        lengths = []
        for text in texts:
            chat = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True, enable_thinking=False
            )
            lengths.append(len(self.tokenizer(chat, truncation=True, max_length=max_length).input_ids))
        return min(max_length, -(-max(lengths) // REGION_TEXT_STEP) * REGION_TEXT_STEP)

    def check_family_inputs(self, call: dict, options: dict) -> None:
        check_transformer_inputs(
            options,
            "FLUX.2 [klein]",
            "(distilled: no negative branch); pass `negative_prompt_embeds` to an undistilled model",
        )

    def prepare_region_control(
        self, cts: JointRegionControl | None, regions: RegionInputs, region_strength: float | None
    ) -> JointRegionControl | None:
        return joint_region_control(self, cts, regions, region_strength)

    @contextmanager
    def speed_levers(
        self, guidance_interval: tuple[float, float] | None, deep_cache: int
    ) -> Iterator[tuple[dict[str, int], dict[str, int]]]:
        """None here (``check_family_inputs`` refuses them): no counts."""
        yield {}, {}

    def working_size(self, call: dict) -> tuple[int, int]:
        """(height, width) the parent works at: the image's, over MAX_PIXELS scaled down, cut to ``size_multiple``."""
        image = call["image"]
        multiple = self.size_multiple
        if torch.is_tensor(image) and image.ndim == 4 and image.shape[1] == self.latent_channels * 4:  # latents
            return image.shape[2] * multiple, image.shape[3] * multiple
        height, width = self._get_raw_image_size(image[0] if isinstance(image, list) else image)
        if height * width > MAX_PIXELS:
            scale = math.sqrt(MAX_PIXELS / (height * width))
            height, width = int(height * scale), int(width * scale)
        return height // multiple * multiple, width // multiple * multiple

    def prepare_token_regions(self, call: dict, count: int) -> torch.Tensor:
        """The generate-weight of each packed target token (row-major), area-averaged: (1 or ``count``, N)."""
        height, width = self.working_size(call)
        multiple = self.size_multiple
        mask = self.region_mask_processor(multiple).preprocess(call["mask_image"], height=height, width=width)
        regions = F.adaptive_avg_pool2d(mask.float(), (height // multiple, width // multiple)).flatten(1)
        return regions.repeat(count // regions.shape[0], 1) if regions.shape[0] > 1 else regions

    def denoise_with_regions(
        self, call: dict, regions: RegionInputs, cts: JointRegionControl | None
    ) -> tuple[object, dict[str, object]]:
        """The parent's call, plain when nothing is routed (no region prompt, strength 0, or region texts = Total,
        and the filler not hidden); else the three texts in one sequence, routed by the joint-attention mask."""
        hide_filler = self._hide_filler
        strength = cts.region_strength if cts is not None else 0.0
        routed = cts is not None and strength > 0.0 and not regions.same_as_total
        if not routed and not hide_filler:
            info: dict[str, object] = {"enabled": cts is not None}
            if cts is not None:
                info.update(mode=cts.mode, gates=[strength], note="C-T-S equals plain attention here and was skipped")
            return self.parent_call(call), info
        for name in ("image_reference", "padding_mask_crop"):
            if call[name] is not None:
                raise ValueError(f"`{name}` cannot be combined with region prompts on FLUX.2 [klein]: leave it unset")
        if call["guidance_scale"] > 1.0 and not self.config.is_distilled:
            raise ValueError(
                f"`guidance_scale` {call['guidance_scale']}: region prompts on FLUX.2 [klein] run without "
                "classifier-free guidance: set it to 1"
            )
        check_mask_backend(self.transformer)
        device = self._execution_device
        max_length = call["max_sequence_length"]
        layers = call["text_encoder_out_layers"]
        total, _ = self.encode_prompt(
            prompt=call["prompt"],
            device=device,
            prompt_embeds=call["prompt_embeds"],
            max_sequence_length=max_length,
            text_encoder_out_layers=layers,
        )
        streams = [total]
        region_length = 0
        if routed:
            given = [tensor for tensor in (regions.center_embeds, regions.surrounding_embeds) if tensor is not None]
            texts = [text for region in (regions.center, regions.surrounding) for text in region or regions.total or []]
            region_length = given[0].shape[1] if given else self.region_text_length(texts, max_length)
            pairs = [(regions.center, regions.center_embeds), (regions.surrounding, regions.surrounding_embeds)]
            # the region texts to encode, in one text-encoder pass: the two streams have the same length
            wanted = [texts or regions.total for texts, embeds in pairs if embeds is None and (texts or regions.total)]
            encoded = iter(
                self.encode_prompt(
                    prompt=[text for texts in wanted for text in texts],
                    device=device,
                    max_sequence_length=region_length,
                    text_encoder_out_layers=layers,
                )[0].split(total.shape[0])
                if wanted
                else []
            )
            for texts, embeds in pairs:
                if embeds is None and (texts or regions.total):
                    embeds = next(encoded)
                elif embeds is None:  # the Total given as embeddings only: the missing region is the Total
                    if total.shape[1] != region_length:
                        raise ValueError(
                            f"with `prompt_embeds` ({total.shape[1]} tokens) and one region given as embeddings "
                            f"({region_length} tokens), give the other region too, or as many tokens as "
                            "`prompt_embeds`"
                        )
                    embeds = total
                streams.append(embeds.to(device=device, dtype=total.dtype))
        text = torch.cat(streams, dim=1)
        token_regions = self.prepare_token_regions(call, text.shape[0] * call["num_images_per_prompt"])
        bias = torch.cat(
            [
                klein_attention_bias(
                    row,
                    row,
                    total.shape[1],
                    region_length,
                    strength if routed else 0.0,
                    text.dtype,
                    device,
                    hide_filler,
                )
                for row in token_regions
            ]
        )
        attention = {**(call["attention_kwargs"] or {}), "attention_mask": bias}
        segments = (total.shape[1], region_length, region_length) if routed else (total.shape[1],)
        with self.routed_text(segments):
            output = self.parent_call({**call, "prompt": None, "prompt_embeds": text, "attention_kwargs": attention})
        info = {"enabled": cts is not None, "hide_reference_filler": hide_filler}
        if cts is not None:
            info.update(mode=cts.mode, gates=[strength])
        if routed:
            info["region_text_tokens"] = region_length
        return output, info

    def call_with_regions(self, *args, **kwargs):
        """``RegionPromptsMixin.call_with_regions``; ``hide_reference_filler`` is held for the call, as diffusers
        holds ``guidance_scale`` (the shared template passes the family no keyword of its own)."""
        self._hide_filler = bool(kwargs.pop("hide_reference_filler", False))
        try:
            return super().call_with_regions(*args, **kwargs)
        finally:
            self._hide_filler = False
