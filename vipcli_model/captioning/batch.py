"""``caption_images``: caption many images the way ``vip caption`` does (resumable, one bad image
does not stop the rest, progress reported through callbacks)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vipcli_model.captioning.backends import Captioner, CaptionerSpec, EmptyAnswerError
from vipcli_model.captioning.files import CaptionCache, CaptionJsonlWriter, jsonl_record, read_caption_jsonl
from vipcli_model.captioning.questions import (
    CaptionResult,
    caption_for_outpaint,
    caption_for_training,
    center_box_for_ratio,
    parse_ratio,
)
from vipcli_model.captioning.text import default_clip_tokenizer
from vipcli_model.errors import InputError, OptionError
from vipcli_model.files import image_key

logger = logging.getLogger(__name__)


# ============================================================================== many images


@dataclass
class CaptionItem:
    """What happened to one image of a run."""

    path: Path
    image_key: str  # the path as written in the JSON Lines file (relative to the data folder)
    status: str  # "captioned", "cached" (answers from the cache), "skipped" (already in the JSONL), "failed"
    result: CaptionResult | None = None
    error: str | None = None  # one line, for "failed"
    exit_code: int = 0  # for "failed": the error's code (3 unreadable image, 6 unusable answer)


@dataclass
class CaptionRun:
    """The outcome of ``caption_images``."""

    items: list[CaptionItem] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def failed(self) -> int:
        return self.count("failed")


def data_root_for(paths: Sequence[Path], specs: Sequence[str] = ()) -> Path:
    """The folder JSON Lines paths are relative to: the folder given when exactly one folder was
    given, else the deepest folder holding every image."""
    if len(specs) == 1 and Path(specs[0]).expanduser().is_dir():
        return Path(specs[0]).expanduser().resolve()
    if not paths:
        return Path.cwd()
    return Path(os.path.commonpath([str(Path(path).resolve().parent) for path in paths]))


class LazyCaptioner:
    """Loads the captioner on first use, so a run that only hits the cache loads nothing."""

    def __init__(
        self, spec: CaptionerSpec, on_loading: Callable[[str], None] | None, download_progress: Any = None
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.on_loading = on_loading
        self.download_progress = download_progress
        self.loaded: Captioner | None = None

    def generate(self, image: Image.Image, instruction: str, *, max_new_tokens: int) -> str:
        if self.loaded is None:
            if self.on_loading is not None:
                self.on_loading(self.name)
            self.loaded = self.spec.load(tqdm_class=self.download_progress)
        return self.loaded.generate(image, instruction, max_new_tokens=max_new_tokens)


def check_caption_options(*, for_training: bool, ratio: float | str, keywords: str, jsonl: Path | None) -> float:
    """Reject a run's options before any image is read; the center-box ratio, parsed (``for_training``)."""
    if for_training:
        ratio = parse_ratio(ratio)
    if keywords.strip() and for_training:
        raise OptionError(
            "`keywords` steer the invented Surrounding of a photo to extend; with `for_training` the "
            "Surrounding is described from the image itself"
        )
    from vipcli_model.images.outputs import check_destination

    # the file is the run's output: a place it cannot be written is found before any captioning
    if jsonl is not None and (problem := check_destination(jsonl, kind="append", argument="jsonl")) is not None:
        raise problem
    return ratio


def caption_one(
    item: CaptionItem,
    captioner: Captioner,
    *,
    for_training: bool = False,
    ratio: float = 2.0,
    keywords: str = "",
    tokenizer: Any = None,
    cache: CaptionCache | None = None,
) -> CaptionItem:
    """Caption ``item.path``, the one-image step of ``caption_images`` (a Dask worker's too): fills ``item.result``
    and its status ("captioned" or "cached"), or "failed" with the error for an unreadable image or an empty
    answer. A captioner that cannot be loaded or reached raises."""
    from vipcli_model.images.io import load_image

    try:
        image = load_image(item.path).image
        if for_training:
            box = center_box_for_ratio(image.size, ratio)
            result = caption_for_training(captioner, image, box, tokenizer=tokenizer, cache=cache)
        else:
            result = caption_for_outpaint(captioner, image, keywords=keywords, tokenizer=tokenizer, cache=cache)
    except (InputError, EmptyAnswerError) as exc:
        item.status, item.error, item.exit_code = "failed", str(exc), exc.exit_code
        logger.info("%s: %s", item.path, exc)
    else:
        item.result = result
        item.status = "cached" if result.cached else "captioned"
    return item


def caption_images(
    paths: Sequence[Path],
    spec: CaptionerSpec,
    *,
    for_training: bool = False,
    ratio: float = 2.0,
    keywords: str = "",
    jsonl: Path | None = None,
    data_root: Path | None = None,
    use_cache: bool = True,
    tokenizer: Any = None,
    captioner: Captioner | None = None,
    on_item: Callable[[CaptionItem, int, int], None] | None = None,
    on_loading: Callable[[str], None] | None = None,
    download_progress: Any = None,
) -> CaptionRun:
    """Caption many images, the way ``vip caption`` does.

    - ``for_training``: describe the center box (the middle 1/``ratio`` of each side) and the border;
      otherwise prompts for a photo to extend, steered by ``keywords``.
    - ``jsonl``: append one record per image; images already in it are skipped (resume).
    - ``use_cache``: reuse and store answers in ``CaptionCache``.
    - ``tokenizer``: CLIP tokenizer for the 77-token window (default: the default inpainting
      model's when cached, else the estimate).
    - ``captioner``: an already loaded captioner; by default ``spec`` is loaded on first need.
    - ``on_item(item, done, total)`` after each image; ``on_loading(name)`` before loading a model;
      ``download_progress``: a tqdm class drawing the captioner's download when it is fetched on first use.

    A ``jsonl`` that cannot be written (a parent that is a file, a read-only folder) is an ``OutputError`` before
    any image is read. An unreadable image, or an empty answer, fails that image only. A captioner that cannot be
    loaded or reached raises (``CaptionerError``, ``ModelNotFoundError``...): the records written
    so far stay, and the next run resumes after them.
    """
    ratio = check_caption_options(for_training=for_training, ratio=ratio, keywords=keywords, jsonl=jsonl)
    data_root = Path(data_root).resolve() if data_root is not None else data_root_for(paths)
    done_before = read_caption_jsonl(jsonl) if jsonl is not None else {}
    if tokenizer is None:
        tokenizer = default_clip_tokenizer()
    cache = CaptionCache() if use_cache else None
    active: Captioner = captioner if captioner is not None else LazyCaptioner(spec, on_loading, download_progress)
    writer = CaptionJsonlWriter(jsonl) if jsonl is not None else None
    run = CaptionRun()
    try:
        for index, path in enumerate(paths, start=1):
            item = CaptionItem(path=Path(path), image_key=image_key(path, data_root), status="captioned")
            if item.image_key in done_before:
                item.status = "skipped"
            else:
                caption_one(
                    item,
                    active,
                    for_training=for_training,
                    ratio=ratio,
                    keywords=keywords,
                    tokenizer=tokenizer,
                    cache=cache,
                )
                if writer is not None and item.result is not None:
                    writer.write(jsonl_record(item.image_key, item.result))
                    done_before[item.image_key] = {}
            run.items.append(item)
            if on_item is not None:
                on_item(item, index, len(paths))
    finally:
        if writer is not None:
            writer.close()
    return run
