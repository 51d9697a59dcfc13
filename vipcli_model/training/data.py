"""Training data: a folder of images, their captions, and what one training example is.

* :func:`scan_training_data` finds images recursively, decodes every one up front (a broken file is
  reported and left out of the run, never replaced by another sample, which would skew the data unseen), joins
  captions by path relative to the data folder, and counts what it found.
* :class:`OutpaintExamples` turns one image into a training example: the image resized and
  center-cropped to the training resolution, a sampled outpaint mask, and the three prompts
  after prompt dropout.
* :class:`DataOrder` is the sequence of examples: seeded permutations, one per epoch, read in
  global batches. Its state is one integer (items read so far), saved in checkpoints, so a
  resumed run reads exactly the examples an uninterrupted run would.

Every random choice of an example (mask, prompt dropout) comes from a generator seeded by
(run seed, epoch, offset), so it does not depend on data-loader workers or on process count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vipcli_model.errors import InputError, OptionError
from vipcli_model.files import find_images, image_key
from vipcli_model.images.io import load_image
from vipcli_model.prompts import RegionPrompts
from vipcli_model.training.masks import sample_mask

logger = logging.getLogger(__name__)

DEFAULT_CAPTIONS_NAME = "captions.jsonl"


@dataclass(frozen=True)
class TrainingImage:
    """One usable image of the data folder."""

    path: Path
    key: str  # path relative to the data folder, with "/" (how the captions file names it)
    prompts: RegionPrompts | None  # None: no caption, trains unconditionally
    size: tuple[int, int]  # (width, height) as decoded
    center_box: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) the Center caption describes


@dataclass
class DataReport:
    """What a data folder holds, for the run summary and ``--dry-run``."""

    data_dir: Path
    captions_path: Path | None  # None: no captions file (every image trains unconditionally)
    images: list[TrainingImage] = field(default_factory=list)  # usable images, sorted by key
    broken: list[tuple[str, str]] = field(default_factory=list)  # (key, one-line reason): left out of the run
    missing_images: list[str] = field(default_factory=list)  # caption keys naming no image of the folder
    resolution: int = 256

    @property
    def captioned(self) -> int:
        return sum(1 for image in self.images if image.prompts is not None)

    @property
    def uncaptioned(self) -> int:
        return len(self.images) - self.captioned

    @property
    def upscaled(self) -> int:
        """Images whose shorter side is below the training resolution (they are upscaled)."""
        return sum(1 for image in self.images if min(image.size) < self.resolution)

    def to_dict(self) -> dict:
        return {
            "data_dir": str(self.data_dir),
            "captions": str(self.captions_path) if self.captions_path else None,
            "images": len(self.images),
            "captioned": self.captioned,
            "uncaptioned": self.uncaptioned,
            "upscaled": self.upscaled,
            "broken": [{"image": key, "reason": reason} for key, reason in self.broken],
            "captions_without_image": list(self.missing_images),
        }


def default_captions_path(data_dir: Path) -> Path | None:
    candidate = data_dir / DEFAULT_CAPTIONS_NAME
    return candidate if candidate.is_file() else None


def read_captions_and_boxes(path: Path) -> dict[str, tuple[RegionPrompts, tuple[int, int, int, int] | None]]:
    """Captions and the center box each describes ("center_box", written by ``vip caption --for-training``)."""
    from vipcli_model.captioning.captioner import read_caption_jsonl

    if not path.is_file():
        raise InputError(f"captions file {path}: no such file")
    found: dict[str, tuple[RegionPrompts, tuple[int, int, int, int] | None]] = {}
    for key, record in read_caption_jsonl(path).items():
        built = RegionPrompts.build(
            center=str(record.get("center") or ""),
            surrounding=str(record.get("surrounding") or ""),
            total=str(record.get("total") or "") or None,
        )
        box = record.get("center_box")
        valid = isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box)
        valid = valid and box[0] < box[2] and box[1] < box[3]
        found[Path(key).as_posix().removeprefix("./")] = (built, tuple(box) if valid else None)
    return found


def _check_image(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """Decode ``path`` fully (the check training relies on): (size, None) or (None, reason)."""
    try:
        loaded = load_image(path)
    except InputError as exc:
        return None, str(exc).removeprefix(f"{path}: ")
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same thing: unusable
        return None, f"cannot decode ({type(exc).__name__}: {exc})"
    return loaded.image.size, None


def scan_training_data(
    data_dir: str | Path,
    captions: str | Path | None = None,
    *,
    resolution: int = 256,
    on_progress: Callable[[int, int], None] | None = None,
    workers: int = 4,
) -> DataReport:
    """Find, decode-check and caption-join every image under ``data_dir``.

    ``captions`` None or "": ``DATA_DIR/captions.jsonl`` when it exists, else none. Images are
    decoded in a few threads (Pillow releases the GIL while decoding). ``on_progress(done, total)``
    is called as images are checked.
    """
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise InputError(
            f"data folder {folder}: no such folder" if not folder.exists() else f"{folder} is not a folder"
        )
    captions_path = Path(captions).expanduser() if captions else default_captions_path(folder)
    captions_by_key = read_captions_and_boxes(captions_path) if captions_path is not None else {}

    paths = find_images(folder)
    keys = [image_key(path, folder) for path in paths]
    report = DataReport(data_dir=folder, captions_path=captions_path, resolution=resolution)
    results: list[tuple[tuple[int, int] | None, str | None]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, result in enumerate(pool.map(_check_image, paths), start=1):
            results.append(result)
            if on_progress is not None:
                on_progress(done, len(paths))
    for path, key, (size, reason) in zip(paths, keys, results):
        if reason is not None or size is None:
            report.broken.append((key, reason or "unreadable"))
            logger.info("%s: left out of training: %s", path, reason)
            continue
        prompts, box = captions_by_key.get(key, (None, None))
        report.images.append(TrainingImage(path=path, key=key, prompts=prompts, size=size, center_box=box))
    found = set(keys)
    report.missing_images = sorted(key for key in captions_by_key if key not in found)
    return report


# ============================================================================ one example


def load_training_pixels(path: Path, resolution: int) -> torch.Tensor:
    """(3, resolution, resolution) in [-1, 1]: shorter side resized to ``resolution``, center-cropped."""
    image = load_image(path).image
    width, height = image.size
    scale = resolution / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_size[0] - resolution) // 2, (new_size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def box_region(box: tuple[int, int, int, int], size: tuple[int, int], resolution: int) -> torch.Tensor:
    """(1, resolution, resolution): 0 inside ``box`` (what the Center caption describes), 1 outside, after the
    same shorter-side resize and center crop as :func:`load_training_pixels`."""
    width, height = size
    scale = resolution / min(width, height)
    new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    off_x, off_y = (new_w - resolution) // 2, (new_h - resolution) // 2
    sx, sy = new_w / width, new_h / height
    left = int(np.clip(round(box[0] * sx) - off_x, 0, resolution))
    top = int(np.clip(round(box[1] * sy) - off_y, 0, resolution))
    right = int(np.clip(round(box[2] * sx) - off_x, 0, resolution))
    bottom = int(np.clip(round(box[3] * sy) - off_y, 0, resolution))
    region = torch.ones(1, resolution, resolution)
    region[:, top:bottom, left:right] = 0.0
    return region


def apply_prompt_dropout(
    prompts: RegionPrompts | None, rng: np.random.Generator, prompt_dropout: float, branch_dropout: float
) -> RegionPrompts:
    """The prompts one training example sees.

    * With probability ``prompt_dropout`` all three are empty: the unconditional input that
      classifier-free guidance pairs every branch with at inference.
    * Otherwise each of Center and Surrounding, with probability ``branch_dropout``, is replaced
      by the Total text: what the pipeline feeds a branch whose text is missing (a user who gives
      only ``--prompt`` or only ``--keywords``).

    The random draws are made in the same order whatever the outcome, so one example's choices do
    not shift another's.
    """
    draw_all, draw_center, draw_surrounding = rng.random(3)
    if prompts is None or draw_all < prompt_dropout:
        return RegionPrompts()
    center = prompts.total if draw_center < branch_dropout else prompts.center
    surrounding = prompts.total if draw_surrounding < branch_dropout else prompts.surrounding
    return RegionPrompts(center=center or prompts.total, surrounding=surrounding or prompts.total, total=prompts.total)


def example_rng(seed: int, epoch: int, offset: int) -> np.random.Generator:
    """The generator of the example at ``offset`` of ``epoch``'s permutation."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, offset]))


class OutpaintExamples(torch.utils.data.Dataset):
    """Map-style dataset indexed by (image index, epoch, offset) tuples from :class:`DataOrder`.

    The known region in training is the image outside the mask; the UNet sees the masked image
    ``image * (1 - mask)`` (the SD inpainting convention: unknown pixels are 0, mid-grey).

    Prompts: captions from ``vip caption --for-training`` describe a fixed center box (Center) and
    the border around it (Surrounding), and record that box. C-T-S routes each text to the tokens
    it describes (``region``: 0 inside the box, 1 outside), whatever the sampled mask hides: a
    Center text is never attended by border tokens that a 1.25x or one-sided mask leaves visible.
    (Routing by the sampled mask instead taught the gates to close: the Center text was wrong for
    part of its tokens; benchmarks/toyworld measured it.) Captions without a box route by the mask.
    """

    def __init__(
        self,
        images: list[TrainingImage],
        *,
        resolution: int,
        seed: int,
        mask_mix: Mapping[str, float],
        prompt_dropout: float,
        branch_dropout: float,
    ) -> None:
        if not images:
            raise InputError("no usable training images")
        self.images = images
        self.resolution = resolution
        self.seed = seed
        self.mask_mix = dict(mask_mix)
        self.prompt_dropout = prompt_dropout
        self.branch_dropout = branch_dropout

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int, int]) -> dict:
        index, epoch, offset = item
        image = self.images[index]
        rng = example_rng(self.seed, epoch, offset)
        try:
            pixels = load_training_pixels(image.path, self.resolution)
        except InputError as exc:
            # It decoded when the run started: the file changed under us. Stop rather than
            # silently train on something else.
            raise InputError(f"{exc} (it was readable when training started: was the data folder changed?)") from exc
        mask = sample_mask(rng, (self.resolution, self.resolution), self.mask_mix)
        prompts = apply_prompt_dropout(image.prompts, rng, self.prompt_dropout, self.branch_dropout)
        # C-T-S routes each caption to the tokens it describes: the caption's own box when the captions
        # file gives it, else (no box known) the sampled mask, as at inference
        region = box_region(image.center_box, image.size, self.resolution) if image.center_box else mask
        return {
            "pixels": pixels,
            "mask": mask,
            "region": region,
            "center": prompts.center,
            "surrounding": prompts.surrounding,
            "total": prompts.total,
            "key": image.key,
        }


def collate_examples(examples: list[dict]) -> dict:
    return {
        "pixels": torch.stack([example["pixels"] for example in examples]),
        "mask": torch.stack([example["mask"] for example in examples]),
        "region": torch.stack([example["region"] for example in examples]),
        "center": [example["center"] for example in examples],
        "surrounding": [example["surrounding"] for example in examples],
        "total": [example["total"] for example in examples],
        "keys": [example["key"] for example in examples],
    }


# ============================================================================ order


@dataclass
class DataOrder:
    """An endless stream of image indices: a seeded permutation per epoch, read front to back.

    The whole state is ``position``, the number of items read so far: item ``position`` is entry
    ``position % num_images`` of epoch ``position // num_images``'s permutation. A global batch
    (all processes, one micro-step) may run across an epoch boundary, so a data folder smaller
    than a batch still trains.
    """

    num_images: int
    seed: int
    position: int = 0

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 0x0DA7A])).permutation(self.num_images)

    @property
    def epoch(self) -> int:
        return self.position // self.num_images

    def take(self, count: int) -> list[tuple[int, int, int]]:
        """The next ``count`` items as (image index, epoch, offset in that epoch); advances ``position``."""
        if self.num_images < 1:
            raise OptionError("no images to train on")
        items: list[tuple[int, int, int]] = []
        cached_epoch, order = -1, None
        for position in range(self.position, self.position + count):
            epoch, offset = divmod(position, self.num_images)
            if epoch != cached_epoch:
                cached_epoch, order = epoch, self.permutation(epoch)
            items.append((int(order[offset]), epoch, offset))
        self.position += count
        return items


class ProcessBatches(torch.utils.data.Sampler):
    """This process's share of each global batch, for a ``DataLoader(batch_sampler=...)``.

    Every process walks the same :class:`DataOrder` and keeps its own slice, so the processes of
    a data-parallel run see disjoint examples without talking to each other. ``DataLoader``
    workers read ahead, so the training loop counts the items it has *used* itself (that count
    is the order's state in a checkpoint).
    """

    def __init__(self, order: DataOrder, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.order = order
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        while True:
            items = self.order.take(self.batch_size * self.world_size)
            start = self.rank * self.batch_size
            yield items[start : start + self.batch_size]

    def __len__(self) -> int:  # pragma: no cover - endless; DataLoader only asks when it must
        return 2**62
