"""The detail pass: the generated area refined tile by tile at full resolution, so it is as sharp as the photo.

The first pass generates the whole canvas at the model's working resolution (~512 px for SD-1.5) and upscales it:
on a 12 MP photo at ``--ratio 2x`` the new area is stretched ~16x. This pass then walks the full-resolution canvas
in overlapping tiles of the working size and runs the model's own inpainting pipeline on each at a low denoising
strength (img2img inpainting): the tile's current pixels are the init image, the tile's crop of the canvas mask says
what to refine (known pixels are fixed by the mask), and C-T-S routes the tile's tokens by that same crop, so a tile
over the seam sees the Center and Surrounding prompts exactly where the first pass did.

Tiles are refined one at a time in raster order, each composited into the canvas with a raised-cosine ramp over its
overlap with the tiles before it (left and top), so no seam shows; the tile's later tiles see its refined pixels as
their init image. The compositing weight of a pixel is the ramp times the paste-back weight of the first pass
(``blend.seam_weights``): known pixels have weight 0 and stay byte-identical with ``feather=0``. Memory: the canvas
(already held) plus one tile; nothing canvas-sized is allocated. Each tile has its own seed, derived from the run's.

Pure planning and compositing are here with no torch import (``plan_tiles``, ``composite_tiles``); the pipeline
call per tile is ``run_detail_pass``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vipcli_model.config import DetailConfig
from vipcli_model.errors import OptionError
from vipcli_model.outpainting.blend import seam_weights

# `detail="auto"`: run when the canvas has at least this many times the pixels of the working size (2x per side),
# on a GPU (CUDA / MPS). On the CPU auto only says what `detail="on"` would cost.
AUTO_MIN_AREA_FACTOR = 4.0
AUTO_DEVICES = ("cuda", "mps")

TileCallback = Callable[[int, int], None]  # (tiles done, tiles in all)


@dataclass(frozen=True)
class Tile:
    """One tile of the canvas: its box and how far it overlaps the tiles before it (the ramps)."""

    box: tuple[int, int, int, int]  # left, top, right, bottom on the canvas
    ramp_left: int  # columns shared with the tile to its left (0: none, or the canvas edge)
    ramp_top: int  # rows shared with the tile above


@dataclass(frozen=True)
class TilePlan:
    """The tiles of one canvas, raster order, those with nothing to refine left out."""

    canvas_size: tuple[int, int]
    tile_size: int
    overlap: int
    grid: tuple[int, int]  # tiles per row, per column (before skipping)
    tiles: list[Tile]  # the tiles to refine
    skipped: int  # tiles with no pixel to refine (inside the photo)


def axis_positions(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: the fewest tiles of ``tile`` px overlapping by at least ``overlap`` that cover
    ``length``, spread evenly so the first starts at 0 and the last ends at ``length``."""
    if tile >= length:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(index * (length - tile) / (count - 1)) for index in range(count)]


def plan_tiles(mask: Image.Image, tile_size: int, overlap: int, reach: int = 0) -> TilePlan:
    """Tiles over the canvas ``mask`` (mode "L", 255 = generated) covering every generated pixel.

    A tile is kept when a generated pixel lies in it or within ``reach`` pixels of it (the paste-back feather:
    known pixels that close to the seam are blended, so their tile is refined too).
    """
    width, height = mask.size
    tile_w, tile_h = min(tile_size, width), min(tile_size, height)
    xs, ys = axis_positions(width, tile_w, overlap), axis_positions(height, tile_h, overlap)
    tiles, skipped = [], 0
    for row, top in enumerate(ys):
        for column, left in enumerate(xs):
            box = (left, top, left + tile_w, top + tile_h)
            grown = (max(0, left - reach), max(0, top - reach), min(width, box[2] + reach), min(height, box[3] + reach))
            if mask.crop(grown).getextrema()[1] == 0:
                skipped += 1
                continue
            ramp_left = xs[column - 1] + tile_w - left if column else 0
            ramp_top = ys[row - 1] + tile_h - top if row else 0
            tiles.append(Tile(box=box, ramp_left=ramp_left, ramp_top=ramp_top))
    return TilePlan((width, height), tile_size, overlap, (len(xs), len(ys)), tiles, skipped)


def ramp(width: int, length: int) -> np.ndarray:
    """Weights along one axis of a tile: a raised cosine from ~0 to 1 over the first ``width`` pixels, then 1."""
    weights = np.ones(length, dtype=np.float32)
    if width > 0:
        position = (np.arange(width, dtype=np.float32) + 0.5) / width
        weights[:width] = 0.5 - 0.5 * np.cos(np.pi * position)
    return weights


def tile_weights(tile: Tile, mask: Image.Image, feather: int) -> np.ndarray:
    """The compositing weight of each pixel of ``tile`` (h, w) in [0, 1]: overlap ramps x paste-back weight."""
    left, top, right, bottom = tile.box
    width, height = mask.size
    reach = max(feather, 0) + 1  # context the seam blur needs around the tile
    grown = (max(0, left - reach), max(0, top - reach), min(width, right + reach), min(height, bottom + reach))
    seam = seam_weights(mask.crop(grown), feather)
    seam = np.asarray(seam.crop((left - grown[0], top - grown[1], right - grown[0], bottom - grown[1])), np.float32)
    return seam / 255.0 * ramp(tile.ramp_top, bottom - top)[:, None] * ramp(tile.ramp_left, right - left)[None, :]


def composite_tile(image: Image.Image, tile: Tile, refined: Image.Image, weights: np.ndarray) -> None:
    """Blend ``refined`` (the tile's size) into ``image`` in place: ``current + weights * (refined - current)``.

    A pixel of weight 0 keeps its bytes; where ``refined`` equals the current pixel the result does too.
    """
    current = np.asarray(image.crop(tile.box), dtype=np.float32)
    mixed = np.array(refined.convert("RGB"), dtype=np.float32)
    mixed -= current  # in place: a tile's few buffers, whatever the canvas
    mixed *= weights[..., None]
    mixed += current
    np.clip(np.rint(mixed, out=mixed), 0, 255, out=mixed)
    image.paste(Image.fromarray(mixed.astype(np.uint8), "RGB"), tile.box[:2])


Refiner = Callable[[Image.Image, Image.Image, int], Image.Image]  # (tile image, tile mask, tile index) -> refined


def composite_tiles(
    image: Image.Image,
    mask: Image.Image,
    plan: TilePlan,
    refine: Refiner,
    *,
    feather: int = 0,
    on_tile: TileCallback | None = None,
) -> None:
    """Refine ``image`` (RGB, canvas size) in place, tile by tile in ``plan``'s order, with ``refine``."""
    if image.mode != "RGB" or image.size != mask.size or image.size != plan.canvas_size:
        raise ValueError(f"`image` must be RGB of the plan's size {plan.canvas_size}, got {image.mode} {image.size}")
    for index, tile in enumerate(plan.tiles):
        refined = refine(image.crop(tile.box), mask.crop(tile.box), index)
        if refined.size != image.crop(tile.box).size:
            raise ValueError(f"the refiner returned {refined.size} for a tile of {tile.box}")
        composite_tile(image, tile, refined, tile_weights(tile, mask, feather))
        if on_tile is not None:
            on_tile(index + 1, len(plan.tiles))


# ---------------------------------------------------------------- settings for one run


def check_detail(detail: DetailConfig, size_multiple: int | None = None) -> None:
    """Reject bad detail settings, naming the argument (``OptionError``)."""
    if detail.mode not in ("auto", "on", "off"):
        raise OptionError(f"`detail` '{detail.mode}' is not one of: auto, on, off")
    if not 0.0 < detail.strength <= 1.0:
        raise OptionError(f"`detail_strength` {detail.strength} is out of range: use more than 0, at most 1")
    if detail.steps is not None and not 1 <= detail.steps <= 1000:
        raise OptionError(f"`detail_steps` {detail.steps} is out of range: use 1 to 1000")
    if detail.tile_size is not None:
        if not 64 <= detail.tile_size <= 4096 or detail.tile_size % 8:
            raise OptionError(f"`tile_size` {detail.tile_size} is out of range: use a multiple of 8 from 64 to 4096")
        if size_multiple and detail.tile_size % size_multiple:
            raise OptionError(f"`tile_size` {detail.tile_size} must be a multiple of {size_multiple} for this model")
    if detail.overlap is not None:
        limit = detail.tile_size // 2 if detail.tile_size is not None else 2048
        if not 0 <= detail.overlap <= limit:
            raise OptionError(
                f"`tile_overlap` {detail.overlap} is out of range: use 0 to half the tile size ({limit})"
                if detail.tile_size is not None
                else f"`tile_overlap` {detail.overlap} is out of range: use 0 to half the tile size"
            )


def check_detail_options(detail: DetailConfig) -> None:
    """``check_detail``, and no detail setting given with ``detail="off"`` (it would have no effect)."""
    check_detail(detail)
    if detail.mode == "off":
        given = [
            name
            for name, value in (
                ("detail_strength", detail.strength != DetailConfig.strength),
                ("detail_steps", detail.steps),
                ("tile_size", detail.tile_size),
                ("tile_overlap", detail.overlap),
            )
            if value not in (None, False)
        ]
        if given:
            raise OptionError(f"`{given[0]}` has no effect with `detail='off'`")


def resolved(detail: DetailConfig, working_resolution: int) -> tuple[int, int]:
    """(tile size, overlap): the given ones, else the working resolution and an eighth of it."""
    tile_size = detail.tile_size or working_resolution
    overlap = detail.overlap if detail.overlap is not None else tile_size // 8
    if overlap > tile_size // 2:
        raise OptionError(f"`tile_overlap` {overlap} is out of range: use 0 to {tile_size // 2} (half the tile)")
    return tile_size, overlap


def schedule(detail: DetailConfig, steps: int) -> tuple[int, int]:
    """(steps run per tile, ``num_inference_steps`` to ask the pipeline for at ``detail.strength``).

    Default: the first pass's steps scaled by the strength (A1111's hires fix), at least 1. Given ``detail.steps``:
    the fewest scheduler steps whose ``int(total * strength)`` reaches it (diffusers' img2img rule).
    """
    target = detail.steps if detail.steps is not None else max(1, int(steps * detail.strength))
    total = steps if detail.steps is None else max(target, math.floor(target / detail.strength))
    while int(total * detail.strength) < target:
        total += 1
    return target, total


def decide(
    detail: DetailConfig, canvas_size: tuple[int, int], work_size: tuple[int, int], device: str
) -> tuple[bool, str]:
    """Whether the pass runs, and why (for the metadata)."""
    if detail.mode != "auto":
        return detail.mode == "on", f"detail={detail.mode}"
    factor = canvas_size[0] * canvas_size[1] / float(work_size[0] * work_size[1])
    if factor < AUTO_MIN_AREA_FACTOR:
        return False, (
            f"auto: the canvas has {factor:.1f}x the pixels of the working size "
            f"(the pass runs from {AUTO_MIN_AREA_FACTOR:g}x)"
        )
    if device not in AUTO_DEVICES:
        return False, f"auto: not run by default on {device} (slow there)"
    return True, f"auto: the canvas has {factor:.1f}x the pixels of the working size, on {device}"


def tile_seed(seed: int, image_index: int, tile_index: int) -> int:
    """A seed for one tile of one result, derived from the run's seed (reproducible, distinct per tile)."""
    return int(np.random.SeedSequence([seed, image_index, tile_index]).generate_state(1, np.uint64)[0] >> 1)


def run_detail_pass(
    pipe,
    image: Image.Image,
    mask: Image.Image,
    prompts,
    generation,
    detail: DetailConfig,
    *,
    seed: int,
    image_index: int = 0,
    controller=None,
    feather: int = 0,
    color_match: bool = False,
    on_tile: TileCallback | None = None,
) -> dict:
    """Refine ``image`` (RGB, canvas size, known pixels pasted back) in place; returns what it did (metadata).

    ``pipe`` is a vip outpainting pipeline (SD, SDXL or FLUX Fill: each takes ``strength``); ``controller`` the
    C-T-S controller of the first pass (None: plain inpainting); ``generation`` its settings (guidance, negative).
    """
    import torch

    tile_size, overlap = resolved(detail, pipe.working_resolution)
    multiple = pipe.size_multiple
    if tile_size % multiple:
        raise OptionError(f"`tile_size` {tile_size} must be a multiple of {multiple} for this model")
    plan = plan_tiles(mask, tile_size, overlap, reach=feather)
    steps_run, total_steps = schedule(detail, generation.steps)

    def refine(tile: Image.Image, tile_mask: Image.Image, index: int) -> Image.Image:
        padded, padded_mask = _pad_to_multiple(tile, tile_mask, multiple)
        generator = torch.Generator(device="cpu").manual_seed(tile_seed(seed, image_index, index))
        output = pipe(
            prompt=prompts.total,
            image=padded,
            mask_image=padded_mask,
            width=padded.width,
            height=padded.height,
            center_prompt=prompts.center,
            surrounding_prompt=prompts.surrounding,
            negative_prompt=generation.negative or None,
            num_inference_steps=total_steps,
            guidance_scale=generation.guidance,
            generator=generator,
            cts=controller,
            strength=detail.strength,
        )
        refined = output.images[0].crop((0, 0, *tile.size))
        if color_match:  # keep the tile's colours: its own input is the reference (the first pass matched it)
            from vipcli_model.outpainting.blend import color_match as match

            refined, _ = match(refined, tile, Image.new("L", tile.size, 0))
        return refined

    start = time.perf_counter()
    composite_tiles(image, mask, plan, refine, feather=feather, on_tile=on_tile)
    return {
        "ran": True,
        "tiles": len(plan.tiles),
        "skipped": plan.skipped,
        "grid": list(plan.grid),
        "tile_size": tile_size,
        "overlap": overlap,
        "strength": detail.strength,
        "steps": steps_run,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _pad_to_multiple(tile: Image.Image, mask: Image.Image, multiple: int) -> tuple[Image.Image, Image.Image]:
    """A tile smaller than the model's size multiple (a narrow canvas) padded right / bottom: edge pixels, known."""
    width, height = tile.size
    padded_w, padded_h = -(-width // multiple) * multiple, -(-height // multiple) * multiple
    if (padded_w, padded_h) == (width, height):
        return tile, mask
    array = np.pad(np.asarray(tile), ((0, padded_h - height), (0, padded_w - width), (0, 0)), mode="edge")
    padded_mask = Image.new("L", (padded_w, padded_h), 0)
    padded_mask.paste(mask, (0, 0))
    return Image.fromarray(array, "RGB"), padded_mask


def estimate(plan_tiles_count: int, steps: int, tile_pixels: int, work_pixels: int, detail_steps: int) -> float:
    """How many times the generation's own time the pass would take: counted in denoiser pixels (a step is a pass
    over the pixels, +2 for the autoencoder), so the same canvas and settings always give the same figure."""
    return plan_tiles_count * tile_pixels * (detail_steps + 2) / (max(work_pixels, 1) * (steps + 2))


def detail_results(
    pipe,
    images: list[Image.Image],
    geometry,
    prompts,
    generation,
    detail: DetailConfig,
    *,
    seed: int,
    controller=None,
    feather: int = 0,
    color_match: bool = False,
    on_tile: TileCallback | None = None,
) -> tuple[dict, list[str]]:
    """The detail pass over each result of one outpaint (in place), as ``Outpainter.outpaint`` runs it.

    Returns the metadata record (``detail``: mode, whether it ran and why, tiles, strength, steps, seconds) and
    notes for the user (auto on a CPU: what ``detail="on"`` would cost).
    """
    check_detail(detail, pipe.size_multiple)
    if detail.mode == "off":
        return {"mode": "off", "ran": False}, []
    device = pipe._execution_device.type
    ran, reason = decide(detail, geometry.plan.canvas_size, geometry.work_size, device)
    tile_size, overlap = resolved(detail, pipe.working_resolution)
    steps_run, _ = schedule(detail, generation.steps)
    info: dict = {
        "mode": detail.mode,
        "ran": ran,
        "reason": reason,
        "strength": detail.strength,
        "steps": steps_run,
        "tile_size": tile_size,
        "overlap": overlap,
    }
    if not ran:
        notes = []
        if reason.startswith("auto: not run by default"):
            plan = plan_tiles(geometry.mask, tile_size, overlap, reach=feather)
            work_pixels = geometry.work_size[0] * geometry.work_size[1]
            times = estimate(len(plan.tiles), generation.steps, tile_size * tile_size, work_pixels, steps_run)
            info.update(tiles=len(plan.tiles), estimate_times=round(times, 1))
            notes.append(
                f"the detail pass runs by default on a GPU only: on {device}, `detail='on'` would refine the "
                f"{geometry.plan.canvas_size[0]}x{geometry.plan.canvas_size[1]} canvas in {len(plan.tiles)} tiles of "
                f"{tile_size} px, about {times:.1f}x the time of the generation itself"
            )
        return info, notes
    records = []
    for index, image in enumerate(images):

        def tiles_done(done: int, total: int, index: int = index) -> None:
            if on_tile is not None:
                on_tile(index * total + done, total * len(images))

        records.append(
            run_detail_pass(
                pipe,
                image,
                geometry.mask,
                prompts,
                generation,
                detail,
                seed=seed,
                image_index=index,
                controller=controller,
                feather=feather,
                color_match=color_match,
                on_tile=tiles_done,
            )
        )
    info.update(
        {key: records[0][key] for key in ("tiles", "skipped", "grid")},
        seconds=round(sum(record["seconds"] for record in records), 2),
    )
    return info, []
