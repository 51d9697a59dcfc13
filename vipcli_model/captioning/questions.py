"""Asking a captioner for prompts: the questions of ``caption_templates`` for a photo to extend
(``caption_for_outpaint``) or a training image (``caption_for_training``), and the center box."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from vipcli_model.captioning import templates
from vipcli_model.captioning.backends import Captioner, EmptyAnswerError
from vipcli_model.captioning.text import (
    CLIP_MAX_TOKENS,
    clean_answer,
    count_tokens,
    drop_unfinished_sentence,
    fit_prompts,
)
from vipcli_model.captioning.text import excerpt as _excerpt
from vipcli_model.config import parse_ratio as parse_canvas_ratio
from vipcli_model.errors import CaptionerError, OptionError
from vipcli_model.prompts import RegionPrompts, merge_keywords

if TYPE_CHECKING:
    from vipcli_model.captioning.files import CaptionCache

logger = logging.getLogger(__name__)

MODE_OUTPAINT = "outpaint"
MODE_TRAINING = "training"

Box = tuple[int, int, int, int]


# ============================================================================== captions


@dataclass
class CaptionResult:
    """The prompts made for one image, and how they were made."""

    prompts: RegionPrompts
    truncated: list[str]  # prompts cut to fit the token window: "center", "surrounding", "total"
    model: str  # the captioner's name
    template_version: str  # caption_templates.TEMPLATE_VERSION of the questions asked
    mode: str  # "outpaint" (a photo to extend) or "training" (center crop + border)
    center_box: Box | None = None  # training mode: the center region (x0, y0, x1, y1)
    cached: bool = False  # the answers came from the caption cache (no model work)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: prompts first, then provenance."""
        record: dict[str, Any] = self.prompts.to_dict()
        if self.center_box is not None:
            record["center_box"] = list(self.center_box)
        record.update(
            model=self.model,
            template_version=self.template_version,
            mode=self.mode,
            truncated=list(self.truncated),
            cached=self.cached,
        )
        return record


def caption_for_outpaint(
    captioner: Captioner,
    image: Image.Image,
    *,
    keywords: str = "",
    tokenizer: Any = None,
    cache: CaptionCache | None = None,
    max_tokens: int = CLIP_MAX_TOKENS,
) -> CaptionResult:
    """Prompts for a photo to extend: the photo is the Center; the Surrounding is what plausibly lies
    beyond the frame, with ``keywords`` asked for and put first; Total = "Center: ...; Surrounding: ...".
    """
    image = _rgb(image)
    key = cache.key(image, model=captioner.name, mode=MODE_OUTPAINT, keywords=keywords) if cache else ""
    answers = cache.get(key) if cache is not None else None
    cached = answers is not None
    if answers is None:
        answers = {
            "center": _ask(captioner, image, templates.outpaint_center_instruction(), "Center"),
            "surrounding": _ask(captioner, image, templates.outpaint_surrounding_instruction(keywords), "Surrounding"),
        }
        if cache is not None:
            cache.put(key, answers, model=captioner.name, mode=MODE_OUTPAINT)
    prompts, truncated = fit_prompts(
        answers["center"], merge_keywords(answers["surrounding"], keywords), tokenizer, max_tokens
    )
    return CaptionResult(
        prompts=prompts,
        truncated=truncated,
        model=captioner.name,
        template_version=templates.TEMPLATE_VERSION,
        mode=MODE_OUTPAINT,
        cached=cached,
    )


def caption_for_training(
    captioner: Captioner,
    image: Image.Image,
    center_box: Box,
    *,
    tokenizer: Any = None,
    cache: CaptionCache | None = None,
    max_tokens: int = CLIP_MAX_TOKENS,
) -> CaptionResult:
    """Prompts for a training image whose full content is known: the Center describes the crop
    ``center_box``; the Surrounding describes the image with that box painted grey.
    """
    image = _rgb(image)
    box = check_center_box(center_box, image.size)
    key = cache.key(image, model=captioner.name, mode=MODE_TRAINING, center_box=box) if cache else ""
    answers = cache.get(key) if cache is not None else None
    cached = answers is not None
    if answers is None:
        masked = image.copy()
        masked.paste(templates.MASK_GREY, box)
        answers = {
            "center": _ask(captioner, image.crop(box), templates.training_center_instruction(), "Center"),
            "surrounding": _ask(captioner, masked, templates.training_surrounding_instruction(), "Surrounding"),
        }
        if cache is not None:
            cache.put(key, answers, model=captioner.name, mode=MODE_TRAINING)
    prompts, truncated = fit_prompts(answers["center"], answers["surrounding"], tokenizer, max_tokens)
    return CaptionResult(
        prompts=prompts,
        truncated=truncated,
        model=captioner.name,
        template_version=templates.TEMPLATE_VERSION,
        mode=MODE_TRAINING,
        center_box=box,
        cached=cached,
    )


def _ask(captioner: Captioner, image: Image.Image, instruction: str, what: str) -> str:
    raw = captioner.generate(image, instruction, max_new_tokens=templates.MAX_NEW_TOKENS)
    if not isinstance(raw, str):
        raise CaptionerError(f"captioner '{captioner.name}' answered {type(raw).__name__}, not text")
    text = clean_answer(raw)
    if count_tokens(raw) - 2 >= 0.8 * templates.MAX_NEW_TOKENS:  # probably stopped by the token limit
        text = drop_unfinished_sentence(text)
    if not text:
        raise EmptyAnswerError(
            f"captioner '{captioner.name}' gave no usable {what} description (raw answer: {_excerpt(raw, 60)!r})"
        )
    logger.debug("%s answer: %s", what, text)
    return text


def _rgb(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        inner = getattr(image, "image", None)  # an image_io.LoadedImage
        if not isinstance(inner, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        image = inner
    return image if image.mode == "RGB" else image.convert("RGB")


# ============================================================================== center box


def parse_ratio(value: str | float) -> float:
    """``ratio`` for training captions: how much larger the full image is than its center (above 1)."""
    ratio = parse_canvas_ratio(value, "`ratio`")
    if ratio <= 1.0:
        raise OptionError(f"`ratio` '{value}' is out of range: it must be above 1 (a border to describe), e.g. 2x")
    return ratio


def center_box_for_ratio(size: tuple[int, int], ratio: float) -> Box:
    """The middle 1/ratio of each side: 256x256 at 2x -> (64, 64, 192, 192)."""
    width, height = size
    box_width = max(1, round(width / ratio))
    box_height = max(1, round(height / ratio))
    left = (width - box_width) // 2
    top = (height - box_height) // 2
    return (left, top, left + box_width, top + box_height)


def check_center_box(box: Sequence[int], size: tuple[int, int]) -> Box:
    """``box`` as (x0, y0, x1, y1) ints, checked to be a non-empty region inside an image of ``size``."""
    try:
        left, top, right, bottom = (int(value) for value in box)
    except (TypeError, ValueError):
        raise OptionError(f"center box {box!r} is not four integers (x0, y0, x1, y1)") from None
    width, height = size
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise OptionError(
            f"center box {box!r} is not a non-empty region inside the {width}x{height} image "
            "(0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height)"
        )
    return (left, top, right, bottom)
