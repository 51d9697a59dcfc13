"""`vip eval`'s scoring: every metric of every setting (FID, KID, IS on Inception features; PSNR,
SSIM, LPIPS and CLIP score per image), written to results.json and per_image.csv; ``score_pairs``
scores two folders of other tools' outputs."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vipcli_model.errors import InputError, OutputError
from vipcli_model.evaluation import metrics
from vipcli_model.evaluation.feature_cache import FeatureCache
from vipcli_model.evaluation.inception import (
    FID_WEIGHTS_FILE,
    TORCH_FIDELITY_WEIGHTS_FILE,
    InceptionExtractor,
    InceptionFeatures,
    file_sha256,
    find_inception_weights,
)
from vipcli_model.evaluation.protocol import PROTOCOLS, EvalProtocol, scaled_known_box
from vipcli_model.evaluation.settings import EvalReport, ProgressCallback, ScoreConfig, read_prompts_file
from vipcli_model.files import atomic_write_text, image_key

logger = logging.getLogger(__name__)

RESULTS_FORMAT = 1
FID_RELIABLE_IMAGES = 2048  # fewer images than feature dimensions: FID is biased upward


@dataclass
class Pair:
    """One output and its ground truth."""

    key: str
    gt: Path
    pred: Path
    seed: int | None = None
    surrounding: str | None = None  # the Surrounding prompt it was made with, when known


# ============================================================================ scoring existing outputs


def score_pairs(
    pred_dir: Path,
    gt_dir: Path,
    *,
    protocol: EvalProtocol = PROTOCOLS["standard"],
    scoring: ScoreConfig = ScoreConfig(),
    out_dir: Path | None = None,
    prompts_file: Path | None = None,
    progress: ProgressCallback | None = None,
) -> EvalReport:
    """Score the images of ``pred_dir`` against those of ``gt_dir`` with the same key (path without
    suffix). Results go to ``out_dir`` (default: ``pred_dir``)."""
    from vipcli_model.images.io import expand_inputs
    from vipcli_model.images.outputs import check_destination

    for option, folder in (("`pred_dir`", pred_dir), ("`gt_dir`", gt_dir)):
        if not folder.is_dir():
            raise InputError(f"{option} {folder}: not a folder")
    destination = check_destination(out_dir or pred_dir, kind="folder", argument="out_dir" if out_dir else "pred_dir")
    if destination is not None:
        raise destination

    def by_key(folder: Path, option: str) -> dict[str, Path]:
        paths, _problems = expand_inputs([str(folder)])
        found: dict[str, Path] = {}
        for path in paths:
            key = image_key(path.relative_to(folder), suffix=False)
            if key in found:  # x.png and x.jpg: which one is the output of x is ambiguous
                raise InputError(
                    f"{option} {folder}: {found[key].name} and {path.name} share the name '{key}'; images are paired "
                    "by path without suffix: keep one of them (or move it to another folder)"
                )
            found[key] = path
        return found

    preds, truths = by_key(pred_dir, "`pred_dir`"), by_key(gt_dir, "`gt_dir`")
    common = sorted(set(preds) & set(truths))
    if not common:
        raise InputError(
            f"`pred_dir` {pred_dir} ({len(preds)} images) and `gt_dir` {gt_dir} ({len(truths)} images) share no "
            "file name: outputs are paired with ground truth by path without suffix (a/b.png <-> a/b.jpg)"
        )
    weights = find_inception_weights(scoring.feature_weights)
    surroundings = {key: p.surrounding for key, p in read_prompts_file(prompts_file).items()} if prompts_file else {}
    pairs = [Pair(key, truths[key], preds[key], surrounding=surroundings.get(key)) for key in common]
    unpaired = sorted(set(preds) ^ set(truths))
    header = {
        "mode": "pairs",
        "pred_dir": str(pred_dir),
        "gt_dir": str(gt_dir),
        "protocol": protocol.to_dict(),
        "skipped": [
            {"image": key, "reason": f"{key}: only in `{'pred_dir' if key in preds else 'gt_dir'}`"} for key in unpaired
        ],
    }
    return score_settings(
        {pred_dir.name or "pred": pairs},
        protocol,
        scoring,
        out_dir or pred_dir,
        header=header,
        weights=weights,
        progress=progress,
    )


# ============================================================================ scoring


def score_settings(
    settings_pairs: dict[str, list[Pair]],
    protocol: EvalProtocol,
    scoring: ScoreConfig,
    out_dir: Path,
    *,
    header: dict,
    weights: Path | None = None,
    progress: ProgressCallback | None = None,
    cache_features: bool = False,
) -> EvalReport:
    """Every metric of every setting; writes results.json and per_image.csv into ``out_dir``
    (and, with ``cache_features``, keeps the Inception features in ``out_dir/cache``)."""
    from vipcli_model.device import pick_device

    progress = progress or (lambda stage, done, total: None)
    device = pick_device(scoring.device)
    weights = weights or find_inception_weights(scoring.feature_weights)
    extractor = InceptionExtractor(weights, device, scoring.batch_size)
    weights_digest = file_sha256(weights)
    cache = FeatureCache(out_dir, weights_digest) if cache_features else None
    notes: list[str] = []
    lpips_model = _optional_lpips(scoring, device, notes)
    clip = _optional_clip(scoring, device, notes)
    _fill_surroundings(settings_pairs, clip is not None)
    references = _clip_references(settings_pairs) if clip is not None else {}

    # ground truth features once, for every key any setting uses
    truths = {pair.key: pair.gt for pairs in settings_pairs.values() for pair in pairs}
    gt_keys = sorted(truths)
    gt_features = _features(extractor, [truths[key] for key in gt_keys], "features: ground truth", progress, cache)
    gt_rows = {key: row for row, key in enumerate(gt_keys)}

    settings: dict[str, dict] = {}
    per_image: list[dict] = []
    for name, pairs in settings_pairs.items():
        if not pairs:
            settings[name] = {"images": 0}
            notes.append(f"'{name}': no outputs to score")
            continue
        pred_features = _features(extractor, [pair.pred for pair in pairs], f"features: {name}", progress, cache)
        rows = [gt_rows[pair.key] for pair in pairs]
        truth_pool, truth_logits = gt_features.pool[rows], gt_features.logits[rows]
        summary: dict[str, Any] = {"images": len(pairs)}
        if len(pairs) >= 2:
            summary["fid"] = metrics.fid_from_features(pred_features.pool, truth_pool)
            kid_mean, kid_std, kid_size = metrics.kernel_inception_distance(pred_features.pool, truth_pool)
            summary.update(
                kid_mean=kid_mean, kid_std=kid_std, kid_subsets=metrics.KID_SUBSETS, kid_subset_size=kid_size
            )
        else:
            notes.append(f"'{name}': FID and KID need at least 2 images")
        splits = metrics.is_splits_for(len(pairs))
        summary["is_mean"], summary["is_std"] = metrics.inception_score(pred_features.logits, splits)
        summary["is_splits"] = splits
        summary["gt_is_mean"], summary["gt_is_std"] = metrics.inception_score(truth_logits, splits)
        rows_of_setting = _pixel_metrics(
            name, pairs, protocol, scoring, lpips_model, clip, references.get(name), progress
        )
        per_image.extend(rows_of_setting)
        for column in PER_IMAGE_METRICS:
            values = [row[column] for row in rows_of_setting if row[column] is not None]
            summary[column] = float(np.mean(values)) if values else None
        if clip is not None and references.get(name):
            summary["clip_reference"] = references[name]
        settings[name] = summary
    counts = {summary["images"] for summary in settings.values()}
    if any(count < FID_RELIABLE_IMAGES for count in counts):
        notes.append(
            f"FID on fewer than {FID_RELIABLE_IMAGES} images is biased upward (it depends on the set size): "
            "compare FID only between runs of the same size, and read KID, which is unbiased"
        )
    if len(counts) > 1:
        notes.append("settings were scored on different numbers of images (some were skipped): see 'skipped'")
    if any(s.get("psnr_known") == math.inf for s in settings.values()):
        notes.append("psnr_known is infinite (null in JSON): the known center is pasted back unchanged")

    standard = weights.name in (FID_WEIGHTS_FILE, TORCH_FIDELITY_WEIGHTS_FILE)
    if not standard:
        notes.append(
            f"feature weights '{weights.name}' are not {FID_WEIGHTS_FILE}: FID / KID / IS are not comparable with "
            "published numbers"
        )
    results = {
        "format": RESULTS_FORMAT,
        **header,
        "settings": settings,
        "feature_extractor": {
            "network": "FID Inception v3 (TF 2015-12-05 graph), pytorch-fid architecture",
            "weights": str(weights),
            "weights_sha256": weights_digest,
            "standard_weights_file": standard,
            "preprocessing": "RGB uint8 / 255, bilinear resize to 299x299 (align_corners=False), 2x-1 (as pytorch-fid)",
            "fid_features": "pool3, 2048-d",
            "is_features": "unbiased logits (pool @ fc.weight.T), 1008 classes (as torch-fidelity)",
            "kid": (
                f"cubic polynomial kernel, unbiased MMD², {metrics.KID_SUBSETS} subsets of kid_subset_size "
                f"(1000, or half the smaller set below 2000 images), rng seed {metrics.RNG_SEED} (as torch-fidelity)"
            ),
        },
        "notes": notes,
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if cache is not None:
        cache.save()
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    per_image_path = out_dir / "per_image.csv"
    write_text(results_path, json.dumps(_finite(results), indent=2) + "\n")
    write_text(per_image_path, _csv(per_image))
    return EvalReport(results=results, per_image=per_image, results_path=results_path, per_image_path=per_image_path)


PER_IMAGE_METRICS = (
    "psnr_known",
    "psnr_generated",
    "psnr_whole",
    "ssim_known",
    "ssim_whole",
    "lpips_known",
    "lpips_whole",
    "clip_score",
)


def _pixel_metrics(name, pairs, protocol, scoring, lpips_model, clip, reference, progress) -> list[dict]:
    from vipcli_model.evaluation.perceptual import lpips_distances, surrounding_only

    rows: list[dict] = []
    batch = max(1, scoring.batch_size)
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        preds, truths, boxes = [], [], []
        for pair in chunk:
            pred, truth = _read_rgb(pair.pred), _read_rgb(pair.gt)
            if pred.size != truth.size:
                raise InputError(
                    f"{pair.pred} is {pred.size[0]}x{pred.size[1]} but {pair.gt} is {truth.size[0]}x{truth.size[1]}"
                )
            preds.append(pred)
            truths.append(truth)
            boxes.append(scaled_known_box(protocol, pred.size))
        pred_arrays = [np.asarray(image) for image in preds]
        truth_arrays = [np.asarray(image) for image in truths]
        crop = [
            (p[b[1] : b[3], b[0] : b[2]], t[b[1] : b[3], b[0] : b[2]])
            for p, t, b in zip(pred_arrays, truth_arrays, boxes)
        ]
        lpips_whole = (
            lpips_distances(lpips_model, pred_arrays, truth_arrays) if lpips_model is not None else [None] * len(chunk)
        )
        lpips_known = (
            lpips_distances(lpips_model, [c[0] for c in crop], [c[1] for c in crop])
            if lpips_model is not None
            else [None] * len(chunk)
        )
        clip_scores: list[float | None] = [None] * len(chunk)
        if clip is not None:
            texts = [pair.surrounding or "" for pair in chunk]
            scored = [i for i, text in enumerate(texts) if text]
            if scored:
                values = clip([surrounding_only(preds[i], boxes[i]) for i in scored], [texts[i] for i in scored])
                for i, value in zip(scored, values):
                    clip_scores[i] = value
        for i, pair in enumerate(chunk):
            known_mask = np.zeros(pred_arrays[i].shape[:2], dtype=bool)
            left, top, right, bottom = boxes[i]
            known_mask[top:bottom, left:right] = True
            rows.append(
                {
                    "setting": name,
                    "image": pair.key,
                    "seed": pair.seed,
                    "psnr_known": metrics.psnr(*crop[i]),
                    "psnr_generated": metrics.psnr(pred_arrays[i], truth_arrays[i], ~known_mask),
                    "psnr_whole": metrics.psnr(pred_arrays[i], truth_arrays[i]),
                    "ssim_known": metrics.ssim(*crop[i]),
                    "ssim_whole": metrics.ssim(pred_arrays[i], truth_arrays[i]),
                    "lpips_known": lpips_known[i],
                    "lpips_whole": lpips_whole[i],
                    "clip_score": clip_scores[i],
                    "surrounding": pair.surrounding or "",
                }
            )
        progress(f"pixels: {name}", start + len(chunk), len(pairs))
    return rows


def _features(
    extractor: InceptionExtractor, paths: list[Path], stage: str, progress: ProgressCallback, cache: FeatureCache | None
) -> InceptionFeatures:
    """Inception features of image files, in order; files the cache knows (same size and mtime) are not run again."""
    pool = np.zeros((len(paths), 2048), dtype=np.float64)
    logits = np.zeros((len(paths), 1008), dtype=np.float64)
    todo = []
    for row, path in enumerate(paths):
        known = cache.get(path) if cache is not None else None
        if known is None:
            todo.append(row)
        else:
            pool[row], logits[row] = known
    progress(stage, len(paths) - len(todo), len(paths))
    for start in range(0, len(todo), extractor.batch_size):
        rows = todo[start : start + extractor.batch_size]
        features = extractor([np.asarray(_read_rgb(paths[row])) for row in rows])
        pool[rows], logits[rows] = features.pool, features.logits
        if cache is not None:
            for offset, row in enumerate(rows):
                cache.put(paths[row], features.pool[offset], features.logits[offset])
        progress(stage, len(paths) - len(todo) + start + len(rows), len(paths))
    return InceptionFeatures(pool=pool, logits=logits)


def _read_rgb(path: Path) -> Image.Image:
    """An output or ground-truth image as RGB (pytorch-fid: ``Image.open(path).convert("RGB")``)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read image ({exc})") from exc


def _optional_lpips(scoring: ScoreConfig, device, notes: list[str]):
    if not scoring.lpips:
        return None
    from vipcli_model.evaluation.perceptual import Unavailable, load_lpips

    try:
        return load_lpips(device)
    except Unavailable as exc:
        notes.append(str(exc))
        return None


def _optional_clip(scoring: ScoreConfig, device, notes: list[str]):
    if not scoring.clip_model:
        notes.append("CLIP score skipped: pass `clip_model` (e.g. openai/clip-vit-large-patch14) to compute it")
        return None
    from vipcli_model.evaluation.perceptual import ClipScorer

    return ClipScorer.load(scoring.clip_model, device)


def _fill_surroundings(settings_pairs: dict[str, list[Pair]], wanted: bool) -> None:
    """The Surrounding prompt of each output, from its vip metadata when not known already."""
    if not wanted:
        return
    from vipcli_model.images.io import read_metadata

    for pairs in settings_pairs.values():
        for pair in pairs:
            if pair.surrounding is None:
                try:
                    meta = read_metadata(pair.pred).get("vip") or {}
                except InputError:
                    meta = {}
                pair.surrounding = (
                    ((meta.get("prompts") or {}).get("surrounding") or "") if isinstance(meta, dict) else ""
                )


def _clip_references(settings_pairs: dict[str, list[Pair]]) -> dict[str, str]:
    """Which texts each setting's CLIP score uses: its own Surrounding prompts; a setting without
    any (unconditional) borrows those of the first setting that has them, so both are comparable."""
    own = {name: any(pair.surrounding for pair in pairs) for name, pairs in settings_pairs.items()}
    donor = next((name for name, has in own.items() if has), None)
    references: dict[str, str] = {}
    for name, pairs in settings_pairs.items():
        if own[name]:
            references[name] = name
        elif donor is not None:
            texts = {pair.key: pair.surrounding for pair in settings_pairs[donor]}
            for pair in pairs:
                pair.surrounding = texts.get(pair.key) or ""
            references[name] = donor
    return references


def _versions() -> dict[str, str]:
    found = {}
    for package in ("vip-outpaint", "torch", "diffusers", "transformers", "accelerate", "numpy", "scipy", "pillow"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    import platform

    found["python"] = platform.python_version()
    return found


def _finite(value):
    """JSON has no inf / nan: write them as null (the notes say why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _csv(rows: Iterable[dict]) -> str:
    columns = ["setting", "image", "seed", *PER_IMAGE_METRICS, "surrounding"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                column: (
                    ""
                    if row[column] is None
                    else f"{row[column]:.6g}"
                    if isinstance(row[column], float)
                    else row[column]
                )
                for column in columns
            }
        )
    return buffer.getvalue()


def write_text(path: Path, text: str) -> None:
    """Write atomically (temp file beside it, then rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text, durable=False)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
