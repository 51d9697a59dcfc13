"""Training masks: where the model must generate (1) and what it may see (0).

The official VIP code trains on one fixed mask (the center quarter known), so the
model only learns that one geometry. Users expand by ratio, by aspect (two opposite sides), one
side at a time, per corner, and with hand-drawn masks; training samples all of these:

* ``ratio``:     the known image scaled down by r in [1.25, 2] on each side, centered or off-center
                 (``vip outpaint --ratio 1.5x --align ...``);
* ``one_side``:  one side extended by 25% to 100% of the known extent (``--left 30%``);
* ``two_side``:  two opposite sides (``--aspect``) or two adjacent sides (``--left --top``);
* ``irregular``: thick random strokes that start on the border (``--mask``, partly transparent photos).

Every function is pure: the same ``numpy.random.Generator`` state gives the same mask, so a run
is reproducible from its seed and a resumed run sees the masks an uninterrupted run would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
from PIL import Image, ImageDraw

from vipcli_model.training.config import DEFAULT_MASK_MIX as DEFAULT_MIX

RATIO_RANGE = (1.25, 2.0)  # canvas / known extent, per side, like --ratio 1.25x .. 2x
SIDES = ("left", "right", "top", "bottom")
TWO_SIDE_PAIRS = (
    ("left", "right"),
    ("top", "bottom"),  # opposite: an aspect change
    ("left", "top"),
    ("left", "bottom"),
    ("right", "top"),
    ("right", "bottom"),  # adjacent: a corner
)
IRREGULAR_COVERAGE = (0.15, 0.6)  # share of pixels to generate, drawn uniformly per mask


def _empty(size: tuple[int, int]) -> np.ndarray:
    return np.zeros(size, dtype=np.float32)


def _ratio(rng: np.random.Generator) -> float:
    return float(rng.uniform(*RATIO_RANGE))


def ratio_mask(rng: np.random.Generator, size: tuple[int, int], centered: bool | None = None) -> np.ndarray:
    """Known rectangle = the canvas divided by r on each side; centered, or anywhere on the canvas.

    ``size`` is (height, width). ``centered=None`` picks centered or off-center at random (even odds).
    """
    height, width = size
    ratio = _ratio(rng)
    if centered is None:
        centered = bool(rng.random() < 0.5)
    known_h, known_w = max(1, round(height / ratio)), max(1, round(width / ratio))
    if centered:
        top, left = (height - known_h) // 2, (width - known_w) // 2
    else:
        top, left = int(rng.integers(0, height - known_h + 1)), int(rng.integers(0, width - known_w + 1))
    mask = np.ones(size, dtype=np.float32)
    mask[top : top + known_h, left : left + known_w] = 0.0
    return mask


def _band(mask: np.ndarray, side: str, pixels: int) -> None:
    """Mark a band of ``pixels`` along ``side`` as to-generate (in place)."""
    if pixels <= 0:
        return
    if side == "left":
        mask[:, :pixels] = 1.0
    elif side == "right":
        mask[:, -pixels:] = 1.0
    elif side == "top":
        mask[:pixels, :] = 1.0
    elif side == "bottom":
        mask[-pixels:, :] = 1.0
    else:
        raise ValueError(f"unknown side '{side}'")


def _margin(extent: int, ratio: float) -> int:
    """Pixels to generate along an axis of ``extent`` when the canvas is ``ratio`` times the known part."""
    known = max(1, round(extent / ratio))
    return extent - known


def one_side_mask(rng: np.random.Generator, size: tuple[int, int], side: str | None = None) -> np.ndarray:
    """One band along ``side`` (random when None): the known part is 1/r of that axis."""
    height, width = size
    side = side or SIDES[int(rng.integers(len(SIDES)))]
    extent = width if side in ("left", "right") else height
    mask = _empty(size)
    _band(mask, side, _margin(extent, _ratio(rng)))
    return mask


def two_side_mask(rng: np.random.Generator, size: tuple[int, int], sides: tuple[str, str] | None = None) -> np.ndarray:
    """Bands on two sides: opposite sides share one margin (an aspect change), adjacent sides get one each."""
    height, width = size
    sides = sides or TWO_SIDE_PAIRS[int(rng.integers(len(TWO_SIDE_PAIRS)))]
    mask = _empty(size)
    first, second = sides
    horizontal = {"left", "right"}
    if {first, second} in ({"left", "right"}, {"top", "bottom"}):
        extent = width if first in horizontal else height
        margin = _margin(extent, _ratio(rng))
        share = float(rng.uniform(0.25, 0.75))
        first_pixels = max(1, round(margin * share))
        _band(mask, first, first_pixels)
        _band(mask, second, max(1, margin - first_pixels))
    else:
        for side in sides:
            extent = width if side in horizontal else height
            _band(mask, side, _margin(extent, _ratio(rng)))
    return mask


def irregular_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Thick random strokes, each starting on the border, until a drawn coverage target is reached.

    A stroke that would push coverage past the upper bound is dropped (unless it is the first), so
    the result always touches the border and always leaves some of the image known.
    """
    height, width = size
    short = min(height, width)
    low, high = IRREGULAR_COVERAGE
    target = float(rng.uniform(low, high))
    canvas = Image.new("L", (width, height), 0)
    coverage = 0.0
    for stroke in range(64):
        candidate = canvas.copy()
        draw = ImageDraw.Draw(candidate)
        side = SIDES[int(rng.integers(4))]
        along = float(rng.uniform(0, 1))
        x, y = {
            "left": (0.0, along * (height - 1)),
            "right": (width - 1.0, along * (height - 1)),
            "top": (along * (width - 1), 0.0),
            "bottom": (along * (width - 1), height - 1.0),
        }[side]
        inward = {"left": 0.0, "right": math.pi, "top": math.pi / 2, "bottom": -math.pi / 2}[side]
        stroke_width = max(2, round(short * float(rng.uniform(0.06, 0.16))))
        points = [(x, y)]
        angle = inward
        for _vertex in range(int(rng.integers(2, 6))):
            angle += float(rng.uniform(-0.9, 0.9))
            length = short * float(rng.uniform(0.1, 0.35))
            x = min(max(x + math.cos(angle) * length, 0.0), width - 1.0)
            y = min(max(y + math.sin(angle) * length, 0.0), height - 1.0)
            points.append((x, y))
        draw.line(points, fill=255, width=stroke_width, joint="curve")
        radius = stroke_width / 2
        for px, py in points:
            draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=255)
        new_coverage = float(np.count_nonzero(np.asarray(candidate))) / (height * width)
        if new_coverage > high and stroke > 0:
            continue
        canvas, coverage = candidate, new_coverage
        if coverage >= target:
            break
    return (np.asarray(canvas) > 127).astype(np.float32)


MASK_SAMPLERS: dict[str, Callable[[np.random.Generator, tuple[int, int]], np.ndarray]] = {
    "ratio": ratio_mask,
    "one_side": one_side_mask,
    "two_side": two_side_mask,
    "irregular": irregular_mask,
}


def choose_kind(rng: np.random.Generator, mix: Mapping[str, float] = DEFAULT_MIX) -> str:
    """A mask kind drawn with probability proportional to its weight in ``mix``."""
    kinds = [kind for kind in MASK_SAMPLERS if mix.get(kind, 0.0) > 0]
    if not kinds:
        raise ValueError(f"mask mix {dict(mix)} gives every kind weight 0")
    weights = np.array([mix[kind] for kind in kinds], dtype=np.float64)
    return kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]


def sample_mask(
    rng: np.random.Generator, size: tuple[int, int], mix: Mapping[str, float] = DEFAULT_MIX
) -> torch.Tensor:
    """A (1, height, width) float mask in {0, 1}, 1 = generate, of a kind drawn from ``mix``."""
    kind = choose_kind(rng, mix)
    return torch.from_numpy(MASK_SAMPLERS[kind](rng, size))[None]
