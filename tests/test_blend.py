"""Before and after diffusion: vipcli_model.outpainting.blend (prefill, seam_weights, paste_back, color_match)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from vipcli_model.outpainting.blend import color_match, paste_back, prefill, seam_weights

RED = (220, 20, 20)
GREEN = (20, 200, 20)
BLUE = (0, 0, 255)


def _image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)))


def _mask(height: int, width: int, generate: tuple[slice, slice]) -> tuple[Image.Image, np.ndarray]:
    """A mode "L" mask, 255 on ``generate`` (rows, cols), and its boolean array (True = generate)."""
    array = np.zeros((height, width), np.uint8)
    array[generate] = 255
    return Image.fromarray(array, "L"), array == 255


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _dilate(generate: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` (Chebyshev distance) of the region to generate."""
    grown = Image.fromarray(generate.astype(np.uint8) * 255, "L").filter(ImageFilter.MaxFilter(2 * radius + 1))
    return np.asarray(grown) > 0


# ------------------------------------------------------------------------------------- prefill


def test_prefill_keeps_every_known_pixel_byte_identical():
    original = _noise(37, 53)
    mask, generate = _mask(37, 53, (slice(5, 20), slice(10, 40)))
    out = np.asarray(prefill(_image(original), mask))
    assert out.shape == original.shape and out.dtype == np.uint8
    assert np.array_equal(out[~generate], original[~generate])
    # ... and really fills the hole (no black / unchanged pixels left there)
    assert not np.array_equal(out[generate], original[generate])


def test_prefill_left_red_right_unknown_fills_red():
    array = np.zeros((32, 48, 3), np.uint8)
    array[:, :24] = RED
    array[:, 24:] = (0, 0, 0)  # whatever is under the mask must not leak into the fill
    mask, generate = _mask(32, 48, (slice(None), slice(24, None)))
    out = np.asarray(prefill(_image(array), mask)).astype(int)
    filled = out[generate]
    assert np.abs(filled - np.array(RED)).max() <= 2


def test_prefill_blue_left_strip_fills_blue():
    array = np.full((32, 48, 3), (10, 200, 20), np.uint8)  # hidden content: green
    array[:, :4] = BLUE
    mask, generate = _mask(32, 48, (slice(None), slice(4, None)))
    out = np.asarray(prefill(_image(array), mask)).astype(int)
    assert np.abs(out[generate] - np.array(BLUE)).max() <= 2
    assert np.array_equal(out[:, :4], array[:, :4])


def test_prefill_near_the_seam_takes_the_neighbouring_colour():
    """Top half red, bottom half green, right half unknown: next to the seam each half continues."""
    array = np.zeros((64, 96, 3), np.uint8)
    array[:32, :48] = RED
    array[32:, :48] = GREEN
    mask, _ = _mask(64, 96, (slice(None), slice(48, None)))
    out = np.asarray(prefill(_image(array), mask)).astype(int)
    red, green = np.array(RED), np.array(GREEN)
    near_top = out[:24, 48:52].reshape(-1, 3)
    near_bottom = out[40:, 48:52].reshape(-1, 3)
    assert (np.linalg.norm(near_top - red, axis=1) < np.linalg.norm(near_top - green, axis=1)).all()
    assert (np.linalg.norm(near_bottom - green, axis=1) < np.linalg.norm(near_bottom - red, axis=1)).all()


def test_prefill_far_from_the_seam_fades_to_a_smooth_average():
    """As documented: nearest colours next to the seam, a smooth average of the known image far from it."""
    array = np.zeros((64, 96, 3), np.uint8)
    array[:32, :48] = RED
    array[32:, :48] = GREEN
    mask, _ = _mask(64, 96, (slice(None), slice(48, None)))
    out = np.asarray(prefill(_image(array), mask)).astype(int)
    far = out[:, 95]
    mean = array[:, :48].reshape(-1, 3).mean(0)
    assert np.abs(far - mean).max() < 40  # close to the average of red and green
    assert np.abs(np.diff(far, axis=0)).max() <= 8  # smooth: no hard edge far from the seam


def test_prefill_all_unknown_is_mid_grey():
    out = np.asarray(prefill(_image(_noise(20, 30)), Image.new("L", (30, 20), 255)))
    assert (out == 128).all()


def test_prefill_all_known_is_the_identity():
    original = _noise(20, 30, seed=1)
    out = prefill(_image(original), Image.new("L", (30, 20), 0))
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), original)


def test_prefill_mask_threshold_is_128():
    original = np.full((8, 8, 3), 50, np.uint8)
    original[:, 4:] = 250
    mask = np.full((8, 8), 127, np.uint8)  # below 128: known
    mask[:, 4:] = 128  # from 128: generate
    out = np.asarray(prefill(_image(original), Image.fromarray(mask, "L"))).astype(int)
    assert (out[:, :4] == 50).all()
    assert np.abs(out[:, 4:] - 50).max() <= 2


# ------------------------------------------------------------------------------------- seam_weights


@pytest.mark.parametrize("generate", [(slice(None), slice(30, None)), (slice(15, 25), slice(12, 31))])
def test_seam_weights_feather_0_is_the_hard_mask(generate):
    mask, region = _mask(40, 48, generate)
    weights = np.asarray(seam_weights(mask, 0))
    assert np.array_equal(weights, np.where(region, 255, 0))


def test_seam_weights_feather_0_thresholds_grey_masks():
    array = np.full((4, 4), 127, np.uint8)
    array[0, 0] = 128
    weights = np.asarray(seam_weights(Image.fromarray(array, "L"), 0))
    assert weights[0, 0] == 255 and int(weights.sum()) == 255


@pytest.mark.parametrize("feather", [1, 4, 8])
@pytest.mark.parametrize(
    "generate", [(slice(None), slice(30, None)), (slice(15, 25), slice(12, 31)), (slice(0, 6), slice(None))]
)
def test_seam_weights_feather_limits(feather, generate):
    mask, region = _mask(48, 56, generate)
    weights = np.asarray(seam_weights(mask, feather))
    assert (weights[region] == 255).all()  # generated pixels: fully generated
    near = _dilate(region, feather)
    assert (weights[~near] == 0).all()  # farther than `feather` px: exactly the original
    ring = near & ~region
    assert (weights[ring] > 0).any()  # there is a ramp at all


@pytest.mark.parametrize("feather", [3, 8])
def test_seam_weights_are_monotone_across_a_straight_seam(feather):
    mask, _ = _mask(20, 60, (slice(None), slice(40, None)))
    weights = np.asarray(seam_weights(mask, feather)).astype(int)
    for row in weights:
        assert (np.diff(row) >= 0).all(), row
    row = weights[10]
    assert row[40 - feather - 1] == 0 and row[40 - feather] > 0
    assert (row[40 - feather : 40] < 255).any()  # a ramp, not a step


# ------------------------------------------------------------------------------------- paste_back


def _paste_case(seed: int = 0):
    height, width = 48, 64
    canvas = _noise(height, width, seed)
    generated = _noise(height, width, seed + 100)
    mask_array = np.zeros((height, width), np.uint8)
    mask_array[:, 40:] = 255
    mask_array[:8, :] = 255  # an L-shaped region: top band + right band
    region = mask_array == 255
    return _image(generated), _image(canvas), Image.fromarray(mask_array, "L"), region


def test_paste_back_feather_0_keeps_known_pixels_and_takes_generated_ones():
    generated, canvas, mask, region = _paste_case()
    out = np.asarray(paste_back(generated, canvas, mask, feather=0))
    assert np.array_equal(out[~region], np.asarray(canvas)[~region])
    assert np.array_equal(out[region], np.asarray(generated)[region])


def test_paste_back_feather_8_pixels_deeper_than_8_are_byte_identical():
    generated, canvas, mask, region = _paste_case(seed=1)
    out = np.asarray(paste_back(generated, canvas, mask, feather=8))
    deep = ~_dilate(region, 8)
    assert deep.sum() > 0
    assert np.array_equal(out[deep], np.asarray(canvas)[deep])
    assert np.array_equal(out[region], np.asarray(generated)[region])
    seam = _dilate(region, 8) & ~region
    # on the seam the result differs from the original somewhere (it is blended)
    assert not np.array_equal(out[seam], np.asarray(canvas)[seam])


def test_paste_back_accepts_non_rgb_inputs():
    generated, canvas, mask, region = _paste_case(seed=2)
    out = paste_back(generated.convert("RGBA"), canvas.convert("RGBA"), mask, feather=0)
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out)[~region], np.asarray(canvas)[~region])


@pytest.mark.parametrize("which", ["generated", "mask"])
def test_paste_back_size_mismatch_raises(which):
    generated, canvas, mask, _ = _paste_case()
    if which == "generated":
        generated = generated.resize((32, 32))
    else:
        mask = mask.resize((32, 32))
    with pytest.raises(ValueError, match="sizes differ"):
        paste_back(generated, canvas, mask)


# ------------------------------------------------------------------------------------- color_match


def _reference(height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth colour ramps in 40..200 (no clipping when distorted)."""
    y, x = np.mgrid[0:height, 0:width]
    red = 40 + 160 * x / (width - 1)
    green = 40 + 160 * y / (height - 1)
    blue = 40 + 80 * (x + y) / (width + height - 2)
    return np.rint(np.stack([red, green, blue], axis=-1)).astype(np.uint8)


def test_color_match_corrects_a_shift_and_a_contrast_loss():
    ref = _reference()
    mean = ref.reshape(-1, 3).mean(0)
    drifted = (ref - mean) * 0.5 + mean + np.array([30.0, 0.0, 0.0])
    generated = np.clip(np.rint(drifted), 0, 255).astype(np.uint8)
    mask, region = _mask(48, 64, (slice(None), slice(48, None)))  # right band generated
    known = ~region
    before = np.abs(generated.astype(int) - ref)[known].max()
    assert before >= 30
    corrected, info = color_match(_image(generated), _image(ref), mask)
    out = np.asarray(corrected).astype(int)
    assert np.abs(out - ref)[known].max() <= 3
    assert info["gain"] == pytest.approx([2.0, 2.0, 2.0], abs=0.05)
    # the same correction applies to the generated area
    assert np.abs(out - ref)[region].max() <= 8


def test_color_match_gains_are_clamped():
    ref = _reference()
    mean = ref.reshape(-1, 3).mean(0)
    flat = np.clip(np.rint((ref - mean) * 0.1 + mean), 0, 255).astype(np.uint8)  # would need gain 10
    mask = Image.new("L", (64, 48), 0)
    _, info = color_match(_image(flat), _image(ref), mask, max_gain=2.0)
    assert info["gain"] == [2.0, 2.0, 2.0]
    # and the other way: a much busier generation is damped by at most 1/max_gain
    faint = np.clip(np.rint((ref - mean) * 0.05 + mean), 0, 255).astype(np.uint8)
    _, info = color_match(_image(ref), _image(faint), mask, max_gain=3.0)
    assert info["gain"] == pytest.approx([1 / 3] * 3)


def test_color_match_with_a_tiny_known_region_is_the_identity():
    generated = _noise(48, 64, seed=3)
    array = np.full((48, 64), 255, np.uint8)
    array[0, :15] = 0  # 15 known pixels: too few to measure anything
    corrected, info = color_match(_image(generated), _image(_reference()), Image.fromarray(array, "L"))
    assert np.array_equal(np.asarray(corrected), generated)
    assert info == {"gain": [1.0, 1.0, 1.0], "shift": [0.0, 0.0, 0.0]}


def test_color_match_identity_when_nothing_drifted():
    ref = _reference()
    corrected, info = color_match(_image(ref), _image(ref), Image.new("L", (64, 48), 0))
    assert np.array_equal(np.asarray(corrected), ref)
    assert info["gain"] == pytest.approx([1.0] * 3)
