"""The chain, wired in one place: image -> canvas + mask -> C-T-S pipeline -> blend -> result.

Models load once in :class:`Outpainter`; each call outpaints one image. The model runs at its
working resolution whatever the photo's size; the generated part is upscaled and the original
pasted back at full resolution, so a 4000-px photo never needs 4000-px diffusion.
"""

from __future__ import annotations

import datetime as _dt
import logging
import random
from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image

from . import hub
from .blend import color_match, paste_back, prefill
from .canvas import CanvasPlan, outpaint_mask, place_on_canvas, plan_canvas, working_size
from .config import BlendConfig, ExpansionConfig, GenerationConfig, ModelConfig
from .cts import DEFAULT_REGION_STRENGTH, CTSAdapter, CTSController, resolve_adapter_path
from .errors import ModelLoadError, OptionError
from .loading import is_channels_last, load_fast_lora, load_pipeline
from .pipeline import SCHEDULERS, VipOutpaintPipeline
from .prompts import RegionPrompts

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]

# ``--compile``: options for ``unet.compile`` (torch.compile's defaults: the inductor backend). C-T-S runs
# dense under compilation, so the UNet compiles into one graph, once per canvas size.
COMPILE_OPTIONS: dict = {}


def vip_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vip-outpaint")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class Geometry:
    """The canvas, the region to generate, and the working resolution of one image."""

    plan: CanvasPlan
    mask: Image.Image  # canvas size, 255 = generate
    canvas: Image.Image  # canvas size, the original placed, black elsewhere
    work_size: tuple[int, int]

    @property
    def has_work(self) -> bool:
        return self.mask.getextrema()[1] > 0


def prepare_geometry(
    image: Image.Image,
    expansion: ExpansionConfig,
    native: int,
    alpha: Image.Image | None = None,
    extra_mask: Image.Image | None = None,
) -> Geometry:
    """Plan the canvas and masks for one image (no model needed: ``--preview`` uses this alone)."""
    plan = plan_canvas(
        image.size,
        ratio=expansion.ratio,
        aspect=expansion.aspect,
        size=expansion.size,
        left=expansion.left,
        right=expansion.right,
        top=expansion.top,
        bottom=expansion.bottom,
        align=expansion.align,
    )
    mask = outpaint_mask(plan, extra_mask=extra_mask, alpha=alpha)
    canvas = place_on_canvas(image, plan)
    return Geometry(plan=plan, mask=mask, canvas=canvas, work_size=working_size(plan.canvas_size, native))


def to_working_resolution(geometry: Geometry) -> tuple[Image.Image, Image.Image]:
    """The canvas (pre-filled) and mask at working resolution.

    The mask is grown on the way down: a working pixel that covers any pixel to generate is
    generated, so nothing unknown is ever treated as known.
    """
    work_mask = geometry.mask.resize(geometry.work_size, Image.Resampling.BOX)
    work_mask = work_mask.point(lambda value: 255 if value > 0 else 0)
    work_image = geometry.canvas.resize(geometry.work_size, Image.Resampling.LANCZOS)
    return prefill(work_image, work_mask), work_mask


@dataclass
class OutpaintResult:
    """Final images at canvas size, with everything needed to reproduce them."""

    images: list[Image.Image]
    geometry: Geometry
    prompts: RegionPrompts
    seed: int
    metadata: dict = field(default_factory=dict)


class Outpainter:
    """Loads the model (and adapter) once, then outpaints images one by one."""

    def __init__(self, model: ModelConfig, pipeline: VipOutpaintPipeline | None = None) -> None:
        self.model_config = model
        self.pipe = pipeline if pipeline is not None else load_pipeline(model)
        self.model_name = hub.resolve_spec(model.model)
        if model.fast_lora:
            load_fast_lora(self.pipe, model.fast_lora)
        self.adapter: CTSAdapter | None = None
        if model.adapter:
            adapter_path = resolve_adapter_path(model.adapter)
            self.adapter = CTSAdapter.load(adapter_path, self.pipe.unet, base_model=self.model_name)
            self.adapter.to(device=self.pipe.device, dtype=self.pipe.unet.dtype)
            self.adapter.requires_grad_(False)
        if model.compile:
            # Lazy: compiles on the first UNet pass, after the LoRA fuse and adapter above.
            self.pipe.unet.compile(**COMPILE_OPTIONS)

    @property
    def native_resolution(self) -> int:
        return self.pipe.working_resolution

    def outpaint(
        self,
        image: Image.Image,
        prompts: RegionPrompts,
        *,
        expansion: ExpansionConfig = ExpansionConfig(),
        generation: GenerationConfig = GenerationConfig(),
        blend: BlendConfig = BlendConfig(),
        alpha: Image.Image | None = None,
        extra_mask: Image.Image | None = None,
        step_callback: StepCallback | None = None,
        source: str = "",
        prompt_info: dict | None = None,
    ) -> OutpaintResult:
        """Outpaint one image. ``prompts`` may be empty (unconditional)."""
        check_generation(generation, blend)
        geometry = prepare_geometry(image, expansion, self.native_resolution, alpha=alpha, extra_mask=extra_mask)
        seed = generation.seed if generation.seed is not None else random.randrange(2**32)
        if not geometry.has_work:
            raise OptionError(
                "nothing to generate: the canvas equals the image and no --mask or transparency marks a region"
            )
        work_image, work_mask = to_working_resolution(geometry)

        self.pipe.set_scheduler(generation.scheduler)
        controller = None
        if generation.cts:
            strength = generation.region_strength
            controller = CTSController(self.pipe.unet, adapter=self.adapter, region_strength=strength)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        try:
            output = self.pipe(
                work_image,
                work_mask,
                prompts,
                generation.negative,
                num_inference_steps=generation.steps,
                guidance_scale=generation.guidance,
                num_images=generation.num_images,
                generator=generator,
                cts=controller,
                step_callback=step_callback,
            )
        except torch._dynamo.exc.TorchDynamoException as exc:
            if not self.model_config.compile:
                raise
            cause = getattr(exc, "inner_exception", None) or exc  # what the compiler itself raised
            reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise ModelLoadError(
                f"--compile: torch.compile could not compile the UNet on {self.pipe.device} ({reason}): "
                "run without --compile"
            ) from exc

        finals: list[Image.Image] = []
        color_info = []
        for generated in output.images:
            if blend.color_match:
                generated, info = color_match(generated, work_image, work_mask)
                color_info.append(info)
            upscaled = generated.resize(geometry.plan.canvas_size, Image.Resampling.LANCZOS)
            finals.append(paste_back(upscaled, geometry.canvas, geometry.mask, feather=blend.feather))

        metadata = {
            "vip_version": vip_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": source,
            "model": self.model_name,
            "adapter": self.model_config.adapter,
            "prompts": prompts.to_dict(),
            "prompt_source": prompt_info or {"source": "user" if not prompts.is_empty else "unconditional"},
            "negative": generation.negative,
            "seed": seed,
            "steps": generation.steps,
            "guidance": generation.guidance,
            "scheduler": generation.scheduler,
            "num_images": generation.num_images,
            "cts": output.cts,
            "region_strength": generation.region_strength,
            "fast_lora": self.model_config.fast_lora,
            "expansion": expansion.to_dict(),
            "image_size": list(geometry.plan.image_size),
            "canvas_size": list(geometry.plan.canvas_size),
            "image_box": list(geometry.plan.image_box),
            "working_size": list(geometry.work_size),
            "feather": blend.feather,
            "color_match": blend.color_match,
            "color_correction": color_info or None,
            "vae_tiling": bool(getattr(self.pipe.vae, "use_tiling", False)),
            "vae_channels_last": is_channels_last(self.pipe.vae),
            "cpu_offload": self.model_config.cpu_offload,
            "compile": self.model_config.compile,
            "device": str(self.pipe.device),
            "dtype": str(self.pipe.unet.dtype).replace("torch.", ""),
        }
        return OutpaintResult(images=finals, geometry=geometry, prompts=prompts, seed=seed, metadata=metadata)


def choose_prompts(
    image: Image.Image,
    *,
    total: str | None = None,
    center: str = "",
    surrounding: str = "",
    keywords: str = "",
    captioner=None,
    cache=None,
    tokenizer=None,
) -> tuple[RegionPrompts, dict]:
    """The prompts for one image, and where they came from.

    Prompts given by the user win (any of total / center / surrounding). Otherwise the captioner
    (a multimodal LLM) describes the photo as the Center and proposes the Surrounding, steered by
    ``keywords``; its text is fitted to ``tokenizer``'s 77-token window. Without a captioner the
    keywords alone form the Surrounding (or nothing: unconditional).
    """
    if (total and total.strip()) or center.strip() or surrounding.strip() or captioner is None:
        prompts = RegionPrompts.build(center=center, surrounding=surrounding, total=total, keywords=keywords)
        return prompts, {"source": "user" if not prompts.is_empty else "unconditional"}
    from .captioner import caption_for_outpaint

    result = caption_for_outpaint(captioner, image, keywords=keywords, tokenizer=tokenizer, cache=cache)
    return result.prompts, {
        "source": "captioner",
        "captioner": result.model,
        "template_version": result.template_version,
        "truncated": result.truncated,
        "cached": result.cached,
    }


def check_generation(generation: GenerationConfig, blend: BlendConfig) -> None:
    """Reject bad generation settings, naming the option (before any model work)."""
    if generation.steps < 1 or generation.steps > 1000:
        raise OptionError(f"--steps {generation.steps} is out of range: use 1 to 1000")
    if not 0.0 <= generation.guidance <= 50.0:
        raise OptionError(f"--guidance {generation.guidance} is out of range: use 0 to 50 (1 turns guidance off)")
    if generation.num_images < 1 or generation.num_images > 64:
        raise OptionError(f"--num-images {generation.num_images} is out of range: use 1 to 64")
    if generation.scheduler not in SCHEDULERS:
        raise OptionError(f"--scheduler '{generation.scheduler}' is not one of: {', '.join(SCHEDULERS)}")
    if generation.region_strength is not None and not 0.0 <= generation.region_strength <= 1.0:
        raise OptionError(f"--region-strength {generation.region_strength} is out of range: use 0 to 1")
    if generation.seed is not None and not 0 <= generation.seed < 2**63:
        raise OptionError(f"--seed {generation.seed} is out of range: use 0 to 2^63-1")
    if blend.feather < 0 or blend.feather > 512:
        raise OptionError(f"--feather {blend.feather} is out of range: use 0 to 512 pixels")


def parameters_text(result: OutpaintResult) -> tuple[str, dict[str, object]]:
    """The A1111-style settings line for the PNG ``parameters`` chunk."""
    meta = result.metadata
    settings = {
        "Steps": meta["steps"],
        "Sampler": meta["scheduler"],
        "CFG scale": meta["guidance"],
        "Seed": meta["seed"],
        "Size": "x".join(map(str, meta["canvas_size"])),
        "Model": meta["model"],
        "Center": meta["prompts"]["center"] or None,
        "Surrounding": meta["prompts"]["surrounding"] or None,
        "C-T-S": (meta["cts"].get("mode") if meta["cts"].get("enabled") else "off"),
        "Region strength": meta["region_strength"] if meta["region_strength"] is not None else (
            "adapter" if meta["adapter"] else DEFAULT_REGION_STRENGTH
        ),
        "Fast LoRA": meta.get("fast_lora"),
        "Version": f"vip {meta['vip_version']}",
    }
    return meta["prompts"]["total"], settings
