"""What every vip outpainting pipeline adds to its diffusers parent: the region keywords and one call template.

A vip pipeline is called exactly like its parent (the same parameters, defaults and output class); the region
keywords come on top. Without a region prompt (or with C-T-S changing nothing) the call is the parent's own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor

from vipcli_model.config import SCHEDULERS
from vipcli_model.cts.attention import CTSController, CTSState
from vipcli_model.errors import OptionError
from vipcli_model.speed.feature_cache import feature_cache
from vipcli_model.speed.guidance_interval import limited_guidance


def region_keywords(
    *,
    center_prompt: str | list[str] | None = None,
    surrounding_prompt: str | list[str] | None = None,
    center_prompt_embeds: torch.Tensor | None = None,
    surrounding_prompt_embeds: torch.Tensor | None = None,
    region_strength: float | None = None,
    cts: Any = None,
    guidance_interval: tuple[float, float] | None = None,
    deep_cache: int = 0,
) -> None:
    """The keywords a vip pipeline adds to its parent's ``__call__`` (see ``RegionPromptsMixin.call_with_regions``)."""


def region_call(parent_call: Callable, keywords: Callable = region_keywords) -> Callable:
    """A ``__call__`` for a vip pipeline whose declared signature is the parent's plus the region ``keywords``.

    diffusers' tests and tools read a pipeline's parameters with ``inspect.signature``; building the signature from
    the parent's keeps every parameter, default and annotation of the installed diffusers version.
    """

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        return self.call_with_regions(*args, **kwargs)

    parent = inspect.signature(parent_call)
    extra = list(inspect.signature(keywords).parameters.values())
    own = [p for p in parent.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    rest = [p for p in parent.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    __call__.__signature__ = parent.replace(parameters=[*own, *extra, *rest])
    __call__.__doc__ = RegionPromptsMixin.call_with_regions.__doc__
    return __call__


@dataclass
class RegionInputs:
    """The region prompts of one call, one entry per prompt of the batch."""

    total: list[str] | None  # the Total texts, None when the Total is given as ``prompt_embeds``
    center: list[str] | None  # the Center texts (an empty one falls back to the Total's); None: the Total's
    surrounding: list[str] | None  # the same for the Surrounding
    center_embeds: torch.Tensor | None = None  # ``center_prompt_embeds`` as given
    surrounding_embeds: torch.Tensor | None = None

    @property
    def given(self) -> bool:
        """Whether any region prompt was given."""
        return any(
            value is not None for value in (self.center, self.surrounding, self.center_embeds, self.surrounding_embeds)
        )

    @property
    def same_as_total(self) -> bool:
        """Whether both regions are the Total's text: zero-shot C-T-S then equals plain attention."""
        if self.center_embeds is not None or self.surrounding_embeds is not None:
            return False
        return all(texts is None or texts == self.total for texts in (self.center, self.surrounding))


def _region_texts(name: str, value: object, totals: list[str] | None, batch: int | None) -> list[str] | None:
    """``value`` as one text per prompt (an empty one: the Total's), None when not given."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        value = [value] * (batch or 1)
    if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
        raise ValueError(f"`{name}` must be a string or a list of strings, got {type(value).__name__}")
    if batch is not None and len(value) != batch:
        raise ValueError(f"`{name}` has {len(value)} entries but the batch has {batch} prompts: give one per prompt")
    if not any(value):
        return None
    if totals is None:
        if not all(value):
            raise ValueError(f"`{name}` has an empty entry and there is no `prompt` text to fall back on: fill it")
        return list(value)
    return [text or total for text, total in zip(value, totals)]


class RegionPromptsMixin:
    """What every vip outpainting pipeline adds to its diffusers parent, whatever the model family.

    The parent's call with region keywords (``call_with_regions``), scheduler choice, sizes, and the C-T-S path for
    UNet families: region embeddings and the mask reach the C-T-S processors through ``cross_attention_kwargs``.
    Each family encodes its prompts (``encode_total``, ``encode_region_texts``) and names its output class.
    """

    output_class: type  # the parent's output class with how C-T-S ran added

    def set_scheduler(self, name: str) -> None:
        """Swap the scheduler for one of ``SCHEDULERS``, keeping the model's noise schedule."""
        import diffusers

        if name not in SCHEDULERS:
            raise OptionError(f"`scheduler` '{name}' is not one of: {', '.join(SCHEDULERS)}")
        if name == "flow-match":
            raise OptionError(
                "`scheduler` 'flow-match' is for rectified-flow models (FLUX): pick another for this model"
            )
        class_name, extra = SCHEDULERS[name]
        scheduler_class = getattr(diffusers, class_name)
        self.scheduler = scheduler_class.from_config(self.scheduler.config, **extra)

    @property
    def size_multiple(self) -> int:
        """Working width and height must be multiples of this: the VAE's downsampling, and at least 8 (diffusers'
        SD and SDXL pipelines check for multiples of 8 whatever the VAE)."""
        return max(8, int(self.vae_scale_factor))

    @property
    def working_resolution(self) -> int:
        """The model's native resolution in pixels (512 for SD-1.5): the parent's size when none is given."""
        return int(self.unet.config.sample_size) * int(self.vae_scale_factor)

    def region_controller(self, adapter=None, region_strength: float | None = None) -> CTSController:
        """The C-T-S controller for one call: zero-shot at ``region_strength`` or a trained adapter's."""
        return CTSController(self.unet, adapter=adapter, region_strength=region_strength)

    # ---- the call: one template for every family, over the lifecycle methods below and the family's hooks

    def call_with_regions(self, *args, **kwargs):
        """Call the parent diffusers pipeline, with region prompts when given.

        Every parameter of the parent is accepted with the parent's meaning and default; ``prompt`` is the Total
        prompt. The region keywords: ``center_prompt`` describes the known pixels and ``surrounding_prompt`` the
        region to generate (a string, or a list with one per prompt; empty: the Total's), or
        ``center_prompt_embeds`` / ``surrounding_prompt_embeds`` beside ``prompt_embeds`` (negatives: the parent's).
        With a region prompt, C-T-S runs with gate ``region_strength`` (default 0.5); ``cts`` passes a ready
        controller instead (a trained adapter). ``guidance_interval`` ``(low, high)``: classifier-free guidance only
        at steps whose noise level sigma is in ``(low, high]``, one conditional UNet pass at the others (None: every
        step). ``deep_cache`` N > 1: the deep UNet blocks run at one step in N, their features reused in between.
        Returns the parent's output with ``cts`` (how C-T-S ran), ``guided_steps`` and ``cached_steps`` added, or
        the parent's tuple with ``return_dict=False``.
        """
        # 1. Check inputs: the parent's arguments bound as the parent binds them, the region keywords apart
        call, options = self.split_arguments(args, kwargs)
        regions = self.check_region_inputs(call, options)
        self.check_family_inputs(call, options)
        cts = self.prepare_region_control(options["cts"], regions, options["region_strength"])

        # 2-4. Encode and denoise: the parent's own call, with the region prompts routed when C-T-S changes anything;
        # the speed levers are hooks held for this call
        interval = options["guidance_interval"] if call["guidance_scale"] > 1.0 else None
        with self.speed_levers(interval, options["deep_cache"]) as (guided, cached):
            output, info = self.denoise_with_regions(call, regions, cts)

        # 5. Output: the parent's, with how C-T-S ran
        if not call["return_dict"]:
            return output
        values = {field.name: getattr(output, field.name) for field in fields(output)}
        return self.output_class(**values, cts=info, guided_steps=guided, cached_steps=cached)

    def split_arguments(self, args: tuple, kwargs: dict) -> tuple[dict, dict]:
        """The parent's arguments with its defaults filled in, and the region keywords, from one call."""
        signature = inspect.signature(type(self).__call__)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        call: dict = {}
        options: dict = {}
        for name, value in bound.arguments.items():
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                call.update(value)
            elif kind is inspect.Parameter.KEYWORD_ONLY:
                options[name] = value
            elif name != "self":
                call[name] = value
        return call, options

    def check_region_inputs(self, call: dict, options: dict) -> RegionInputs:
        """The region prompts as one entry per prompt; a ``ValueError`` naming the argument for what cannot be."""
        strength = options["region_strength"]
        if strength is not None and not 0.0 <= strength <= 1.0:
            raise ValueError(f"`region_strength` must be in [0, 1], got {strength}")
        prompt, embeds = call.get("prompt"), call.get("prompt_embeds")
        totals = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, list) else None
        batch = len(totals) if totals is not None else (embeds.shape[0] if torch.is_tensor(embeds) else None)
        texts, given = {}, {}
        for region in ("center", "surrounding"):
            text, tensor = options[f"{region}_prompt"], options[f"{region}_prompt_embeds"]
            if tensor is not None:
                if text:
                    raise ValueError(f"`{region}_prompt` and `{region}_prompt_embeds` were both given: pass one")
                if not torch.is_tensor(tensor) or (batch is not None and tensor.shape[0] != batch):
                    shape = tuple(tensor.shape) if torch.is_tensor(tensor) else type(tensor).__name__
                    raise ValueError(
                        f"`{region}_prompt_embeds` must be a tensor with one row per prompt ({batch}), got {shape}"
                    )
            texts[region] = _region_texts(f"{region}_prompt", text, totals, batch)
            given[region] = tensor
        regions = RegionInputs(totals, texts["center"], texts["surrounding"], given["center"], given["surrounding"])
        if regions.given and batch is None:
            raise ValueError("region prompts need `prompt` or `prompt_embeds` (the Total prompt): give one")
        return regions

    def check_family_inputs(self, call: dict, options: dict) -> None:
        """What this family refuses besides ``check_region_inputs`` (SD, SDXL: nothing more)."""

    def prepare_region_control(
        self, cts: CTSController | None, regions: RegionInputs, region_strength: float | None
    ) -> CTSController | None:
        """The C-T-S settings of this call: ``cts`` as given, else zero-shot when a region prompt or strength is."""
        if cts is None and (regions.given or region_strength is not None):
            cts = self.region_controller(region_strength=region_strength)
        return cts

    @contextmanager
    def speed_levers(
        self, guidance_interval: tuple[float, float] | None, deep_cache: int
    ) -> Iterator[tuple[dict[str, int], dict[str, int]]]:
        """The guidance interval and feature cache held on the UNet for the ``with`` body; yields their counts."""
        with (
            feature_cache(self.unet, deep_cache) as cached,
            limited_guidance(self.unet, self.scheduler, guidance_interval) as guided,
        ):
            yield guided, cached

    def parent_call(self, call: dict):
        """The diffusers pipeline this mixin is combined with, called with ``call``."""
        return super().__call__(**call)

    def uses_guidance(self, call: dict) -> bool:
        """Whether the parent runs a negative branch (classifier-free guidance) in this call."""
        return call["guidance_scale"] > 1.0 and self.unet.config.time_cond_proj_dim is None

    def denoise_with_regions(
        self, call: dict, regions: RegionInputs, cts: CTSController | None
    ) -> tuple[object, dict[str, object]]:
        """The parent's call, with the Center and Surrounding embeddings and the region mask for C-T-S.

        The region embeddings are laid out as the UNet's batch (``[negative; positive]`` with guidance, each prompt
        ``num_images_per_prompt`` times) and reach the C-T-S processors through ``cross_attention_kwargs``.
        """
        if cts is None:
            return self.parent_call(call), {"enabled": False}
        info = {"enabled": True, "mode": cts.mode, "gates": [round(g, 4) for g in cts.gate_values()]}
        if cts.adapter is None and regions.same_as_total:
            # both region texts equal the Total: the three branches are the same attention, so skip the cost
            info["note"] = "region prompts equal the total prompt: C-T-S equals plain attention and was skipped"
            return self.parent_call(call), info
        device = self._execution_device
        guidance = self.uses_guidance(call)
        total, negative = self.encode_total(call, device, guidance)
        copies = call["num_images_per_prompt"]

        def unet_batch(region: str) -> torch.Tensor:
            texts, given = getattr(regions, region), getattr(regions, f"{region}_embeds")
            positive = (
                given
                if given is not None
                else total["prompt_embeds"]
                if texts is None
                else (self.encode_region_texts(texts, call, device))
            )
            positive = positive.to(device=device, dtype=total["prompt_embeds"].dtype).repeat_interleave(copies, 0)
            return torch.cat([negative.repeat_interleave(copies, 0), positive]) if guidance else positive

        count = total["prompt_embeds"].shape[0] * copies
        mask = self.prepare_region_mask(call, count, device)
        state = CTSState(
            center=unet_batch("center"),
            surrounding=unet_batch("surrounding"),
            mask=torch.cat([mask, mask]) if guidance and mask.shape[0] > 1 else mask,
        )
        cts.install()
        attention_kwargs = {**(call.get("cross_attention_kwargs") or {}), **cts.attention_kwargs(state)}
        return self.parent_call({**call, **total, "cross_attention_kwargs": attention_kwargs}), info

    def region_mask_processor(self, multiple: int) -> VaeImageProcessor:
        """The parent's mask preprocessing without binarizing: the region weight stays soft on the seam."""
        return VaeImageProcessor(
            vae_scale_factor=multiple, do_normalize=False, do_binarize=False, do_convert_grayscale=True
        )

    def prepare_region_mask(self, call: dict, count: int, device: torch.device) -> torch.Tensor:
        """The mask (1 = generate) area-averaged to latent resolution, as the parent sizes and crops it:
        (1 or ``count``, 1, h, w)."""
        height = call["height"] or self.working_resolution
        width = call["width"] or self.working_resolution
        crops, resize_mode = None, "default"
        if call.get("padding_mask_crop") is not None:
            crops = self.mask_processor.get_crop_region(
                call["mask_image"], width, height, pad=call["padding_mask_crop"]
            )
            resize_mode = "fill"
        processor = self.region_mask_processor(int(self.vae_scale_factor))
        mask = processor.preprocess(
            call["mask_image"], height=height, width=width, resize_mode=resize_mode, crops_coords=crops
        ).float()
        latent_size = (mask.shape[-2] // self.vae_scale_factor, mask.shape[-1] // self.vae_scale_factor)
        mask = F.adaptive_avg_pool2d(mask, latent_size)
        if mask.shape[0] > 1:  # as the parent repeats its masks to the batch
            mask = mask.repeat(count // mask.shape[0], 1, 1, 1)
        return mask.to(device)
