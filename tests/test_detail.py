"""The detail pass: the generated area refined in overlapping tiles at full resolution.

Tile planning covers every generated pixel and skips tiles inside the photo; compositing reproduces any refiner
that agrees with itself exactly (a constant-colour one gives the constant: no step at tile borders) and keeps
known pixels byte-identical; each tile routes C-T-S by its crop of the canvas mask; the refiner never sees more
than a tile whatever the canvas size; `vip outpaint --detail` records the pass in the metadata and `--json`, and
rejects bad values in one line (exit 2).
"""

from __future__ import annotations

import json
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import pixels
from PIL import Image

from vipcli_model.config import BlendConfig, DetailConfig, ExpansionConfig, GenerationConfig, ModelConfig
from vipcli_model.errors import OptionError
from vipcli_model.images.io import read_metadata
from vipcli_model.models.loading import load_pipeline
from vipcli_model.outpainting.canvas import outpaint_mask, plan_canvas
from vipcli_model.outpainting.detail import check_detail, composite_tiles, decide, plan_tiles, run_detail_pass, schedule
from vipcli_model.prompts import RegionPrompts

PROMPTS = RegionPrompts(center="a red barn", surrounding="a snowy field", total="a red barn in a snowy field")


def _frame_mask(image_size=(300, 200), ratio="2x", **sides) -> Image.Image:
    return outpaint_mask(plan_canvas(image_size, ratio=ratio if not sides else None, **sides))


def _irregular_mask(size=(333, 257)) -> Image.Image:
    rng = np.random.default_rng(3)
    mask = np.zeros(size[::-1], dtype=np.uint8)
    for _ in range(6):
        x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
        mask[max(0, y - 20) : y + 20, max(0, x - 35) : x + 35] = 255
    return Image.fromarray(mask)


def _canvas(mask: Image.Image, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (mask.height, mask.width, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------- tile planning


@pytest.mark.parametrize(
    "mask",
    [_frame_mask(), _frame_mask(right="120"), _irregular_mask(), _frame_mask((40, 30))],
    ids=["frame", "one-side", "irregular", "canvas-smaller-than-a-tile"],
)
def test_tiles_cover_every_generated_pixel_and_none_is_all_known(mask):
    plan = plan_tiles(mask, tile_size=96, overlap=16)
    generated = np.asarray(mask) > 0
    covered = np.zeros_like(generated)
    for tile in plan.tiles:
        left, top, right, bottom = tile.box
        assert right - left <= 96 and bottom - top <= 96
        assert 0 <= left and 0 <= top and right <= mask.width and bottom <= mask.height
        assert generated[top:bottom, left:right].any(), f"tile {tile.box} holds no generated pixel"
        covered[top:bottom, left:right] = True
    assert covered[generated].all()
    assert plan.grid[0] * plan.grid[1] == len(plan.tiles) + plan.skipped


def test_tiles_overlap_by_at_least_the_overlap_and_skip_the_inside_of_the_photo():
    mask = _frame_mask((1000, 800))  # 2000x1600 canvas, photo in the middle
    plan = plan_tiles(mask, tile_size=256, overlap=32)
    assert plan.skipped > 0  # tiles wholly inside the photo
    assert all(tile.ramp_left in (0,) or tile.ramp_left >= 32 for tile in plan.tiles)
    assert all(tile.ramp_top == 0 or tile.ramp_top >= 32 for tile in plan.tiles)
    # a 1000x800 photo's own tiles (fully inside it) are the skipped ones
    inside = [t for t in plan.tiles if t.box[0] >= 500 and t.box[2] <= 1500 and t.box[1] >= 400 and t.box[3] <= 1200]
    assert inside == []


# ------------------------------------------------------------------------------------- compositing


def test_a_constant_colour_refiner_gives_the_constant_exactly_and_keeps_known_pixels():
    mask = _frame_mask((200, 150))
    canvas = _canvas(mask)
    original = np.asarray(canvas).copy()
    plan = plan_tiles(mask, tile_size=96, overlap=24)
    colour = (37, 150, 222)
    composite_tiles(canvas, mask, plan, lambda tile, tile_mask, index: Image.new("RGB", tile.size, colour), feather=0)
    result, generated = np.asarray(canvas), np.asarray(mask) > 0
    assert (result[generated] == colour).all()  # no step anywhere, tile borders included
    assert np.array_equal(result[~generated], original[~generated])


def test_a_refiner_that_agrees_with_itself_is_reproduced_exactly():
    """Each tile returns its crop of one smooth image: the blend must give that image, overlaps included."""
    mask = _irregular_mask()
    canvas = _canvas(mask, seed=1)
    y, x = np.mgrid[0 : mask.height, 0 : mask.width]
    truth = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    plan = plan_tiles(mask, tile_size=64, overlap=20)

    def refine(tile, tile_mask, index):
        left, top, right, bottom = plan.tiles[index].box
        return Image.fromarray(truth[top:bottom, left:right])

    composite_tiles(canvas, mask, plan, refine, feather=0)
    generated = np.asarray(mask) > 0
    assert np.array_equal(np.asarray(canvas)[generated], truth[generated])


def test_tiles_that_disagree_blend_gradually_over_the_overlap():
    """Tile i returns the constant 8*i: across a border the image changes by small steps, not one jump."""
    mask = Image.new("L", (400, 96), 255)
    canvas = _canvas(mask)
    plan = plan_tiles(mask, tile_size=96, overlap=32)
    composite_tiles(canvas, mask, plan, lambda tile, m, index: Image.new("RGB", tile.size, (40 * index,) * 3))
    row = np.asarray(canvas)[48, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 40 * (len(plan.tiles) - 1)
    assert np.abs(np.diff(row)).max() <= 3  # a 40-level jump spread over >= 32 px


def test_feathered_paste_back_weights_only_touch_the_seam():
    mask = _frame_mask((120, 90))
    canvas = _canvas(mask)
    original = np.asarray(canvas).copy()
    composite_tiles(canvas, mask, plan_tiles(mask, 64, 8, reach=6), lambda t, m, i: Image.new("RGB", t.size), feather=6)
    changed = (np.asarray(canvas) != original).any(-1)
    known = np.asarray(mask) == 0
    distance_ok = np.asarray(mask.filter(__import__("PIL.ImageFilter").ImageFilter.MaxFilter(15))) > 0
    assert not changed[known & ~distance_ok].any()  # known pixels farther than the feather: untouched
    assert changed[known & distance_ok].any()  # the feathered band is refined too


def test_memory_stays_tile_sized_whatever_the_canvas():
    """The refiner sees tiles only, and the compositing allocates no canvas-sized buffer (tracemalloc)."""
    peaks, largest = [], []
    for image_size in ((1200, 900), (2400, 1800)):
        mask = _frame_mask(image_size)  # canvases of 2400x1800 and 4800x3600
        canvas = Image.new("RGB", mask.size, (90, 90, 90))
        plan = plan_tiles(mask, tile_size=512, overlap=64)
        seen = []

        def refine(tile, tile_mask, index, seen=seen):  # this canvas's list, bound now
            seen.append(tile.size)
            return tile

        tracemalloc.start()
        composite_tiles(canvas, mask, plan, refine)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        largest.append(max(w * h for w, h in seen))
    canvas_float_bytes = 4800 * 3600 * 3 * 4
    assert largest == [512 * 512, 512 * 512]
    assert peaks[1] < canvas_float_bytes / 10  # nothing canvas-sized (~207 MB as floats)
    assert peaks[1] < 1.5 * peaks[0] + 2**20  # 4x the canvas, about the same peak


# ------------------------------------------------------------------------------------- settings


def test_settings_are_checked_naming_the_argument():
    check_detail(DetailConfig())
    for config, name in (
        (DetailConfig(mode="maybe"), "`detail`"),
        (DetailConfig(strength=0.0), "`detail_strength`"),
        (DetailConfig(strength=1.5), "`detail_strength`"),
        (DetailConfig(steps=0), "`detail_steps`"),
        (DetailConfig(tile_size=100), "`tile_size`"),
        (DetailConfig(tile_size=32), "`tile_size`"),
        (DetailConfig(tile_size=256, overlap=200), "`tile_overlap`"),
        (DetailConfig(overlap=-1), "`tile_overlap`"),
    ):
        with pytest.raises(OptionError, match=name):
            check_detail(config)
    with pytest.raises(OptionError, match="multiple of 16"):
        check_detail(DetailConfig(tile_size=520), size_multiple=16)


def test_steps_follow_the_strength_and_auto_runs_on_a_gpu_for_large_canvases():
    assert schedule(DetailConfig(strength=0.35), 25) == (8, 25)  # A1111's hires-fix rule
    assert schedule(DetailConfig(strength=0.3, steps=2), 25) == (2, 7)  # int(7 * 0.3) = 2
    assert schedule(DetailConfig(strength=0.1), 4) == (1, 10)  # at least one step
    big, work = (8064, 6048), (576, 432)
    assert decide(DetailConfig(), big, work, "cuda")[0] is True
    assert decide(DetailConfig(), big, work, "cpu")[0] is False
    assert decide(DetailConfig(), (1024, 768), work, "cuda")[0] is False  # ~3x the pixels: sharp enough
    assert decide(DetailConfig(mode="on"), (64, 64), work, "cpu")[0] is True
    assert decide(DetailConfig(mode="off"), big, work, "cuda")[0] is False


# ------------------------------------------------------------------------------------- with the model


@pytest.fixture(scope="module")
def sd_pipe(tiny_model_dir):
    return load_pipeline(ModelConfig(model=str(tiny_model_dir), device="cpu", dtype="fp32"))


def test_each_tile_routes_cts_by_its_crop_of_the_canvas_mask(sd_pipe):
    """The mask the C-T-S processors get for a tile is the tile's crop of the canvas mask at latent resolution."""
    mask = _frame_mask((72, 48))  # 144x96 canvas, 64 px tiles (the tiny model's working size)
    canvas = _canvas(mask)
    controller = sd_pipe.region_controller(region_strength=0.5)
    routed = []
    attention_kwargs = controller.attention_kwargs

    def recording(state):
        routed.append(state.mask.detach().clone())
        return attention_kwargs(state)

    controller.attention_kwargs = recording
    generation = GenerationConfig(steps=4, guidance=7.5)
    info = run_detail_pass(
        sd_pipe, canvas, mask, PROMPTS, generation, DetailConfig(mode="on", strength=0.5), seed=3, controller=controller
    )
    plan = plan_tiles(mask, 64, 8)
    assert info["tiles"] == len(plan.tiles) == len(routed) > 1
    scale = int(sd_pipe.vae_scale_factor)
    straddles = 0
    for tile, got in zip(plan.tiles, routed):
        crop = np.asarray(mask.crop(tile.box), dtype=np.float32) / 255.0
        h, w = crop.shape
        expected = crop.reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3))
        assert np.allclose(got[0, 0].numpy(), expected, atol=1e-6)
        straddles += int(expected.min() == 0 and expected.max() == 1)
    assert straddles > 0  # some tiles sit across the seam: both Center and Surrounding tokens


def test_the_refiner_sees_one_tile_at_a_time_whatever_the_canvas():
    """A stand-in pipeline records what each call gets: tile-sized images, whatever the canvas size."""
    calls = []

    def pipe(**kwargs):
        calls.append((kwargs["image"].size, kwargs["mask_image"].size, kwargs["strength"]))
        return SimpleNamespace(images=[kwargs["image"]])

    stand_in = type(
        "StandIn", (), {"working_resolution": 512, "size_multiple": 8, "__call__": lambda self, **kw: pipe(**kw)}
    )()
    mask = _frame_mask((2000, 1500))  # a 4000x3000 canvas
    run_detail_pass(
        stand_in,
        Image.new("RGB", mask.size),
        mask,
        PROMPTS,
        GenerationConfig(steps=10),
        DetailConfig(mode="on", strength=0.3),
        seed=0,
    )
    assert {size for size, _, _ in calls} == {(512, 512)}
    assert {strength for _, _, strength in calls} == {0.3}


def test_outpaint_cli_records_the_pass_and_keeps_known_pixels_byte_exact(
    astronaut_png, tiny_model_dir, tmp_path, vip_main
):
    photo = tmp_path / "photo.png"
    Image.open(astronaut_png).resize((72, 56)).save(photo)
    common = (
        "outpaint",
        photo,
        "--ratio",
        "2x",
        "--model",
        tiny_model_dir,
        "--steps",
        "4",
        "--seed",
        "5",
        "--center",
        "an astronaut",
        "--surrounding",
        "a space station",
        "--feather",
        "0",
        "--json",
    )
    on = vip_main(
        *common, "--detail", "on", "--detail-strength", "0.5", "--tile-overlap", "16", "-o", tmp_path / "on.png"
    )
    assert on.returncode == 0, on.stderr
    record = json.loads(on.stdout.splitlines()[0])
    detail = record["detail"]
    assert detail["ran"] is True and detail["tiles"] >= 4 and detail["strength"] == 0.5
    assert detail["tile_size"] == 64 and detail["overlap"] == 16 and detail["steps"] == 2 and detail["seconds"] > 0
    stored = read_metadata(tmp_path / "on.png")
    assert stored["vip"]["detail"] == detail
    assert f'Detail: "{detail["tiles"]} tiles of 64 px, strength 0.5, 2 steps"' in stored["parameters"]
    box = record["image_box"]
    result = pixels(tmp_path / "on.png")
    assert np.array_equal(result[box[1] : box[3], box[0] : box[2]], pixels(photo))
    off = vip_main(*common, "--detail", "off", "-o", tmp_path / "off.png")
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout)["detail"] == {"mode": "off", "ran": False}
    assert np.abs(result.astype(int) - pixels(tmp_path / "off.png")).mean() > 1  # the pass changed the new area
    again = vip_main(
        *common, "--detail", "on", "--detail-strength", "0.5", "--tile-overlap", "16", "-o", tmp_path / "again.png"
    )
    assert again.returncode == 0 and np.array_equal(pixels(tmp_path / "again.png"), result)  # seeded per tile


def test_auto_on_the_cpu_notes_what_on_would_cost_once_per_run(astronaut_png, tiny_model_dir, tmp_path, vip_main):
    for name in ("a.png", "b.png"):
        Image.open(astronaut_png).resize((64, 64)).save(tmp_path / name)
    result = vip_main(
        "outpaint", tmp_path / "a.png", tmp_path / "b.png", "--ratio", "3x", "--model", tiny_model_dir,
        "--steps", "2", "--seed", "1", "-n", "2", "--no-caption", "--json", "-o", tmp_path / "out",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    details = [json.loads(line)["detail"] for line in result.stdout.splitlines()]
    assert len(details) == 4 and all(detail == details[0] for detail in details)  # same canvas, same estimate
    detail = details[0]
    assert detail["mode"] == "auto" and detail["ran"] is False and detail["tiles"] > 0 and detail["estimate_times"] > 0
    (line,) = [line for line in result.stderr.splitlines() if "detail" in line]  # once for the run, as a note
    assert line.startswith("note:") and "--detail on" in line and f"{detail['tiles']} tiles" in line
    assert f"about {detail['estimate_times']:.1f}x the time" in line


@pytest.mark.parametrize(
    "args, flag",
    [
        (("--detail", "sometimes"), "--detail"),
        (("--detail-strength", "0"), "--detail-strength"),
        (("--detail-steps", "0"), "--detail-steps"),
        (("--tile-size", "100"), "--tile-size"),
        (("--tile-size", "256", "--tile-overlap", "200"), "--tile-overlap"),
        (("--detail", "off", "--detail-steps", "4"), "--detail-steps"),
    ],
)
def test_bad_detail_options_are_one_line_and_exit_2(args, flag, astronaut_png, tiny_model_dir, tmp_path, vip_main):
    result = vip_main(
        "outpaint", astronaut_png, "--ratio", "2x", "--model", tiny_model_dir, "-o", tmp_path / "x.png", *args
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and flag in lines[0], result.stderr
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------------- other families


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_sdxl_and_flux_fill_refine_tiles_at_low_strength(family, tmp_path):
    from tiny_models import save_tiny_flux_fill_model, save_tiny_sdxl_inpaint_model

    folder = (save_tiny_sdxl_inpaint_model if family == "sdxl" else save_tiny_flux_fill_model)(tmp_path / family)
    pipe = load_pipeline(ModelConfig(model=str(folder), device="cpu", dtype="fp32"))
    mask = _frame_mask((48, 32))  # a 96x64 canvas in 32 px tiles
    canvas = _canvas(mask)
    original = np.asarray(canvas).copy()
    generation = GenerationConfig(steps=4, guidance=3.0 if family == "flux" else 5.0)
    controller = pipe.region_controller(region_strength=0.5)
    info = run_detail_pass(
        pipe,
        canvas,
        mask,
        PROMPTS,
        generation,
        DetailConfig(mode="on", strength=0.5, tile_size=32, overlap=8),
        seed=0,
        controller=controller,
    )
    generated = np.asarray(mask) > 0
    assert info["tiles"] == len(plan_tiles(mask, 32, 8).tiles) and info["steps"] == 2
    assert np.array_equal(np.asarray(canvas)[~generated], original[~generated])
    assert (np.asarray(canvas)[generated] != original[generated]).any()


def test_library_default_is_off_for_eval_and_training(sd_pipe, tiny_model_dir):
    """``Outpainter.outpaint`` without ``detail`` runs no pass and records none (vip eval, training validation)."""
    from vipcli_model.outpainting.outpainter import Outpainter

    outpainter = Outpainter(ModelConfig(model=str(tiny_model_dir)), pipeline=sd_pipe)
    result = outpainter.outpaint(
        Image.new("RGB", (48, 32), (10, 20, 30)),
        PROMPTS,
        expansion=ExpansionConfig(ratio="4x"),
        generation=GenerationConfig(steps=1, seed=0),
        blend=BlendConfig(feather=0),
    )
    assert "detail" not in result.metadata and result.notes == []


def test_a_canvas_narrower_than_a_tile_and_off_the_size_multiple_is_padded_not_resized(sd_pipe):
    mask = _frame_mask((30, 23))  # a 60x46 canvas: one tile, padded to 64x48 for the model and cropped back
    canvas = _canvas(mask)
    original = np.asarray(canvas).copy()
    info = run_detail_pass(
        sd_pipe,
        canvas,
        mask,
        PROMPTS,
        GenerationConfig(steps=2, guidance=1.0),
        DetailConfig(mode="on", strength=0.5),
        seed=0,
    )
    generated = np.asarray(mask) > 0
    assert info["tiles"] == 1 and canvas.size == (60, 46)
    assert np.array_equal(np.asarray(canvas)[~generated], original[~generated])
    assert (np.asarray(canvas)[generated] != original[generated]).any()
