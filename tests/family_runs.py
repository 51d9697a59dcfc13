"""What the model-family test files share: a pipeline call on its inputs, the end-to-end `vip outpaint` run with region
prompts, the metadata it writes, and the photos `vip train` is given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vipcli_model.images.io import read_metadata


def quarters_to_generate(size: int) -> tuple[Image.Image, Image.Image]:
    """A random square image (seed 0) and a mask whose left and right quarters are to generate."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, : size // 4] = 255
    mask[:, -size // 4 :] = 255
    return image, Image.fromarray(mask)


def run_two_steps(pipe, size: int, prompt: str, **kwargs) -> np.ndarray:
    """Two steps of `pipe` on `quarters_to_generate(size)`, seed 0: the first image as an array."""
    image, mask = quarters_to_generate(size)
    output = pipe(
        prompt=prompt,
        image=image,
        mask_image=mask,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **kwargs,
    )
    images = output.images if hasattr(output, "images") else output[0]
    return np.asarray(images[0])


def random_photo(path: Path, height: int = 48, width: int = 64, seed: int = 3) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def outpaint_regions(vip_main, source: Path, model: Path, out: Path, *extra, steps: int = 2):
    """`vip outpaint` at 1.5x with Center and Surrounding prompts, no feather, seed 1 (`extra`: more options)."""
    return vip_main(
        "outpaint",
        source,
        "--model",
        model,
        *extra,
        "--ratio",
        "1.5x",
        "--steps",
        str(steps),
        "--feather",
        "0",
        "--center",
        "a red barn",
        "--surrounding",
        "snowy mountains",
        "--seed",
        "1",
        "-o",
        out,
    )


def vip_metadata(path: Path) -> dict:
    """The `vip` record of a written image, decoded where it is stored as a JSON string."""
    meta = read_metadata(path)["vip"]
    return json.loads(meta) if isinstance(meta, str) else meta


def train_photos(folder: Path) -> Path:
    """Two flat 64x64 photos in a new folder: enough for `vip train` to start."""
    folder.mkdir()
    for index in range(2):
        Image.new("RGB", (64, 64), (40 * index, 90, 160)).save(folder / f"img{index}.png")
    return folder
