"""Instruction-based editing (``vip edit``): an InstructPix2Pix model edits a photo, the photo keeps its resolution.

The chain for one image:

1. (``expand``) the captioner looks at the photo and rewrites a terse instruction into a concrete, visual one
   that fits the editor's 77-token CLIP window: MGIE's *expressive instruction* step (arXiv 2309.17102). Only
   that step: MGIE's learned visual tokens and edit head (LLaVA-7B, non-commercial weights) are not used;
2. the photo is scaled to the model's working resolution (512 px on the long side for SD-1.5 models) and
   diffusers' ``StableDiffusionInstructPix2PixPipeline`` edits it (Paint by Inpaint, arXiv 2404.18212, ships
   its checkpoints for this pipeline);
3. a change mask compares the decoded result with the VAE round trip of the input (so the VAE's own blur
   is not counted as a change), thresholded and feathered; only changed pixels come from the upscaled result,
   every other pixel is the original's at full resolution. A user ``mask`` limits the edit further: outside
   it every pixel is the original, byte for byte.

Heavy imports (torch, diffusers) happen when an ``Editor`` is built.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from vipcli_model.config import SCHEDULERS, ModelConfig, check_seed, scheduler_key
from vipcli_model.errors import CaptionerError, ModelLoadError, ModelNotFoundError, OptionError
from vipcli_model.outpainting.blend import seam_weights

logger = logging.getLogger(__name__)

# The default editor: Paint by Inpaint's general model fine-tuned on MagicBrush, the variant its paper reports for
# general (not only "add an object") instructions. The add-* models are for adding objects (`pbi-add`).
DEFAULT_EDIT_MODEL = "paint-by-inpaint/general-finetuned-mb"
EXPAND_MAX_NEW_TOKENS = 60  # the rewritten instruction is one sentence; 77 CLIP tokens at most after fitting
EXPAND_TEMPLATE_VERSION = 1
EXPAND_QUESTION = (
    "You help an image-editing model that follows short instructions. Look at the image and rewrite this "
    "instruction as one concrete, visual editing instruction: say what to add or change, where in the image, "
    "and what it looks like (colour, size, material). Keep it under 40 words and start with a verb.\n"
    "Instruction: {instruction}\nRewritten instruction:"
)
_NOT_AN_INSTRUCTION = re.compile(
    r"^(i'?m sorry|sorry|i cannot|i can'?t|i am unable|as an ai|unfortunately)\b|\?\s*$", re.IGNORECASE
)


@dataclass(frozen=True)
class EditConfig:
    """How one edit runs (besides the model)."""

    instruction: str = ""  # what to change, e.g. "add a red boat on the lake"
    steps: int = 50  # denoising steps (the Paint by Inpaint authors' example)
    guidance: float = 7.0  # text guidance: higher follows the instruction more
    image_guidance: float = 1.5  # image guidance: higher stays closer to the input photo
    negative: str = ""  # negative prompt
    seed: int | None = None  # None: a random seed, recorded in the output
    scheduler: str | None = None  # one of config.SCHEDULERS; None: the model's own (Euler ancestral for PBI)
    num_images: int = 1  # results per input image
    mask: str | None = None  # a mask file (white = may change); outside it every pixel is the original
    feather: int = 8  # soften the change mask over N pixels (inside the user mask); 0: hard edges
    threshold: int = 24  # 0-255: a pixel counts as changed when the result differs this much from the VAE round trip
    expand: bool = False  # rewrite the instruction with the captioner first (MGIE's expressive instruction)


def check_edit_config(config: EditConfig) -> None:
    """Reject settings that are wrong without any image or model (``OptionError`` naming the argument)."""
    if not config.instruction.strip():
        raise OptionError('`instruction` is empty: say what to change, e.g. "add a red boat on the lake"')
    if not 1 <= config.steps <= 1000:
        raise OptionError(f"`steps` {config.steps} is out of range: use 1 to 1000")
    if not 0.0 <= config.guidance <= 50.0:
        raise OptionError(f"`guidance` {config.guidance} is out of range: use 0 to 50 (1 or less turns it off)")
    if not 0.0 <= config.image_guidance <= 50.0:
        raise OptionError(f"`image_guidance` {config.image_guidance} is out of range: use 0 to 50")
    if not 1 <= config.num_images <= 64:
        raise OptionError(f"`num_images` {config.num_images} is out of range: use 1 to 64")
    if config.scheduler is not None and config.scheduler not in SCHEDULERS:
        raise OptionError(f"`scheduler` '{config.scheduler}' is not one of: {', '.join(SCHEDULERS)}")
    check_seed(config.seed, config.num_images)
    if not 0 <= config.feather <= 512:
        raise OptionError(f"`feather` {config.feather} is out of range: use 0 to 512 pixels")
    if not 0 <= config.threshold <= 255:
        raise OptionError(f"`threshold` {config.threshold} is out of range: use 0 (everything changes) to 255")


# ------------------------------------------------------------------------------------------- the change mask


def working_size(size: tuple[int, int], resolution: int, multiple: int = 8) -> tuple[int, int]:
    """The size the model sees: the long side at ``resolution`` (never larger than the photo), multiples of 8."""
    width, height = size
    scale = min(1.0, resolution / max(width, height))
    return (
        max(multiple, round(width * scale / multiple) * multiple),
        max(multiple, round(height * scale / multiple) * multiple),
    )


def change_mask(result: Image.Image, reference: Image.Image, threshold: int) -> Image.Image:
    """Mode "L": 255 where ``result`` differs from ``reference`` by more than ``threshold`` (0-255, any channel).

    The difference is smoothed over 3x3 pixels first, so single noisy pixels do not count and thin edits do.
    ``threshold`` 0 marks every pixel changed.
    """
    if threshold <= 0:
        return Image.new("L", result.size, 255)
    a = np.asarray(result.convert("RGB"), dtype=np.int16)
    b = np.asarray(reference.convert("RGB").resize(result.size, Image.Resampling.BICUBIC), dtype=np.int16)
    difference = Image.fromarray(np.abs(a - b).max(axis=2).astype(np.uint8), "L").filter(ImageFilter.BoxBlur(1))
    return difference.point(lambda value: 255 if value > threshold else 0)


def compose_edit(
    original: Image.Image,
    edited: Image.Image,
    changed: Image.Image,
    *,
    feather: int = 0,
    user_mask: Image.Image | None = None,
) -> Image.Image:
    """The final image at the original's size: ``edited`` (upscaled) where ``changed``, the original elsewhere.

    ``changed`` may be at any size (it is scaled to the original's); ``feather`` ramps the edit's edge outward.
    With ``user_mask`` (the original's size, white = may change) the weights are cut to it, so every pixel outside
    it is the original's, byte for byte, whatever the feather.
    """
    size = original.size
    hard = changed.convert("L").resize(size, Image.Resampling.BILINEAR).point(lambda value: 255 if value >= 128 else 0)
    weights = seam_weights(hard, feather)
    if user_mask is not None:
        weights = ImageChops.darker(weights, user_mask.convert("L").point(lambda value: 255 if value >= 128 else 0))
    upscaled = edited.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    return Image.composite(upscaled, original.convert("RGB"), weights)


# ------------------------------------------------------------------------------------------- expansion


@dataclass
class ExpandedInstruction:
    text: str  # what the editor gets: fitted to its 77-token window
    captioner: str  # which captioner wrote it
    truncated: bool  # True when the answer was cut to fit


def expand_instruction(
    captioner: Any, image: Image.Image, instruction: str, *, tokenizer: Any = None
) -> ExpandedInstruction:
    """MGIE's expressive-instruction step: the captioner rewrites ``instruction`` for this image.

    Raises ``CaptionerError`` when the answer is empty or is not an instruction (a refusal, a question).
    """
    from vipcli_model.captioning.text import clean_answer, drop_unfinished_sentence, excerpt, fit_to_token_window

    name = getattr(captioner, "name", type(captioner).__name__)
    raw = captioner.generate(
        image, EXPAND_QUESTION.format(instruction=instruction.strip()), max_new_tokens=EXPAND_MAX_NEW_TOKENS
    )
    if not isinstance(raw, str):
        raise CaptionerError(f"captioner '{name}' answered {type(raw).__name__}, not text")
    text = drop_unfinished_sentence(clean_answer(raw))
    if not text or _NOT_AN_INSTRUCTION.search(text):
        raise CaptionerError(
            f"captioner '{name}' did not rewrite the instruction (answer: {excerpt(raw, 80)!r}); run without `expand`"
        )
    fitted, truncated = fit_to_token_window(text, tokenizer)
    return ExpandedInstruction(fitted, name, truncated)


# ------------------------------------------------------------------------------------------- the model


def load_edit_pipeline(config: ModelConfig, *, tqdm_class: Any = None) -> Any:
    """An InstructPix2Pix pipeline from a hub id, preset or diffusers folder; refuses any other model in one line."""
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from vipcli_model.device import pick_device, pick_dtype
    from vipcli_model.models import hub
    from vipcli_model.models.catalog import EDIT
    from vipcli_model.models.loading import DTYPE_KEYWORD, check_model_config

    check_model_config(config)
    device = pick_device(config.device)
    dtype = pick_dtype(device, config.dtype)
    spec = hub.resolve_spec(config.model)
    path = Path(spec).expanduser()
    common = {DTYPE_KEYWORD: dtype, "safety_checker": None, "requires_safety_checker": False}
    what = "editing model"
    if path.is_file():
        raise ModelLoadError(f"'{spec}' is a single file: vip edit loads diffusers folders and hub ids only")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"model folder '{spec}' has no model_index.json: pass a diffusers folder or a hub id"
            )
        pipe = hub.load_with_errors(
            spec, what, lambda: StableDiffusionInstructPix2PixPipeline.from_pretrained(str(path), **common)
        )
    elif hub.is_local(spec):
        raise ModelNotFoundError(f"model path '{spec}' does not exist")
    else:
        local = hub.ensure_model(spec, EDIT, what=what, tqdm_class=tqdm_class, single_file=False)
        pipe = hub.load_with_errors(
            spec,
            what,
            lambda: StableDiffusionInstructPix2PixPipeline.from_pretrained(
                str(local.folder), variant=local.files.variant, **common
            ),
        )
    channels = int(pipe.unet.config.in_channels)
    if channels != 8:
        kinds = {
            9: "an inpainting model (9-channel UNet; use it with vip outpaint)",
            4: "a text-to-image model (4-channel UNet)",
        }
        kind = kinds.get(channels, f"a {channels}-channel UNet")
        raise ModelLoadError(
            f"'{spec}' is not an InstructPix2Pix model: it is {kind}; vip edit needs an 8-channel UNet"
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    if device.type == "cpu":
        pipe.vae.to(memory_format=torch.channels_last)
    return pipe


@dataclass
class EditResult:
    images: list[Image.Image]  # at the input's full size
    seed: int  # the first image's; image k was made with ``seed + k`` (``seeds``), as `num_images` 1 remakes it
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        """Each image's own seed: an edit with that seed and one image makes exactly that image."""
        return [self.seed + index for index in range(len(self.images))]


class Editor:
    """A loaded InstructPix2Pix pipeline that edits one photo at a time (``edit``)."""

    def __init__(self, model: ModelConfig, *, tqdm_class: Any = None, pipe: Any = None) -> None:
        self.model_config = model
        self.model_name = model.model
        self.pipe = pipe if pipe is not None else load_edit_pipeline(model, tqdm_class=tqdm_class)
        self._scheduler = self.pipe.scheduler

    @property
    def resolution(self) -> int:
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    def round_trip(self, image: Image.Image, latents: Any = None) -> Image.Image:
        """The input as the VAE gives it back (encode, decode): what "unchanged" looks like after the model.

        ``latents``: the input's latents as the pipeline encoded them (its ``image_latents``), to skip the encode.
        """
        import torch

        pipe = self.pipe
        with torch.no_grad():
            if latents is None:
                pixels = pipe.image_processor.preprocess(image).to(device=pipe.device, dtype=pipe.vae.dtype)
                latents = pipe.vae.encode(pixels).latent_dist.mode()
            decoded = pipe.vae.decode(latents.to(pipe.vae.dtype)).sample  # InstructPix2Pix keeps them unscaled
        return pipe.image_processor.postprocess(decoded, output_type="pil")[0]

    def _set_scheduler(self, name: str | None) -> str:
        if name is None:
            self.pipe.scheduler = self._scheduler
            return scheduler_key(self._scheduler)
        import diffusers

        class_name, extra = SCHEDULERS[name]
        self.pipe.scheduler = getattr(diffusers, class_name).from_config(self._scheduler.config, **extra)
        return name

    def edit(
        self,
        image: Image.Image,
        config: EditConfig,
        *,
        instruction: str | None = None,
        user_mask: Image.Image | None = None,
        step_callback: Callable[[int, int], None] | None = None,
        source: str = "",
        instruction_info: dict | None = None,
    ) -> EditResult:
        """Edit ``image`` with ``instruction`` (default ``config.instruction``); results at the image's size."""
        import torch

        check_edit_config(config)
        prompt = (instruction or config.instruction).strip()
        seed = config.seed if config.seed is not None else random.randrange(2**32)
        size = working_size(image.size, self.resolution)
        work = (
            image.convert("RGB").resize(size, Image.Resampling.LANCZOS) if size != image.size else image.convert("RGB")
        )
        scheduler = self._set_scheduler(config.scheduler)
        encoded: dict[str, Any] = {}
        done_before = 0  # the steps of the images before this one: progress counts the run's steps

        def on_step(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            # the input's latents, encoded by the pipeline: the change mask reuses them (no second encode)
            encoded.setdefault("latents", tensors["image_latents"][:1].detach())
            if step_callback is not None:
                step_callback(done_before + step + 1, config.steps * config.num_images)
            return {}

        # one pipeline call per image, each with its own seed (seed + k): image k of a run is exactly what a
        # one-image run with its recorded seed makes (a batch would draw every image's noise from one generator)
        edits = []
        for index in range(config.num_images):
            done_before = index * config.steps
            output = self.pipe(
                prompt=prompt,
                image=work,
                negative_prompt=config.negative or None,
                num_inference_steps=config.steps,
                guidance_scale=config.guidance,
                image_guidance_scale=config.image_guidance,
                num_images_per_prompt=1,
                generator=torch.Generator(device="cpu").manual_seed(seed + index),
                callback_on_step_end=on_step,
                callback_on_step_end_tensor_inputs=["latents", "image_latents"],
            )
            edits.append(output.images[0])
        reference = self.round_trip(work, encoded.get("latents")) if config.threshold > 0 else work
        finals, fractions = [], []
        for edited in edits:
            changed = change_mask(edited, reference, config.threshold)
            finals.append(compose_edit(image, edited, changed, feather=config.feather, user_mask=user_mask))
            fractions.append(round(float(np.asarray(changed).mean() / 255.0), 4))
        metadata = {
            "source": source,
            "model": self.model_name,
            "instruction": config.instruction.strip(),
            "edit_prompt": prompt,
            "instruction_source": instruction_info or {"source": "user"},
            **{key: value for key, value in asdict(config).items() if key not in ("instruction", "expand", "seed")},
            "seed": seed,
            "scheduler": scheduler,
            "image_size": list(image.size),
            "working_size": list(size),
            "changed_fraction": fractions,
            "device": str(self.pipe.device),
            "dtype": str(self.pipe.unet.dtype).replace("torch.", ""),
        }
        return EditResult(images=finals, seed=seed, metadata=metadata)
