"""Training data: folder scan (broken files reported, never replaced), captions, examples, data order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vipcli_model.errors import InputError
from vipcli_model.prompts import RegionPrompts
from vipcli_model.training.data import (
    DataOrder,
    OutpaintExamples,
    ProcessBatches,
    apply_prompt_dropout,
    collate_examples,
    scan_training_data,
)


def make_data(folder: Path) -> Path:
    """Five good images (one in a subfolder, one small), a corrupt and a truncated one, captions."""
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    for name, size in (
        ("a.png", (120, 90)),
        ("b.jpg", (90, 120)),
        ("c.png", (100, 100)),
        ("sub/d.png", (80, 96)),
        ("e.png", (40, 30)),
    ):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    good = (folder / "a.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / ".hidden.png").write_bytes(b"ignored")
    lines = [
        {
            "image": "a.png",
            "center": "a red barn",
            "surrounding": "snowy field",
            "total": "Center: a red barn; Surrounding: snowy field",
            "center_box": [30, 22, 90, 68],
        },
        {"image": "sub/d.png", "center": "a cat", "surrounding": "a sofa"},
        {"image": "missing.png", "center": "x", "surrounding": "y"},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"image": "c.png", "cent'  # torn last line
    (folder / "captions.jsonl").write_text(text)
    return folder


def test_scan_reports_broken_files_and_caption_coverage(tmp_path):
    report = scan_training_data(make_data(tmp_path / "data"), resolution=64)
    assert [image.key for image in report.images] == ["a.png", "b.jpg", "c.png", "e.png", "sub/d.png"]
    assert sorted(key for key, _reason in report.broken) == ["corrupt.png", "truncated.png"]
    assert all(reason for _key, reason in report.broken)
    assert report.captions_path == tmp_path / "data" / "captions.jsonl"  # found by default
    assert report.captioned == 2 and report.uncaptioned == 3
    assert report.missing_images == ["missing.png"]
    assert report.upscaled == 1  # e.png is 40x30 < 64
    by_key = {image.key: image.prompts for image in report.images}
    assert by_key["sub/d.png"] == RegionPrompts(
        center="a cat", surrounding="a sofa", total="Center: a cat; Surrounding: a sofa"
    )
    summary = report.to_dict()
    assert (
        summary["images"] == 5 and len(summary["broken"]) == 2 and summary["captions_without_image"] == ["missing.png"]
    )


def test_scan_errors_name_the_culprit(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        scan_training_data(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="captions file .*no such file"):
        scan_training_data(tmp_path / "empty", tmp_path / "caps.jsonl")
    assert scan_training_data(tmp_path / "empty").images == []


def test_examples_follow_the_inpainting_convention_and_are_reproducible(tmp_path):
    report = scan_training_data(make_data(tmp_path / "data"), resolution=64)
    dataset = OutpaintExamples(
        report.images, resolution=64, seed=3, mask_mix={"ratio": 1.0}, prompt_dropout=0.0, branch_dropout=0.0
    )
    example = dataset[(0, 0, 0)]
    assert example["pixels"].shape == (3, 64, 64) and example["mask"].shape == (1, 64, 64)
    assert -1.0 <= float(example["pixels"].min()) and float(example["pixels"].max()) <= 1.0
    assert example["total"] == "Center: a red barn; Surrounding: snowy field"
    again = dataset[(0, 0, 0)]
    assert torch.equal(example["mask"], again["mask"]) and torch.equal(example["pixels"], again["pixels"])
    other = dataset[(0, 1, 0)]  # same image, next epoch: a different mask
    assert not torch.equal(example["mask"], other["mask"])
    batch = collate_examples([example, other])
    assert batch["pixels"].shape == (2, 3, 64, 64) and batch["center"] == ["a red barn", "a red barn"]
    uncaptioned = dataset[(1, 0, 1)]  # b.jpg has no caption: trains unconditionally
    assert (uncaptioned["center"], uncaptioned["surrounding"], uncaptioned["total"]) == ("", "", "")


def test_prompt_dropout_rates():
    prompts = RegionPrompts.build(center="a barn", surrounding="snow")
    rng = np.random.default_rng(0)
    drawn = [apply_prompt_dropout(prompts, rng, 0.1, 0.2) for _ in range(4000)]
    empty = sum(p.is_empty for p in drawn) / len(drawn)
    center_to_total = sum(p.center == prompts.total for p in drawn if not p.is_empty) / len(drawn)
    surrounding_to_total = sum(p.surrounding == prompts.total for p in drawn if not p.is_empty) / len(drawn)
    assert 0.08 < empty < 0.12
    assert 0.15 < center_to_total < 0.21 and 0.15 < surrounding_to_total < 0.21
    assert all(p.total in ("", prompts.total) for p in drawn)
    assert apply_prompt_dropout(None, rng, 0.0, 0.0).is_empty


def test_data_order_is_seeded_resumable_and_split_across_processes():
    order = DataOrder(num_images=5, seed=1)
    first = order.take(7)  # runs across the epoch boundary
    assert sorted(index for index, epoch, _ in first if epoch == 0) == [0, 1, 2, 3, 4]
    assert [(epoch, offset) for _, epoch, offset in first][-2:] == [(1, 0), (1, 1)]
    rest = order.take(6)
    resumed = DataOrder(num_images=5, seed=1, position=7)
    assert resumed.take(6) == rest  # the state is the position alone
    # two processes read disjoint halves of each global batch
    rank0 = iter(ProcessBatches(DataOrder(5, 1), batch_size=2, rank=0, world_size=2))
    rank1 = iter(ProcessBatches(DataOrder(5, 1), batch_size=2, rank=1, world_size=2))
    whole = DataOrder(5, 1).take(4)
    assert next(rank0) + next(rank1) == whole
    assert DataOrder(5, 2).take(5) != DataOrder(5, 1).take(5)  # another seed, another order


def test_caption_box_routes_the_region_prompts(tmp_path):
    """The Center caption is routed to the box it describes (through resize + crop), not to the sampled mask."""
    import json as _json

    from PIL import Image as _Image

    from vipcli_model.training.data import OutpaintExamples, box_region, scan_training_data

    _Image.new("RGB", (200, 100), "red").save(tmp_path / "wide.png")
    _Image.new("RGB", (64, 64), "blue").save(tmp_path / "plain.png")
    (tmp_path / "captions.jsonl").write_text(
        _json.dumps({"image": "wide.png", "center": "c", "surrounding": "s", "center_box": [50, 25, 150, 75]})
        + "\n"
        + _json.dumps({"image": "plain.png", "center": "c", "surrounding": "s"})
        + "\n"
    )
    report = scan_training_data(tmp_path, resolution=64)
    boxes = {image.key: image.center_box for image in report.images}
    assert boxes == {"wide.png": (50, 25, 150, 75), "plain.png": None}
    # 200x100 -> 128x64, center crop x 32..96: the box 75..125 x 25..75 becomes 16..48 x 16..48
    region = box_region((75, 25, 125, 75), (200, 100), 64)[0]
    assert region[16:48, 16:48].eq(0).all() and region.sum() == 64 * 64 - 32 * 32
    examples = OutpaintExamples(
        report.images, resolution=64, seed=0, mask_mix={"one_side": 1.0}, prompt_dropout=0.0, branch_dropout=0.0
    )
    by_key = {image.key: index for index, image in enumerate(report.images)}
    with_box = examples[(by_key["wide.png"], 0, 0)]
    assert torch.equal(with_box["region"], box_region((50, 25, 150, 75), (200, 100), 64))
    assert not torch.equal(with_box["region"], with_box["mask"])
    without = examples[(by_key["plain.png"], 0, 1)]
    assert torch.equal(without["region"], without["mask"])  # no box known: routed by the mask, as at inference
