"""Expansion geometry, exact to the pixel: vipcli_model.outpainting.canvas (plan_canvas, parsing, masks,
working size)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from vipcli_model.errors import OptionError
from vipcli_model.outpainting.canvas import (
    ALIGNMENTS,
    CanvasPlan,
    check_expansion_options,
    outpaint_mask,
    parse_aspect,
    parse_margin,
    parse_ratio,
    parse_size,
    place_on_canvas,
    plan_canvas,
    working_size,
)


def _assert_consistent(plan: CanvasPlan) -> None:
    """The image lies inside the canvas and the margins add up."""
    left, top, right, bottom = plan.margins
    assert min(plan.margins) >= 0, plan
    assert plan.image_size[0] + left + right == plan.canvas_size[0]
    assert plan.image_size[1] + top + bottom == plan.canvas_size[1]


# ------------------------------------------------------------------------------------- --ratio


def test_ratio_2x_on_512_square_centres_the_image():
    plan = plan_canvas((512, 512), ratio="2x")
    assert plan.canvas_size == (1024, 1024)
    assert plan.offset == (256, 256)
    assert plan.image_box == (256, 256, 768, 768)
    assert plan.margins == (256, 256, 256, 256)
    assert plan.expands


@pytest.mark.parametrize("text", ["2x", "2", "2.0x", " 2X ", 2.0])
def test_ratio_spellings_are_the_same_factor(text):
    assert plan_canvas((100, 60), ratio=text).canvas_size == (200, 120)


def test_ratio_1_5x_exact_on_even_sizes():
    plan = plan_canvas((100, 60), ratio="1.5x")
    assert plan.canvas_size == (150, 90)
    assert plan.offset == (25, 15)


@pytest.mark.parametrize("size", [(101, 51), (333, 777), (3, 3), (599, 401)])
def test_ratio_1_5x_on_odd_sizes_rounds_to_the_nearest_pixel_and_centres_within_one(size):
    width, height = size
    plan = plan_canvas(size, ratio="1.5x")
    cw, ch = plan.canvas_size
    # every odd side x 1.5 ends in .5: the canvas is one of the two nearest integers
    assert cw in (math.floor(width * 1.5), math.ceil(width * 1.5))
    assert ch in (math.floor(height * 1.5), math.ceil(height * 1.5))
    _assert_consistent(plan)
    left, top, right, bottom = plan.margins
    assert abs(left - right) <= 1 and abs(top - bottom) <= 1
    # deterministic
    assert plan_canvas(size, ratio="1.5x") == plan


EXPECTED_OFFSETS_2X_100x50 = {
    "center": (50, 25),
    "left": (0, 25),
    "right": (100, 25),
    "top": (50, 0),
    "bottom": (50, 50),
    "top-left": (0, 0),
    "top-right": (100, 0),
    "bottom-left": (0, 50),
    "bottom-right": (100, 50),
}


@pytest.mark.parametrize("align", sorted(ALIGNMENTS))
def test_ratio_align_offsets(align):
    """Every alignment the library offers, each against its offset written out by hand."""
    plan = plan_canvas((100, 50), ratio="2x", align=align)
    assert plan.canvas_size == (200, 100)
    assert plan.offset == EXPECTED_OFFSETS_2X_100x50[align]  # a new alignment fails here until it is added
    _assert_consistent(plan)


def test_ratio_1x_gives_no_expansion():
    plan = plan_canvas((600, 400), ratio="1x")
    assert plan.canvas_size == (600, 400)
    assert plan.offset == (0, 0)
    assert not plan.expands
    assert np.asarray(outpaint_mask(plan)).max() == 0


# ------------------------------------------------------------------------------------- --aspect


def test_aspect_16_9_on_600x400_widens_to_711():
    plan = plan_canvas((600, 400), aspect="16:9")
    assert plan.canvas_size == (711, 400)
    cw, ch = plan.canvas_size
    # within one pixel of an exact 16:9
    assert abs(cw - ch * 16 / 9) <= 1
    left, top, right, bottom = plan.margins
    assert top == bottom == 0
    assert abs(left - right) <= 1
    _assert_consistent(plan)


@pytest.mark.parametrize("text", ["16:9", "16/9", " 16 : 9 "])
def test_aspect_spellings(text):
    assert plan_canvas((600, 400), aspect=text).canvas_size == (711, 400)


def test_aspect_1_1_on_a_wide_image_heightens():
    plan = plan_canvas((800, 400), aspect="1:1")
    assert plan.canvas_size == (800, 800)
    assert plan.offset == (0, 200)


def test_aspect_on_a_tall_image_widens_only_the_width():
    plan = plan_canvas((300, 900), aspect="4:3")
    assert plan.canvas_size == (1200, 900)
    assert plan.offset == (450, 0)


@pytest.mark.parametrize("size", [(1600, 900), (1920, 1080), (160, 90)])
def test_aspect_already_matching_gives_no_expansion(size):
    plan = plan_canvas(size, aspect="16:9")
    assert plan.canvas_size == size
    assert not plan.expands


def test_aspect_align_places_the_photo():
    assert plan_canvas((600, 400), aspect="16:9", align="left").offset == (0, 0)
    assert plan_canvas((600, 400), aspect="16:9", align="right").offset == (111, 0)


# ------------------------------------------------------------------------------------- --size


def test_size_exact_offsets_for_align():
    assert plan_canvas((600, 400), size="1000x600").offset == (200, 100)
    assert plan_canvas((600, 400), size="1000x600", align="bottom-right").offset == (400, 200)
    assert plan_canvas((600, 400), size="1000x600", align="top-left").offset == (0, 0)
    assert plan_canvas((600, 400), size="1000x600", align="top").offset == (200, 0)
    assert plan_canvas((600, 400), size="1000x600").canvas_size == (1000, 600)


@pytest.mark.parametrize("size", ["599x400", "600x399", "100x100"])
def test_size_smaller_than_the_image_is_refused_naming_size(size):
    with pytest.raises(OptionError, match="`size`") as info:
        plan_canvas((600, 400), size=size)
    assert "600x400" in str(info.value)


def test_size_equal_to_the_image_gives_no_expansion():
    assert not plan_canvas((600, 400), size="600x400").expands


# ------------------------------------------------------------------------------------- per side


def test_left_100_top_10_percent_on_600x400():
    plan = plan_canvas((600, 400), left="100", top="10%")
    assert plan.canvas_size == (700, 440)
    assert plan.offset == (100, 40)
    assert plan.margins == (100, 40, 0, 0)


def test_percentages_use_the_axis_of_the_side():
    # left/right are a share of the width (600), top/bottom of the height (400)
    plan = plan_canvas((600, 400), left="10%", right="50%", top="10%", bottom="50%")
    assert plan.margins == (60, 40, 300, 200)
    assert plan.canvas_size == (960, 640)


def test_pixel_suffix_and_zero_margins():
    assert plan_canvas((600, 400), right="25px").canvas_size == (625, 400)
    plan = plan_canvas((600, 400), left="0")
    assert plan.canvas_size == (600, 400) and not plan.expands


# ------------------------------------------------------------------------------------- combinations


@pytest.mark.parametrize(
    "kwargs,names",
    [
        (dict(ratio="2x", aspect="16:9"), ["`ratio`", "`aspect`"]),
        (dict(ratio="2x", size="1000x1000"), ["`ratio`", "`size`"]),
        (dict(aspect="16:9", size="1000x1000"), ["`aspect`", "`size`"]),
        (dict(ratio="2x", sides={"left": "10"}), ["`ratio`", "`left`"]),
        (dict(size="900x900", sides={"top": "5%"}), ["`size`", "`top`"]),
        (dict(align="left", sides={"left": "10"}), ["`align`"]),
        (dict(align="left"), ["`align`", "`ratio`", "`aspect`", "`size`"]),
        (dict(ratio="2x", align="middle"), ["`align`", "middle"]),
    ],
)
def test_nonsense_combinations_are_rejected_naming_the_options(kwargs, names):
    with pytest.raises(OptionError) as info:
        check_expansion_options(**kwargs)
    for name in names:
        assert name in str(info.value)


def test_plan_canvas_checks_combinations_too():
    with pytest.raises(OptionError, match="`ratio`.*`aspect`"):
        plan_canvas((600, 400), ratio="2x", aspect="16:9")
    with pytest.raises(OptionError, match="`left`"):
        plan_canvas((600, 400), ratio="2x", left="10")
    with pytest.raises(OptionError, match="`align`"):
        plan_canvas((600, 400), left="10", align="right")


def test_valid_combinations_give_their_canvas():
    assert plan_canvas((100, 50), ratio="2x", align="top-left") == CanvasPlan((100, 50), (200, 100), (0, 0))
    assert plan_canvas((100, 50), left="10", top="10%").margins == (10, 5, 0, 0)
    assert plan_canvas((100, 50), left="10", align="center").margins == (10, 0, 0, 0)  # the default align is harmless
    assert not plan_canvas((100, 50)).expands  # no option: no expansion


# ------------------------------------------------------------------------------------- parse errors


@pytest.mark.parametrize("text", ["abc", "2y", "x2", "", "-2x", "2xx"])
def test_bad_ratio_text(text):
    with pytest.raises(OptionError, match="`ratio`") as info:
        parse_ratio(text)
    assert "not a ratio" in str(info.value)


@pytest.mark.parametrize("text", ["0.5", "0.5x", "0x", "9", "8.5x"])
def test_ratio_out_of_range(text):
    with pytest.raises(OptionError, match="out of range") as info:
        parse_ratio(text)
    assert "`ratio`" in str(info.value) and "8x" in str(info.value)


def test_ratio_limits_are_inclusive():
    assert parse_ratio("1x") == 1.0
    assert parse_ratio("8x") == 8.0
    assert parse_ratio("1.25x") == 1.25


@pytest.mark.parametrize("text", ["0:1", "1:0", "16", "16:9:1", "a:b", "-16:9"])
def test_bad_aspect(text):
    with pytest.raises(OptionError, match="`aspect`"):
        parse_aspect(text)


def test_extreme_aspect_refused():
    with pytest.raises(OptionError, match="`aspect`.*extreme"):
        parse_aspect("100:1")


@pytest.mark.parametrize("text", ["abc", "100", "100x", "x100", "-5x10", "10.5x10"])
def test_bad_size(text):
    with pytest.raises(OptionError, match="`size`"):
        parse_size(text)


def test_size_spellings():
    assert parse_size("1920x1080") == (1920, 1080)
    assert parse_size("1920X1080") == (1920, 1080)
    assert parse_size(" 1920 x 1080 ") == (1920, 1080)


@pytest.mark.parametrize(
    "text,fragment", [("-5", "not a margin"), ("10%%", "not a margin"), ("1.5", "whole"), ("abc", "not a margin")]
)
def test_bad_margins_name_the_option(text, fragment):
    with pytest.raises(OptionError) as info:
        parse_margin(text, "`left`")
    assert "`left`" in str(info.value) and fragment in str(info.value)


def test_bad_margin_through_plan_canvas_names_that_side():
    with pytest.raises(OptionError, match="`bottom`"):
        plan_canvas((600, 400), left="10", bottom="-5")


def test_margin_values():
    assert parse_margin("1.5%", "`left`").pixels(600) == 9
    assert parse_margin("120", "`left`").pixels(600) == 120
    assert parse_margin(None, "`left`") is None


# ------------------------------------------------------------------------------------- absurd canvases


@pytest.mark.parametrize(
    "image_size,kwargs,what",
    [
        ((5000, 5000), dict(ratio="8x"), "`ratio`"),
        ((600, 400), dict(size="40000x400"), "`size`"),
        ((600, 400), dict(size="20000x20000"), "`size`"),
        ((600, 400), dict(left="100000"), "`left`"),
    ],
)
def test_absurd_canvas_sizes_are_refused(image_size, kwargs, what):
    with pytest.raises(OptionError, match="too large") as info:
        plan_canvas(image_size, **kwargs)
    assert what in str(info.value)


def test_extreme_but_legal_canvas_is_exact():
    assert plan_canvas((600, 400), aspect="20:1").canvas_size == (8000, 400)


def test_margin_percent_beyond_800_is_refused():
    with pytest.raises(OptionError, match="`left`.*too large"):
        plan_canvas((600, 400), left="900%")


def test_empty_canvas_size_is_refused():
    with pytest.raises(OptionError, match="empty"):
        plan_canvas((600, 400), size="0x0")


# ------------------------------------------------------------------------------------- outpaint_mask


def test_mask_is_255_exactly_on_the_border_and_0_on_the_image():
    plan = plan_canvas((600, 400), left="100", top="10%")  # 700x440 at (100, 40)
    mask = np.asarray(outpaint_mask(plan))
    assert mask.shape == (440, 700)
    assert set(np.unique(mask)) == {0, 255}
    assert (mask[40:440, 100:700] == 0).all()
    assert int((mask == 0).sum()) == 600 * 400
    assert int((mask == 255).sum()) == 700 * 440 - 600 * 400
    assert (mask[:40, :] == 255).all() and (mask[:, :100] == 255).all()


def test_mask_ratio_2x_counts():
    plan = plan_canvas((512, 512), ratio="2x")
    mask = np.asarray(outpaint_mask(plan))
    assert int((mask == 0).sum()) == 512 * 512
    assert (mask[256:768, 256:768] == 0).all()
    assert int((mask == 255).sum()) == 1024 * 1024 - 512 * 512


def _rect_mask(size, box) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def test_extra_mask_at_image_size_is_placed_at_the_offset_and_ored_in():
    plan = plan_canvas((60, 40), left="10", top="5")  # 70x45, image at (10, 5)
    extra = _rect_mask((60, 40), (20, 10, 30, 15))  # 10x5 inside the image
    mask = np.asarray(outpaint_mask(plan, extra_mask=extra))
    assert (mask[15:20, 30:40] == 255).all()  # shifted by the offset
    border = 70 * 45 - 60 * 40
    assert int((mask == 255).sum()) == border + 50
    assert int((mask == 0).sum()) == 60 * 40 - 50


def test_extra_mask_at_canvas_size_is_used_as_is_and_ored_in():
    plan = plan_canvas((60, 40), left="10", top="5")
    extra = _rect_mask((70, 45), (20, 10, 30, 15))  # canvas coordinates, inside the image
    mask = np.asarray(outpaint_mask(plan, extra_mask=extra))
    assert (mask[10:15, 20:30] == 255).all()
    assert int((mask == 255).sum()) == 70 * 45 - 60 * 40 + 50


def test_extra_mask_grey_levels_are_thresholded():
    plan = plan_canvas((10, 10), right="1")  # 11x10
    extra = Image.new("L", (10, 10), 127)
    extra.putpixel((3, 3), 128)
    mask = np.asarray(outpaint_mask(plan, extra_mask=extra))
    assert int((mask == 255).sum()) == 10 + 1
    assert mask[3, 3] == 255


def test_extra_mask_of_the_wrong_size_is_refused_naming_both_sizes():
    plan = plan_canvas((60, 40), left="10", top="5")
    with pytest.raises(OptionError) as info:
        outpaint_mask(plan, extra_mask=Image.new("L", (33, 22), 255))
    message = str(info.value)
    assert "`mask`" in message and "33x22" in message
    assert "60x40" in message and "70x45" in message


def test_fully_transparent_pixels_are_added_to_the_mask():
    plan = plan_canvas((20, 10), ratio="2x")  # 40x20 at (10, 5)
    alpha = Image.new("L", (20, 10), 255)
    alpha.putpixel((0, 0), 0)
    alpha.putpixel((5, 5), 0)
    alpha.putpixel((6, 6), 1)  # partly transparent stays known
    mask = np.asarray(outpaint_mask(plan, alpha=alpha))
    assert mask[5 + 0, 10 + 0] == 255
    assert mask[5 + 5, 10 + 5] == 255
    assert mask[5 + 6, 10 + 6] == 0
    assert int((mask == 255).sum()) == 40 * 20 - 20 * 10 + 2


def test_alpha_of_the_wrong_size_is_refused():
    plan = plan_canvas((20, 10), ratio="2x")
    with pytest.raises(OptionError, match="alpha"):
        outpaint_mask(plan, alpha=Image.new("L", (10, 10), 255))


def test_place_on_canvas_puts_the_original_at_the_offset():
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    plan = plan_canvas((60, 40), left="7", bottom="3")
    canvas = np.asarray(place_on_canvas(original, plan))
    assert canvas.shape == (43, 67, 3)
    assert np.array_equal(canvas[0:40, 7:67], np.asarray(original))
    assert (canvas[:, :7] == 0).all() and (canvas[40:, :] == 0).all()
    with pytest.raises(OptionError):
        place_on_canvas(original.resize((10, 10)), plan)


# ------------------------------------------------------------------------------------- working_size


@pytest.mark.parametrize(
    "canvas", [(1024, 1024), (711, 400), (700, 440), (4000, 3000), (64, 64), (1920, 1080), (300, 2000), (8000, 400)]
)
@pytest.mark.parametrize("native", [512, 64])
def test_working_size_multiples_of_8_about_native_area_same_aspect(canvas, native):
    width, height = canvas
    work_w, work_h = working_size(canvas, native)
    assert work_w % 8 == 0 and work_h % 8 == 0
    assert work_w >= 8 and work_h >= 8
    if min(width, height) * math.sqrt(native * native / (width * height)) >= 32:  # not clamped to 8
        assert abs(work_w * work_h - native * native) <= 0.10 * native * native
    # aspect: each side is within half a multiple (4 px) of the exact scaled side
    scale = math.sqrt(native * native / (width * height))
    assert abs(work_w - width * scale) <= 4 + 1e-9
    assert abs(work_h - height * scale) <= 4 + 1e-9


def test_working_size_of_a_4000x3000_canvas_is_about_native():
    work_w, work_h = working_size((4000, 3000), 512)
    assert (work_w, work_h) == (592, 440)
    assert max(work_w, work_h) < 700  # no 4000-px diffusion
    assert abs(work_w / work_h - 4 / 3) < 0.03


def test_working_size_of_a_square_native_canvas_is_native():
    assert working_size((1024, 1024), 512) == (512, 512)
    assert working_size((512, 512), 512) == (512, 512)
    assert working_size((100, 100), 64) == (64, 64)
