"""Typed settings for each stage of an outpaint. Every field says what it does."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .hub import DEFAULT_INPAINT_MODEL

# The fast preset: LCM-LoRA distilled for SD-1.5, few steps, guidance off (one UNet pass per step).
DEFAULT_FAST_LORA = "latent-consistency/lcm-lora-sdv1-5"
FAST_STEPS = 6
FAST_GUIDANCE = 1.0
FAST_SCHEDULER = "lcm"


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
class ModelConfig:
    """Which model runs, where, and how."""

    model: str = DEFAULT_INPAINT_MODEL  # hub id, preset, diffusers folder, or single .safetensors file
    model_config: str | None = None  # diffusers config (hub id or folder) for a single-file checkpoint
    adapter: str | None = None  # trained C-T-S adapter: file, folder or hub id
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | fp32 | fp16 | bf16
    cpu_offload: bool = False  # move submodels to the GPU only while they run (CUDA)
    vae_tiling: bool = False  # decode/encode the VAE in tiles (less memory on large canvases)
    fast_lora: str | None = None  # few-step distilled LoRA fused into the UNet (LCM-LoRA); None: off
    compile: bool = False  # torch.compile the UNet (slow first image, faster steps after)


@dataclass(frozen=True)
class GenerationConfig:
    """The diffusion run."""

    steps: int = 25  # denoising steps
    guidance: float = 7.5  # classifier-free guidance scale (<= 1 turns guidance off)
    seed: int | None = None  # None: a random seed, recorded in the output
    scheduler: str = "dpm++"  # one of pipeline.SCHEDULERS
    num_images: int = 1  # results per input image
    negative: str = ""  # negative prompt, paired with every branch
    cts: bool = True  # C-T-S region prompts; False: plain inpainting with the Total prompt
    region_strength: float | None = None  # C-T-S gate in [0, 1]; None: the adapter's gates or the default


@dataclass(frozen=True)
class BlendConfig:
    """Putting the result back together at full resolution."""

    feather: int = 8  # seam ramp in pixels on the known side; 0 keeps every original pixel byte-identical
    color_match: bool = False  # correct the generated area's colour drift, measured on the known pixels
