"""The training mask sampler: each kind's geometry, the mixture, reproducibility from the seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vipcli_model.training.masks import (
    MASK_SAMPLERS,
    RATIO_RANGE,
    choose_kind,
    irregular_mask,
    one_side_mask,
    ratio_mask,
    sample_mask,
    two_side_mask,
)

SIZE = (96, 128)  # (height, width)


def known_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the known (0) pixels; asserts they form one filled rectangle."""
    rows, cols = np.nonzero(mask == 0)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    assert (mask[top:bottom, left:right] == 0).all(), "known region is not a rectangle"
    assert mask.sum() == mask.size - (bottom - top) * (right - left)
    return top, left, bottom, right


def test_every_mask_is_binary_and_leaves_both_regions():
    rng = np.random.default_rng(0)
    for kind, sampler in MASK_SAMPLERS.items():
        for _ in range(50):
            mask = sampler(rng, SIZE)
            assert mask.shape == SIZE and mask.dtype == np.float32
            assert set(np.unique(mask)) <= {0.0, 1.0}
            assert 0 < mask.mean() < 1, kind  # something to generate, something known


def test_ratio_masks_centered_and_off_center():
    rng = np.random.default_rng(1)
    low, high = RATIO_RANGE
    for _ in range(30):
        top, left, bottom, right = known_box(ratio_mask(rng, SIZE, centered=True))
        height, width = bottom - top, right - left
        assert SIZE[0] / high - 1 <= height <= SIZE[0] / low + 1
        assert SIZE[1] / high - 1 <= width <= SIZE[1] / low + 1
        assert abs((top + bottom) - SIZE[0]) <= 1 and abs((left + right) - SIZE[1]) <= 1  # centered
        ratio_h, ratio_w = SIZE[0] / height, SIZE[1] / width
        assert abs(ratio_h - ratio_w) < 0.1  # one ratio for both axes, like --ratio
    centers = set()
    for _ in range(30):
        top, left, bottom, right = known_box(ratio_mask(rng, SIZE, centered=False))
        centers.add((top + bottom, left + right))
    assert len(centers) > 10  # off-center positions vary


@pytest.mark.parametrize("side", ["left", "right", "top", "bottom"])
def test_one_side_mask_is_a_band_on_that_side(side):
    rng = np.random.default_rng(2)
    for _ in range(10):
        mask = one_side_mask(rng, SIZE, side=side)
        top, left, bottom, right = known_box(mask)
        touching = {"top": top == 0, "left": left == 0, "bottom": bottom == SIZE[0], "right": right == SIZE[1]}
        assert not touching[side] and sum(touching.values()) == 3  # only `side` is generated
        extent = SIZE[1] if side in ("left", "right") else SIZE[0]
        known = (right - left) if side in ("left", "right") else (bottom - top)
        assert RATIO_RANGE[0] - 0.05 <= extent / known <= RATIO_RANGE[1] + 0.05


@pytest.mark.parametrize("sides", [("left", "right"), ("top", "bottom"), ("left", "top"), ("right", "bottom")])
def test_two_side_mask_generates_exactly_those_sides(sides):
    rng = np.random.default_rng(3)
    for _ in range(10):
        top, left, bottom, right = known_box(two_side_mask(rng, SIZE, sides=sides))
        generated = {"top": top > 0, "left": left > 0, "bottom": bottom < SIZE[0], "right": right < SIZE[1]}
        assert {side for side, on in generated.items() if on} == set(sides)


def test_irregular_masks_touch_the_border_with_bounded_coverage():
    rng = np.random.default_rng(4)
    coverages = []
    for _ in range(40):
        mask = irregular_mask(rng, SIZE)
        border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert border.any(), "an irregular mask must touch the border"
        coverages.append(mask.mean())
    assert min(coverages) > 0.05 and max(coverages) <= 0.6 + 1e-6
    assert np.std(coverages) > 0.03  # not one fixed shape


def test_sample_mask_is_reproducible_and_mixes_kinds():
    first = sample_mask(np.random.default_rng(7), SIZE)
    again = sample_mask(np.random.default_rng(7), SIZE)
    assert first.shape == (1, *SIZE) and first.dtype == torch.float32
    assert torch.equal(first, again)
    rng = np.random.default_rng(8)
    kinds = [choose_kind(rng) for _ in range(400)]
    shares = {kind: kinds.count(kind) / len(kinds) for kind in MASK_SAMPLERS}
    assert 0.3 < shares["ratio"] < 0.5 and all(0.1 < shares[k] < 0.3 for k in ("one_side", "two_side", "irregular"))
    only = [choose_kind(rng, {"irregular": 1.0, "ratio": 0.0}) for _ in range(20)]
    assert set(only) == {"irregular"}
