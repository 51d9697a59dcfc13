"""Expansion geometry: where the original sits on the new canvas, which pixels to generate, and the
size the model works at (``Geometry``, ``prepare_geometry``, ``to_working_resolution``).

All geometry is in integer pixels of the *output* canvas. Masks are mode "L" images where
255 means "generate" and 0 means "known" (the diffusers / SD inpainting convention).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from PIL import Image

from vipcli_model.config import MAX_RATIO, ExpansionConfig, parse_ratio
from vipcli_model.errors import OptionError
from vipcli_model.outpainting.blend import prefill

MAX_CANVAS_SIDE = 32_768
MAX_CANVAS_PIXELS = 268_435_456  # 16k x 16k

# Fractions (fx, fy) of the free space that goes left of / above the original.
ALIGNMENTS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.0, 0.5),
    "right": (1.0, 0.5),
    "top": (0.5, 0.0),
    "bottom": (0.5, 1.0),
    "top-left": (0.0, 0.0),
    "top-right": (1.0, 0.0),
    "bottom-left": (0.0, 1.0),
    "bottom-right": (1.0, 1.0),
}


@dataclass(frozen=True)
class Margin:
    """A margin given by the user: pixels, or a percentage of the image side it extends."""

    value: float
    percent: bool = False

    def pixels(self, side: int) -> int:
        return _round(side * self.value / 100.0) if self.percent else int(self.value)


@dataclass(frozen=True)
class CanvasPlan:
    """Where the original image sits on the output canvas.

    image_size:  (width, height) of the original.
    canvas_size: (width, height) of the output.
    offset:      (x, y) of the original's top-left corner on the canvas.
    """

    image_size: tuple[int, int]
    canvas_size: tuple[int, int]
    offset: tuple[int, int]

    @property
    def image_box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the original on the canvas, right/bottom exclusive."""
        x, y = self.offset
        w, h = self.image_size
        return (x, y, x + w, y + h)

    @property
    def margins(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) pixels added on each side."""
        x, y = self.offset
        w, h = self.image_size
        cw, ch = self.canvas_size
        return (x, y, cw - w - x, ch - h - y)

    @property
    def expands(self) -> bool:
        return self.canvas_size != self.image_size


# ---------------------------------------------------------------- parsing user text


def parse_aspect(text: str) -> tuple[float, float]:
    """``"16:9"`` (or ``"16/9"``, ``"1.85:1"``) -> (16.0, 9.0)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[:/]\s*(\d+(?:\.\d+)?)\s*", str(text))
    if not match or float(match.group(1)) <= 0 or float(match.group(2)) <= 0:
        raise OptionError(f"`aspect` '{text}' is not an aspect ratio: use W:H such as 16:9, 4:3 or 1:1")
    width, height = float(match.group(1)), float(match.group(2))
    if not (1 / 20 <= width / height <= 20):
        raise OptionError(f"`aspect` '{text}' is too extreme: use a ratio between 1:20 and 20:1")
    return width, height


def parse_size(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> (1024, 768)."""
    match = re.fullmatch(r"\s*(\d+)\s*[x×X*]\s*(\d+)\s*", str(text))
    if not match:
        raise OptionError(f"`size` '{text}' is not a size: use WxH in pixels, such as 1920x1080")
    width, height = int(match.group(1)), int(match.group(2))
    _check_canvas((width, height), "`size`")
    return width, height


def parse_margin(text: str | int | None, option: str) -> Margin | None:
    """``"100"`` -> 100 px; ``"10%"`` -> 10 % of the image side that margin extends."""
    if text is None:
        return None
    raw = str(text).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%|px)?", raw)
    if not match:
        raise OptionError(f"{option} '{text}' is not a margin: use pixels (120) or a percentage (25%)")
    value, unit = float(match.group(1)), match.group(2)
    if unit == "%":
        if value > 100 * MAX_RATIO:
            raise OptionError(f"{option} '{text}' is too large: at most {100 * MAX_RATIO:g}%")
        return Margin(value, percent=True)
    if value != int(value):
        raise OptionError(f"{option} '{text}': pixel margins are whole numbers")
    return Margin(value)


def _check_canvas(size: tuple[int, int], what: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise OptionError(f"{what}: canvas {width}x{height} is empty")
    if max(width, height) > MAX_CANVAS_SIDE or width * height > MAX_CANVAS_PIXELS:
        raise OptionError(
            f"{what}: canvas {width}x{height} is too large "
            f"(at most {MAX_CANVAS_SIDE} px a side and {MAX_CANVAS_PIXELS // 1_000_000} Mpx)"
        )


# ---------------------------------------------------------------- planning


def check_expansion_options(
    *,
    ratio: str | None = None,
    aspect: str | None = None,
    size: str | None = None,
    sides: dict[str, str | None] | None = None,
    align: str | None = None,
) -> None:
    """Reject combinations that make no sense, naming the options (before any work starts)."""
    sides = {k: v for k, v in (sides or {}).items() if v is not None}
    whole = [name for name, value in (("`ratio`", ratio), ("`aspect`", aspect), ("`size`", size)) if value]
    if len(whole) > 1:
        raise OptionError(f"{' and '.join(whole)} cannot be combined: pick one way to set the canvas")
    if whole and sides:
        side_names = ", ".join(f"`{name}`" for name in sides)
        raise OptionError(
            f"{whole[0]} cannot be combined with {side_names}: per-side margins set the canvas themselves"
        )
    if align is not None and align not in ALIGNMENTS:
        raise OptionError(f"`align` '{align}' is not one of: {', '.join(ALIGNMENTS)}")
    if align is not None and align != "center" and sides:
        raise OptionError("`align` has no effect with per-side margins (`left`/`right`/`top`/`bottom` place the image)")
    if align is not None and align != "center" and not whole:
        raise OptionError("`align` needs `ratio`, `aspect` or `size` (it places the image on a larger canvas)")


def _round(value: float) -> int:
    """Half-up rounding (Python's round() goes to even, which splits odd sizes unpredictably)."""
    return int(math.floor(value + 0.5))


def validate_expansion_values(
    *,
    ratio: str | None = None,
    aspect: str | None = None,
    size: str | None = None,
    sides: dict[str, str | None] | None = None,
) -> None:
    """Parse every expansion value once, so bad text fails before any model is loaded."""
    if ratio is not None:
        parse_ratio(ratio, "`ratio`")
    if aspect is not None:
        parse_aspect(aspect)
    if size is not None:
        parse_size(size)
    for name, value in (sides or {}).items():
        parse_margin(value, f"`{name}`")


def plan_canvas(
    image_size: tuple[int, int],
    *,
    ratio: str | float | None = None,
    aspect: str | None = None,
    size: str | None = None,
    left: str | None = None,
    right: str | None = None,
    top: str | None = None,
    bottom: str | None = None,
    align: str | None = "center",
) -> CanvasPlan:
    """Compute the output canvas for one image.

    Exactly one of: ``ratio`` (each side scaled by the factor), ``aspect`` (grow the smaller
    dimension just enough to reach W:H), ``size`` (an explicit canvas at least as large as the
    image), or per-side margins. With none of them the canvas is the image itself (for
    ``--mask`` inpainting inside the frame).
    """
    align = align or "center"
    sides = {"left": left, "right": right, "top": top, "bottom": bottom}
    check_expansion_options(ratio=ratio, aspect=aspect, size=size, sides=sides, align=align)
    width, height = image_size
    if width < 1 or height < 1:
        raise OptionError(f"image size {width}x{height} is empty")

    if any(value is not None for value in sides.values()):
        margin = {name: parse_margin(value, f"`{name}`") for name, value in sides.items()}
        pixels = {
            name: (m.pixels(width if name in ("left", "right") else height) if m else 0) for name, m in margin.items()
        }
        canvas = (width + pixels["left"] + pixels["right"], height + pixels["top"] + pixels["bottom"])
        _check_canvas(canvas, "`left`/`right`/`top`/`bottom`")
        return CanvasPlan(image_size, canvas, (pixels["left"], pixels["top"]))

    if ratio is not None:
        factor = parse_ratio(ratio, "`ratio`")
        canvas = (_round(width * factor), _round(height * factor))
        what = "`ratio`"
    elif aspect is not None:
        aw, ah = parse_aspect(aspect)
        target = aw / ah
        if width / height < target:  # too narrow: widen
            canvas = (max(width, _round(height * target)), height)
        else:  # too wide (or equal): heighten
            canvas = (width, max(height, _round(width / target)))
        what = "`aspect`"
    elif size is not None:
        canvas = parse_size(size)
        if canvas[0] < width or canvas[1] < height:
            raise OptionError(
                f"`size` {canvas[0]}x{canvas[1]} is smaller than the image ({width}x{height}): "
                "outpainting only grows the canvas"
            )
        what = "`size`"
    else:
        return CanvasPlan(image_size, image_size, (0, 0))

    _check_canvas(canvas, what)
    fx, fy = ALIGNMENTS[align]
    offset = (_round((canvas[0] - width) * fx), _round((canvas[1] - height) * fy))
    return CanvasPlan(image_size, canvas, offset)


# ---------------------------------------------------------------- pixels


def outpaint_mask(
    plan: CanvasPlan, extra_mask: Image.Image | None = None, alpha: Image.Image | None = None
) -> Image.Image:
    """The region to generate on the canvas (255 = generate).

    The border outside the original, plus ``extra_mask`` (white = generate; either the image's or
    the canvas's size), plus the original's fully transparent pixels when ``alpha`` is given.
    """
    mask = Image.new("L", plan.canvas_size, 255)
    if alpha is not None:
        if alpha.size != plan.image_size:
            raise OptionError(f"alpha size {alpha.size} differs from the image size {plan.image_size}")
        mask.paste(alpha.point(lambda value: 255 if value == 0 else 0), plan.offset)
    else:  # a filled box: no image-sized buffer
        mask.paste(0, plan.image_box)
    if extra_mask is not None:
        extra = extra_mask.convert("L").point(lambda value: 255 if value >= 128 else 0)
        if extra.size == plan.canvas_size:
            placed = extra
        elif extra.size == plan.image_size:
            placed = Image.new("L", plan.canvas_size, 0)
            placed.paste(extra, plan.offset)
        else:
            raise OptionError(
                f"`mask` is {extra.size[0]}x{extra.size[1]}, but must match the image "
                f"({plan.image_size[0]}x{plan.image_size[1]}) or the canvas "
                f"({plan.canvas_size[0]}x{plan.canvas_size[1]})"
            )
        from PIL import ImageChops

        mask = ImageChops.lighter(mask, placed)
    return mask


def place_on_canvas(image: Image.Image, plan: CanvasPlan, fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """The original pasted at its place on a canvas of ``fill`` colour."""
    if image.size != plan.image_size:
        raise OptionError(f"image size {image.size} differs from the plan's {plan.image_size}")
    canvas = Image.new("RGB", plan.canvas_size, fill)
    canvas.paste(image if image.mode == "RGB" else image.convert("RGB"), plan.offset)  # no copy of an RGB image
    return canvas


def working_size(canvas_size: tuple[int, int], native: int, multiple: int = 8) -> tuple[int, int]:
    """The size the model runs at: the canvas's aspect, about ``native``² pixels, multiples of ``multiple``.

    A 4000-px canvas is generated at about the model's native size (512 px for SD-1.5) and
    upscaled; a small canvas is generated at native size too (SD produces poor results far
    below it).
    """
    width, height = canvas_size
    scale = math.sqrt(native * native / float(width * height))
    work_w = max(multiple, int(round(width * scale / multiple)) * multiple)
    work_h = max(multiple, int(round(height * scale / multiple)) * multiple)
    return work_w, work_h


# ---------------------------------------------------------------- one image's geometry


@dataclass
class Geometry:
    """The canvas, the region to generate, and the working resolution of one image."""

    plan: CanvasPlan
    mask: Image.Image  # canvas size, 255 = generate
    canvas: Image.Image  # canvas size, the original placed, black elsewhere
    work_size: tuple[int, int] | None  # the size the model runs at; None when no model is involved (a preview)

    @property
    def has_work(self) -> bool:
        return self.mask.getextrema()[1] > 0


def prepare_geometry(
    image: Image.Image,
    expansion: ExpansionConfig,
    native: int | None = None,
    alpha: Image.Image | None = None,
    extra_mask: Image.Image | None = None,
    multiple: int = 8,
) -> Geometry:
    """Plan the canvas and masks for one image (no model needed: ``--preview`` uses this alone).

    ``native`` is the model's working resolution (``VipOutpaintPipeline.working_resolution``);
    without it the working size is left unplanned. ``multiple``: what working sizes must be multiples of
    (the pipeline's ``size_multiple``: 8 for SD, 16 for FLUX).
    """
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
    work_size = working_size(plan.canvas_size, native, multiple) if native is not None else None
    return Geometry(plan=plan, mask=mask, canvas=canvas, work_size=work_size)


def to_working_resolution(geometry: Geometry) -> tuple[Image.Image, Image.Image]:
    """The canvas (pre-filled) and mask at working resolution.

    The mask is grown on the way down: a working pixel that covers any pixel to generate is
    generated, so nothing unknown is ever treated as known.
    """
    if geometry.work_size is None:
        raise ValueError("geometry has no working size: pass the model's `native` resolution to prepare_geometry")
    work_mask = geometry.mask.resize(geometry.work_size, Image.Resampling.BOX)
    work_mask = work_mask.point(lambda value: 255 if value > 0 else 0)
    work_image = geometry.canvas.resize(geometry.work_size, Image.Resampling.LANCZOS)
    return prefill(work_image, work_mask), work_mask
