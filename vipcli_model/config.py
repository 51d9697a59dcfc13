"""Typed settings for each stage of an outpaint. Every field says what it does.

Imports nothing heavy (no torch, no diffusers): ``--preview`` and option checks run without them.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from vipcli_model.errors import OptionError

DEFAULT_INPAINT_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"  # SD-1.5 inpainting: VIP's base

# scheduler name -> (diffusers scheduler class, extra config); ``VipOutpaintPipeline.set_scheduler`` builds them
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpm++-karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),  # the TCD LoRA's sampler (`fast` with a ControlNet)
    "flow-match": ("FlowMatchEulerDiscreteScheduler", {}),  # rectified-flow models (FLUX) only
}
# What A1111-style readers (PNG info tabs, metadata viewers) call each scheduler: (Sampler, Schedule type)
SAMPLER_NAMES: dict[str, tuple[str, str]] = {
    "dpm++": ("DPM++ 2M", "Automatic"),
    "dpm++-karras": ("DPM++ 2M", "Karras"),
    "ddim": ("DDIM", "Automatic"),
    "euler": ("Euler", "Automatic"),
    "euler-a": ("Euler a", "Automatic"),
    "unipc": ("UniPC", "Automatic"),
    "pndm": ("PLMS", "Automatic"),
    "lcm": ("LCM", "Automatic"),
    "flow-match": ("Euler", "Simple"),
}


def scheduler_key(scheduler: object) -> str:
    """The `scheduler` name (a key of SCHEDULERS) of a diffusers scheduler object; its class name if none fits."""
    config = getattr(scheduler, "config", {}) or {}
    for key, (class_name, extra) in SCHEDULERS.items():
        if type(scheduler).__name__ == class_name and all(
            config.get(name, value) == value for name, value in extra.items()
        ):
            return key
    return type(scheduler).__name__


def sampler_settings(scheduler: str) -> dict[str, str]:
    """The A1111 ``Sampler`` and ``Schedule type`` of a `scheduler` name (an unknown one is shown as it is)."""
    sampler, schedule = SAMPLER_NAMES.get(scheduler, (scheduler, "Automatic"))
    return {"Sampler": sampler, "Schedule type": schedule}


@dataclass(frozen=True)
class ExpansionConfig:
    """How the canvas grows around the image (at most one of ratio / aspect / size / sides)."""

    ratio: str | None = None  # "2x": each side scaled by the factor
    aspect: str | None = None  # "16:9": grow the smaller dimension just enough
    size: str | None = None  # "1920x1080": explicit canvas, at least the image's size
    left: str | None = None  # pixels ("120") or percent of the image width ("25%")
    right: str | None = None
    top: str | None = None  # pixels or percent of the image height
    bottom: str | None = None
    align: str = "center"  # where the original sits when ratio/aspect/size leave free space
    mask: str | None = None  # path of an extra region to generate (white = generate)

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class PromptConfig:
    """Where the prompts come from: the user's, else a captioner's (a multimodal LLM) description of the photo."""

    total: str | None = None  # the Total prompt; None: "Center: <center>; Surrounding: <surrounding>"
    center: str = ""  # what the photo shows
    surrounding: str = ""  # what should appear around it
    keywords: str = ""  # steer the Surrounding: put first in its text
    caption: bool = True  # with no prompt given, ask the captioner; False: run unconditionally
    captioner: str | None = None  # transformers captioner: preset, hub id or folder; None: the default one
    captioner_url: str | None = None  # an OpenAI-compatible chat-completions server instead
    captioner_model: str | None = None  # the model name that server serves

    @property
    def given(self) -> bool:
        """The user gave a prompt (any of total / center / surrounding): the captioner is not asked."""
        return bool((self.total or "").strip() or self.center.strip() or self.surrounding.strip())

    @property
    def names_captioner(self) -> bool:
        """Any captioner option is set."""
        return bool(self.captioner or self.captioner_url or self.captioner_model)

    def check_captioner(self) -> None:
        """A server and a local model are exclusive; a server needs its model name (``OptionError`` otherwise)."""
        from vipcli_model.errors import OptionError

        if self.captioner_url and self.captioner:
            raise OptionError("`captioner_url` and `captioner` cannot be combined: pick a server or a local model")
        if bool(self.captioner_url) != bool(self.captioner_model):
            raise OptionError("`captioner_url` and `captioner_model` go together (the server and its model name)")


@dataclass(frozen=True)
class ModelConfig:
    """Which model runs, where, and how."""

    model: str = DEFAULT_INPAINT_MODEL  # hub id, preset, diffusers folder, or single .safetensors file
    model_config: str | None = None  # diffusers config (hub id or folder) for a single-file checkpoint
    controlnet: str | None = None  # ControlNet Union paired with a text-to-image SDXL `model`: "union" (the ProMax),
    # a hub id or a folder; None: `model` must be an inpainting model
    adapter: str | None = None  # trained C-T-S adapter: file, folder or hub id
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | fp32 | fp16 | bf16
    cpu_offload: bool = False  # move submodels to the GPU only while they run (CUDA); = memory "model-offload"
    memory: str = "auto"  # GPU memory plan: auto | full | model-offload | 8bit | 4bit | group-offload |
    # sequential-offload (models/memory.py); auto: chosen from the free GPU memory; on a CPU nothing changes
    vae_tiling: bool = False  # decode/encode the VAE in tiles (less memory on large canvases)
    fast: bool = False  # the model family's few-step preset (``FastPreset``): its distilled LoRA fused into the
    # denoiser, its steps / guidance / scheduler where unset, its autoencoder where `vae` is unset
    fast_lora: str | None = None  # with `fast`: this few-step LoRA (hub id, folder or file) instead of the preset's
    compile: bool = False  # torch.compile the UNet (slow first image, faster steps after)
    vae: str | None = None  # "full": the model's autoencoder; "tiny": the family's TAESD; or an AutoencoderTiny hub
    # id / folder; None: the fast preset's with `fast`, else "full"


@dataclass(frozen=True)
class GenerationConfig:
    """The diffusion run."""

    # steps, guidance, scheduler and guidance_interval left None are the model family's to decide (its fast preset's
    # with `fast`): ``models.families.resolve_generation`` fills them when the model is known
    steps: int | None = None  # denoising steps
    guidance: float | None = None  # classifier-free guidance scale (<= 1 turns guidance off)
    seed: int | None = None  # None: a random seed, recorded in the output
    scheduler: str | None = None  # one of SCHEDULERS above
    num_images: int = 1  # results per input image
    negative: str = ""  # negative prompt, paired with every branch
    cts: bool = True  # C-T-S region prompts; False: plain inpainting with the Total prompt
    region_strength: float | None = None  # C-T-S gate in [0, 1]; None: the adapter's gates or the default
    guidance_interval: tuple[float, float] | None = None  # guidance only at steps with noise level sigma in
    # (low, high] (Kynkaanniemi et al. 2024), one UNet pass elsewhere; (0, inf): every step
    deep_cache: int = 0  # N > 1: the deep UNet blocks run at one step in N, their features reused between (DeepCache)


@dataclass(frozen=True)
class BlendConfig:
    """Putting the result back together at full resolution."""

    feather: int = 8  # seam ramp in pixels on the known side; 0 keeps every original pixel byte-identical
    color_match: bool = False  # correct the generated area's colour drift, measured on the known pixels


@dataclass(frozen=True)
class DetailConfig:
    """The detail pass (``detail.py``): the generated area refined in tiles at full resolution after generation."""

    mode: str = "auto"  # auto: on a GPU when the canvas has >= 4x the working size's pixels; on; off
    strength: float = 0.35  # denoising strength of each tile, in (0, 1]: low keeps the first pass's layout
    steps: int | None = None  # denoising steps run per tile; None: the first pass's steps x strength (at least 1)
    tile_size: int | None = None  # tile side in pixels (multiple of 8); None: the model's working resolution
    overlap: int | None = None  # pixels shared by neighbouring tiles (blended); None: an eighth of the tile


MAX_RATIO = 8.0  # the largest factor per side `ratio` takes


def parse_ratio(text: str | float, option: str = "`ratio`") -> float:
    """``"2x"``, ``"2"``, ``"1.5x"`` -> 2.0, 2.0, 1.5 (the factor applied to each side)."""
    raw = str(text).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?|\.\d+)\s*x?", raw)
    if not match:
        raise OptionError(f"{option} '{text}' is not a ratio: use a factor such as 1.5x or 2x")
    ratio = float(match.group(1))
    if not (1.0 <= ratio <= MAX_RATIO):
        raise OptionError(f"{option} '{text}' is out of range: use a factor from 1x to {MAX_RATIO:g}x")
    return ratio


def parse_guidance_interval(text: str) -> tuple[float, float]:
    """``"LOW,HIGH"`` (noise levels sigma; HIGH may be ``inf``) or ``"full"`` (every step) as ``(low, high)``."""
    if text.strip().lower() in ("full", "all", "off"):
        return (0.0, math.inf)
    parts = text.split(",")
    try:
        low, high = (float(part) for part in parts)
    except ValueError:
        raise OptionError(
            f"`guidance_interval` '{text}' is not LOW,HIGH (noise levels, e.g. 0.28,5.42) or 'full'"
        ) from None
    return (low, high)


def check_seed(seed: int | None, num_images: int) -> None:
    """Reject a seed whose images' seeds (image k uses ``seed + k``) would leave 0..2^63-1."""
    if seed is None or 0 <= seed <= 2**63 - max(num_images, 1):
        return
    if num_images > 1 and seed >= 0:
        raise OptionError(
            f"`seed` {seed} is out of range for {num_images} images (image k uses seed + k): use 0 to 2^63-{num_images}"
        )
    raise OptionError(f"`seed` {seed} is out of range: use 0 to 2^63-1")


def check_generation(generation: GenerationConfig, blend: BlendConfig) -> None:
    """Reject bad generation settings, naming the argument (`steps`...; the CLI shows its flag), before any model work.

    Fields left None (the family's to fill) pass: the family's values are valid.
    """
    if generation.steps is not None and not 1 <= generation.steps <= 1000:
        raise OptionError(f"`steps` {generation.steps} is out of range: use 1 to 1000")
    if generation.guidance is not None and not 0.0 <= generation.guidance <= 50.0:
        raise OptionError(f"`guidance` {generation.guidance} is out of range: use 0 to 50 (1 turns guidance off)")
    if generation.num_images < 1 or generation.num_images > 64:
        raise OptionError(f"`num_images` {generation.num_images} is out of range: use 1 to 64")
    if generation.scheduler is not None and generation.scheduler not in SCHEDULERS:
        raise OptionError(f"`scheduler` '{generation.scheduler}' is not one of: {', '.join(SCHEDULERS)}")
    if generation.region_strength is not None and not 0.0 <= generation.region_strength <= 1.0:
        raise OptionError(f"`region_strength` {generation.region_strength} is out of range: use 0 to 1")
    check_seed(generation.seed, generation.num_images)
    if not 0 <= generation.deep_cache <= 50:
        raise OptionError(f"`deep_cache` {generation.deep_cache} is out of range: use 0 (off) or 2 to 50")
    interval = generation.guidance_interval
    if interval is not None and not (0.0 <= interval[0] < interval[1] and not math.isnan(interval[1])):
        raise OptionError(
            f"`guidance_interval` {interval[0]},{interval[1]} is not an interval: use 0 <= LOW < HIGH (HIGH may be inf)"
        )
    if blend.feather < 0 or blend.feather > 512:
        raise OptionError(f"`feather` {blend.feather} is out of range: use 0 to 512 pixels")
