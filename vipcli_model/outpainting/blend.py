"""Before and after diffusion: pre-fill the region to generate, paste known pixels back, blend the seam.

Masks are mode "L", 255 = generate. Every function keeps pixels whose blend weight is 0
byte-identical: with ``feather=0`` the output equals the input on every known pixel.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageChops, ImageFilter


def prefill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Fill the region to generate from the known colours, coarse to fine.

    A mask-weighted image pyramid: each coarser level averages the known pixels only, and holes
    are filled from the coarser level, upsampled and lightly blurred. Next to the seam the fill
    takes the nearest known colours (like an edge replicate); far from it, it fades to a smooth
    average of the known image. Known pixels are unchanged. Peers pre-fill the same
    way (IOPaint replicates the border, Fooocus blurs an edge fill); it keeps the VAE away from a
    black frame when the image is encoded.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    known = (np.asarray(mask.convert("L")) < 128).astype(np.float32)
    if known.all():
        return image.convert("RGB")
    filled = _pyramid_fill(rgb, known)
    out = known[..., None] * rgb + (1.0 - known[..., None]) * filled
    return Image.fromarray(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")


def _pyramid_fill(rgb: np.ndarray, known: np.ndarray) -> np.ndarray:
    height, width = known.shape
    if known.sum() == 0:
        return np.full_like(rgb, 0.5)
    if height <= 1 and width <= 1:
        return rgb
    # 2x2 mask-weighted average (pad odd sizes by edge replication)
    pad_h, pad_w = height % 2, width % 2
    rgb_p = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    known_p = np.pad(known, ((0, pad_h), (0, pad_w)), mode="edge")
    weighted = (rgb_p * known_p[..., None]).reshape(rgb_p.shape[0] // 2, 2, rgb_p.shape[1] // 2, 2, 3).sum((1, 3))
    counts = known_p.reshape(known_p.shape[0] // 2, 2, known_p.shape[1] // 2, 2).sum((1, 3))
    small_known = (counts > 0).astype(np.float32)
    small = weighted / np.maximum(counts, 1e-6)[..., None]
    small_filled = _pyramid_fill(small, small_known)
    # back up: nearest-neighbour upsample, then a light blur to avoid blockiness
    up = small_filled.repeat(2, axis=0).repeat(2, axis=1)[:height, :width]
    up = _box_blur3(up)
    return known[..., None] * rgb + (1.0 - known[..., None]) * up


def _box_blur3(array: np.ndarray) -> np.ndarray:
    padded = np.pad(array, ((1, 1), (1, 1), (0, 0)), mode="edge")
    acc = np.zeros_like(array)
    for dy in range(3):
        for dx in range(3):
            acc += padded[dy : dy + array.shape[0], dx : dx + array.shape[1]]
    return acc / 9.0


def seam_weights(mask: Image.Image, feather: int) -> Image.Image:
    """Blend weight of the generated image (255 = generated pixel, 0 = original pixel).

    The region to generate is 255. With ``feather > 0`` the weight ramps down over ``feather``
    pixels on the known side of the seam; known pixels farther than ``feather`` from the seam
    keep weight 0 (exactly the original).
    """
    hard = (mask if mask.mode == "L" else mask.convert("L")).point(lambda value: 255 if value >= 128 else 0)
    if feather <= 0:
        return hard
    blurred = hard.filter(ImageFilter.BoxBlur(feather))
    ramp = blurred.point(lambda value: min(255, 2 * value))
    return ImageChops.lighter(hard, ramp)


_STRIP_ROWS = 512  # rows composed at a time by an in-place paste-back


def paste_back(
    generated: Image.Image, canvas: Image.Image, mask: Image.Image, feather: int = 0, *, in_place: bool = False
) -> Image.Image:
    """Compose the final image: generated pixels where the mask says so, the originals elsewhere.

    ``canvas`` holds the original pixels at full resolution; ``generated`` is the model's output
    already resized to the canvas size. ``in_place``: write the result into ``generated`` (when it
    is RGB; the caller's own upscaled copy) a strip of rows at a time, so a large canvas needs no
    canvas-sized buffer beyond the inputs (seam weights included); the result may differ from the
    copying composition by one level of rounding on feathered seam pixels, never elsewhere.
    """
    if generated.size != canvas.size or mask.size != canvas.size:
        raise ValueError(f"sizes differ: generated {generated.size}, canvas {canvas.size}, mask {mask.size}")
    if not (in_place and generated.mode == "RGB"):
        return Image.composite(_rgb(generated), _rgb(canvas), seam_weights(mask, feather))
    width, height = canvas.size
    reach = max(feather, 0) + 1  # rows of context the seam blur needs beyond a strip
    for top in range(0, height, _STRIP_ROWS):
        bottom = min(height, top + _STRIP_ROWS)
        upper, lower = max(0, top - reach), min(height, bottom + reach)
        weights = seam_weights(mask.crop((0, upper, width, lower)), feather)
        # the originals pasted over the generated pixels with the complementary weight
        keep = ImageChops.invert(weights).crop((0, top - upper, width, bottom - upper))
        generated.paste(canvas.crop((0, top, width, bottom)), (0, top), keep)
    return generated


def _rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB, without a copy when it already is."""
    return image if image.mode == "RGB" else image.convert("RGB")


def color_match(
    generated: Image.Image, reference: Image.Image, mask: Image.Image, max_gain: float = 2.0
) -> tuple[Image.Image, dict[str, list[float]]]:
    """Correct the colour drift of a generated image, measured where the truth is known.

    The model re-generates the known region too; comparing it with the original pixels there
    gives each channel's drift (mean and contrast). The same per-channel correction is applied
    to the whole generated image, so the new area matches the photo (peers: IOPaint and InvokeAI
    histogram-match the same way). Returns the corrected image and the per-channel gain/shift.
    """
    gen = np.asarray(generated.convert("RGB"), dtype=np.float32)
    ref = np.asarray(reference.convert("RGB"), dtype=np.float32)
    known = np.asarray(mask.convert("L")) < 128
    if known.sum() < 16:
        return generated.convert("RGB"), {"gain": [1.0, 1.0, 1.0], "shift": [0.0, 0.0, 0.0]}
    gains, shifts, luts = [], [], []
    for channel in range(3):
        gen_values, ref_values = gen[..., channel][known], ref[..., channel][known]
        gain = float(np.clip(ref_values.std() / max(gen_values.std(), 1e-3), 1.0 / max_gain, max_gain))
        shift = float(ref_values.mean() - gain * gen_values.mean())
        gains.append(gain)
        shifts.append(shift)
        luts.extend(int(np.clip(round(gain * value + shift), 0, 255)) for value in range(256))
    return generated.convert("RGB").point(luts), {"gain": gains, "shift": shifts}
