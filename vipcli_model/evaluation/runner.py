"""`vip eval`: generate the benchmark outputs of a model, then score them; or score existing outputs.

``run_eval`` reads top to bottom:

1. check the options, RUN_DIR's ``run.json`` (a resumed run must use the settings it was started
   with) and find the Inception weights: before any generation, as a run must not spend hours and
   then fail on a missing file;
2. list the test images (sorted; ``--limit`` takes the first N), give each a key (its path
   under DATA_DIR without suffix) and a seed (base seed + its index in that list, so an image's
   output does not depend on the order, the resume point, or the GPU it ran on);
3. take this process's shard (``accelerate launch`` runs one process per GPU);
4. for each image: write ``gt/<key>.png`` (the resized ground truth); for each prompt setting,
   outpaint the known center into ``pred/<setting>/<key>.png`` unless a finished output with the
   same settings is already there; a broken image is reported and skipped;
5. wait for the other processes; the main one scores every setting (``score_settings``) and
   writes ``results.json`` and ``per_image.csv``.

``score_pairs`` does step 5 alone on two folders (other tools' outputs against ground truth).

Layout of RUN_DIR::

    run.json                 the generation settings (checked on resume)
    gt/<key>.png             ground truth at the protocol size
    pred/<setting>/<key>.png outputs, with the vip metadata of each (prompts, seed, ...)
    results.json             metrics per setting, protocol, model, seeds, versions
    per_image.csv            per-image PSNR / SSIM / LPIPS / CLIP score
    cache/                   Inception features of the files above (reused while a file is unchanged)
    logs/                    what each process generated, reused and skipped

Several GPUs: ``accelerate launch --num_processes 4 -m vipcli.main eval DATA --model M --out RUN``
(or ``torchrun --nproc_per_node 4 -m vipcli.main eval ...``, which also runs CPU processes);
each process generates every 4th image on its own GPU, the main process then scores them all.
Seeds are per image, so the outputs are those of a single-process run.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import math
import os
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from ..config import BlendConfig, ExpansionConfig, GenerationConfig, ModelConfig
from ..errors import InputError, ModelLoadError, ModelNotFoundError, OptionError, OutputError, VipError
from ..files import atomic_write_bytes, atomic_write_text, image_key, read_jsonl
from ..prompts import RegionPrompts
from . import metrics
from .inception import (
    FID_WEIGHTS_FILE,
    TORCH_FIDELITY_WEIGHTS_FILE,
    InceptionExtractor,
    InceptionFeatures,
    file_sha256,
    find_inception_weights,
)
from .protocol import PROTOCOLS, EvalProtocol, ground_truth, known_region, scaled_known_box, shard

logger = logging.getLogger(__name__)

RESULTS_FORMAT = 1
UNCONDITIONAL = "unconditional"
CAPTIONER = "captioner"
RESERVED_SETTINGS = (UNCONDITIONAL, CAPTIONER)
FID_RELIABLE_IMAGES = 2048  # fewer images than feature dimensions: FID is biased upward

ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)
SkipCallback = Callable[[str, str], None]  # (image key or setting/key, reason)


# ============================================================================ settings


@dataclass(frozen=True)
class PromptSetting:
    """Where an output's prompts come from; each setting is generated and scored separately."""

    name: str  # folder name under pred/ and column of the results
    kind: str  # "unconditional" (empty prompts), "captioner" (an MLLM on the known center) or "file"
    path: Path | None = None  # the JSON Lines prompts file of a "file" setting

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, **({"path": str(self.path)} if self.path else {})}


def parse_prompt_settings(specs: Sequence[str] | None) -> tuple[PromptSetting, ...]:
    """``--prompts`` values -> settings: "unconditional", "captioner", or a JSON Lines file (named by its stem)."""
    settings: list[PromptSetting] = []
    for spec in specs or [UNCONDITIONAL]:
        if spec in RESERVED_SETTINGS:
            setting = PromptSetting(spec, spec)
        else:
            path = Path(spec).expanduser()
            if not path.is_file():
                raise OptionError(
                    f"--prompts '{spec}' is neither 'unconditional', 'captioner' nor a JSON Lines file"
                )
            setting = PromptSetting(path.stem, "file", path)
            if setting.name in RESERVED_SETTINGS:
                raise OptionError(f"--prompts {spec}: rename the file, '{path.stem}' is the name of a built-in setting")
        if setting.name in {existing.name for existing in settings}:
            raise OptionError(f"--prompts '{spec}' is given twice (or two files share the name '{setting.name}')")
        settings.append(setting)
    return tuple(settings)


def read_prompts_file(path: Path, data_dir: Path | None = None) -> dict[str, RegionPrompts]:
    """A prompts file: one JSON object a line, ``{"image": "relative/path.png", "center": ...,
    "surrounding": ..., "total": ...}`` (``total`` optional). Keys: the image path without suffix.
    A torn last line is skipped with a warning (``files.read_jsonl``)."""
    try:
        lines = read_jsonl(path, _check_prompts_record, what="a prompts record")
    except OSError as exc:
        raise InputError(f"cannot read prompts file {path}: {exc}") from exc
    records: dict[str, RegionPrompts] = {}
    for _number, record in lines:
        image = record["image"]
        root = data_dir if data_dir is not None and Path(image).is_absolute() else None  # relative: as written
        records[image_key(image, root, suffix=False)] = RegionPrompts.build(
            center=record.get("center") or "", surrounding=record.get("surrounding") or "", total=record.get("total") or None
        )
    return records


def _check_prompts_record(record: Any) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        raise ValueError('not an object with an "image" path')
    if not all(isinstance(record.get(name) or "", str) for name in ("center", "surrounding", "total")):
        raise ValueError("center / surrounding / total must be strings")


@dataclass(frozen=True)
class ScoreConfig:
    """How outputs are scored."""

    feature_weights: str | None = None  # FID Inception weights file; None: cached or downloaded
    clip_model: str | None = None  # transformers CLIP (hub id or folder) for the CLIP score; None: skipped
    device: str = "auto"  # where the scoring networks run
    batch_size: int = 32  # images per forward pass of the scoring networks
    lpips: bool = True  # try LPIPS (skipped with a note when its weights are missing)


@dataclass(frozen=True)
class EvalConfig:
    """One generate-and-score run."""

    data_dir: Path  # folder of test images (searched recursively)
    out_dir: Path  # RUN_DIR
    model: ModelConfig = ModelConfig()
    protocol: EvalProtocol = PROTOCOLS["standard"]
    settings: tuple[PromptSetting, ...] = (PromptSetting(UNCONDITIONAL, UNCONDITIONAL),)
    seed: int = 0  # image i (in sorted order) uses seed + i
    steps: int = 50  # the paper's inference setting
    guidance: float = 7.5
    scheduler: str = "dpm++"
    cts: bool = True  # C-T-S region prompts; False: plain inpainting with the Total prompt
    region_strength: float | None = None  # C-T-S gate; None: the adapter's gates, else the default
    limit: int | None = None  # only the first N images (sorted)
    captioner_model: str | None = None  # for the "captioner" setting: transformers model (default SmolVLM)
    captioner_url: str | None = None  # ... or an OpenAI-compatible server
    captioner_server_model: str | None = None  # the model name that server serves
    scoring: ScoreConfig = ScoreConfig()

    def generation(self, seed: int) -> GenerationConfig:
        return GenerationConfig(
            steps=self.steps, guidance=self.guidance, seed=seed, scheduler=self.scheduler,
            cts=self.cts, region_strength=self.region_strength,
        )

    def run_record(self) -> dict:
        """What a resumed run must share with the run that made RUN_DIR."""
        return {
            "data_dir": str(self.data_dir.resolve()),
            "protocol": self.protocol.to_dict(),
            "model": self.model.model,
            "adapter": self.model.adapter,
            "seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "scheduler": self.scheduler,
            "cts": self.cts,
            "region_strength": self.region_strength,
        }


@dataclass
class EvalReport:
    """What a run produced: the content of results.json, the per-image rows, and where they are."""

    results: dict
    per_image: list[dict]
    results_path: Path
    per_image_path: Path


@dataclass
class _Processes:
    index: int = 0
    count: int = 1
    device: str | None = None
    barrier: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        return self.index == 0


def current_processes() -> _Processes:
    """This process's place among those ``accelerate launch`` started (one, without it)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return _Processes()
    import torch
    from accelerate import PartialState

    # without CUDA, accelerate only joins the processes (gloo) when told to use the CPU;
    # generation between the two barriers takes hours on big sets: a long collective timeout
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=_dt.timedelta(hours=48))
    if state.num_processes != world_size:
        raise OptionError(
            f"launched as {world_size} processes, but accelerate joined {state.num_processes}: "
            "launch with `accelerate launch --num_processes N -m vipcli.main eval ...` or `torchrun --nproc_per_node N ...`"
        )
    return _Processes(state.process_index, state.num_processes, str(state.device), state.wait_for_everyone)


# ============================================================================ generate and score


def run_eval(
    config: EvalConfig,
    *,
    progress: ProgressCallback | None = None,
    on_skip: SkipCallback | None = None,
    outpainter: Any = None,
    captioner: Any = None,
    processes: _Processes | None = None,
) -> EvalReport | None:
    """Generate (resumably) and score; returns the report on the main process, None on the others.

    ``outpainter`` / ``captioner`` may be given already loaded (tests, notebooks); otherwise they
    load on first need, so a finished run resumes without loading any model.
    """
    progress = progress or (lambda stage, done, total: None)
    processes = processes or current_processes()
    # 1. options, RUN_DIR's settings and the weights, first
    run_file = config.out_dir / "run.json"
    _check_run_file(run_file, config.run_record())
    _check_config(config)
    weights = find_inception_weights(config.scoring.feature_weights) if processes.is_main else None
    prompt_files = {s.name: read_prompts_file(s.path, config.data_dir) for s in config.settings if s.kind == "file"}
    # 2. the images, their keys and seeds
    images, listing_problems = list_images(config.data_dir, config.limit)
    for setting in config.settings:
        if setting.kind == "file":
            missing = [key for key, _path, _seed in images if key not in prompt_files[setting.name]]
            if missing:
                shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                raise InputError(f"prompts file {setting.path} has no record for {len(missing)} image(s): {shown}")
    processes.barrier()  # every process has checked run.json before the main one writes it
    if processes.is_main and not run_file.exists():
        _write_text(run_file, json.dumps(config.run_record(), indent=2) + "\n")
    # 3-4. this process's shard
    mine = shard(images, processes.index, processes.count)
    state = _Generation(config, processes, outpainter, captioner, prompt_files)
    total = len(mine) * len(config.settings)
    progress("generate", 0, total)
    for number, (key, path, index) in enumerate(mine):
        state.image(key, path, config.seed + index, on_skip)
        progress("generate", (number + 1) * len(config.settings), total)
    _write_text(config.out_dir / "logs" / f"generation-{processes.index}.json", json.dumps(state.summary(), indent=2))
    # 5. the main process scores
    processes.barrier()
    if not processes.is_main:
        return None
    summary = _merge_summaries(config.out_dir, processes.count)
    skipped = [{"image": path, "reason": reason} for path, reason in listing_problems] + summary["skipped"]
    settings_pairs = {
        setting.name: [
            Pair(key, config.out_dir / "gt" / f"{key}.png", config.out_dir / "pred" / setting.name / f"{key}.png", config.seed + index)
            for key, _path, index in images
            if (config.out_dir / "pred" / setting.name / f"{key}.png").is_file()
            and (config.out_dir / "gt" / f"{key}.png").is_file()
        ]
        for setting in config.settings
    }
    header = {
        "mode": "generate",
        "data_dir": str(config.data_dir),
        "run_dir": str(config.out_dir),
        "protocol": config.protocol.to_dict(),
        "model": config.model.model,
        "adapter": config.model.adapter,
        "prompt_settings": [setting.to_dict() for setting in config.settings],
        "generation": {
            "steps": config.steps,
            "guidance": config.guidance,
            "scheduler": config.scheduler,
            "negative": "",
            "feather": 0,
            "seed": config.seed,
            "seeds": "seed + index of the image in the sorted list",
            "images_listed": len(images),
            "generated": summary["generated"],
            "reused": summary["reused"],
            "processes": processes.count,
        },
        "skipped": skipped,
    }
    return score_settings(
        settings_pairs, config.protocol, config.scoring, config.out_dir, header=header, weights=weights,
        progress=progress, cache_features=True,
    )


def list_images(data_dir: Path, limit: int | None = None) -> tuple[list[tuple[str, Path, int]], list[tuple[str, str]]]:
    """(key, path, index) of the test images in sorted order, and (path, reason) of those left out."""
    from ..image_io import expand_inputs

    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: not a folder of images")
    paths, problems = expand_inputs([str(data_dir)])
    if not paths:
        raise InputError(f"{data_dir}: no images found (searched recursively)")
    found: list[tuple[str, Path, int]] = []
    left_out: list[tuple[str, str]] = [(spec, reason) for spec, reason in problems]
    seen: dict[str, Path] = {}
    for index, path in enumerate(paths):
        key = image_key(path.relative_to(data_dir), suffix=False)
        if key in seen:
            left_out.append((str(path), f"same name as {seen[key]} (outputs are named by path without suffix)"))
            continue
        seen[key] = path
        found.append((key, path, index))
    if limit is not None:
        found = found[:limit]
    return found, left_out


@dataclass
class Pair:
    """One output and its ground truth."""

    key: str
    gt: Path
    pred: Path
    seed: int | None = None
    surrounding: str | None = None  # the Surrounding prompt it was made with, when known


class _Generation:
    """Step 5 for one process: ground truth and outputs of each image, resumably."""

    def __init__(self, config: EvalConfig, processes: _Processes, outpainter, captioner, prompt_files) -> None:
        self.config = config
        self.processes = processes
        self.outpainter = outpainter
        self.captioner = captioner
        self.prompt_files = prompt_files
        self.generated = 0
        self.reused = 0
        self.skipped: list[dict] = []

    def summary(self) -> dict:
        return {"generated": self.generated, "reused": self.reused, "skipped": self.skipped}

    def skip(self, image: str, reason: str, setting: str | None, on_skip: SkipCallback | None) -> None:
        self.skipped.append({"image": image, "reason": reason, **({"setting": setting} if setting else {})})
        if on_skip is not None:
            on_skip(image if setting is None else f"{setting}/{image}", reason)

    def image(self, key: str, path: Path, seed: int, on_skip: SkipCallback | None) -> None:
        config = self.config
        gt_path = config.out_dir / "gt" / f"{key}.png"
        try:
            truth = self.ground_truth(key, path, gt_path)
        except (InputError, OutputError) as exc:
            self.skip(str(path), str(exc), None, on_skip)
            return
        known = known_region(truth, config.protocol)
        for setting in config.settings:
            pred_path = config.out_dir / "pred" / setting.name / f"{key}.png"
            record = self.record(key, seed, setting)
            if _finished(pred_path, record):
                self.reused += 1
                continue
            try:
                prompts = self.prompts(key, known, setting)
                self.outpaint(known, truth, prompts, seed, pred_path, {**record, "prompts": prompts.to_dict()}, path)
                self.generated += 1
            except (ModelNotFoundError, ModelLoadError):
                raise
            except VipError as exc:
                self.skip(str(path), str(exc), setting.name, on_skip)

    def record(self, key: str, seed: int, setting: PromptSetting) -> dict:
        """What a finished output must have been made with (stored in its metadata as "eval")."""
        config = self.config
        record = {
            "image": key,
            "setting": setting.name,
            "seed": seed,
            "protocol": config.protocol.to_dict(),
            "model": config.model.model,
            "adapter": config.model.adapter,
            "steps": config.steps,
            "guidance": config.guidance,
            "scheduler": config.scheduler,
            "cts": config.cts,
            "region_strength": config.region_strength,
        }
        if setting.kind == "file":  # an edited prompts file regenerates the images whose prompts changed
            record["file_prompts"] = self.prompt_files[setting.name][key].to_dict()
        return record

    def ground_truth(self, key: str, source: Path, gt_path: Path) -> Image.Image:
        from ..image_io import load_image, read_metadata, save_image

        if gt_path.is_file():
            try:
                meta = read_metadata(gt_path).get("vip") or {}
                if meta.get("eval_gt") == {"image": key, "size": list(self.config.protocol.size)}:
                    with Image.open(gt_path) as stored:
                        return stored.convert("RGB")
            except InputError:
                pass  # unreadable: write it again
        loaded = load_image(source)
        truth = ground_truth(loaded.image, self.config.protocol)
        metadata = {"source": str(source), "eval_gt": {"image": key, "size": list(self.config.protocol.size)}}
        save_image(truth, gt_path, metadata=metadata, overwrite=True)
        return truth

    def prompts(self, key: str, known: Image.Image, setting: PromptSetting) -> RegionPrompts:
        if setting.kind == UNCONDITIONAL:
            return RegionPrompts()
        if setting.kind == "file":
            return self.prompt_files[setting.name][key]
        # the captioner sees only what the model is given: the known center
        try:
            from ..captioner import CaptionCache, caption_for_outpaint, load_captioner
        except ImportError as exc:
            raise OptionError("--prompts captioner needs vip's captioner module, which this install lacks") from exc
        if self.captioner is None:
            config = self.config
            self.captioner = load_captioner(
                model=config.captioner_model,
                url=config.captioner_url,
                server_model=config.captioner_server_model,
                device=self.processes.device or config.model.device,
            )
        # prompts fitted to the 77-token window of the model's own tokenizer, as `vip outpaint` does
        tokenizer = getattr(getattr(self.load_outpainter(), "pipe", None), "tokenizer", None)
        return caption_for_outpaint(self.captioner, known, tokenizer=tokenizer, cache=CaptionCache()).prompts

    def load_outpainter(self):
        if self.outpainter is None:
            from ..outpaint import Outpainter

            model = self.config.model
            if self.processes.count > 1 and model.device == "auto":
                model = replace(model, device=self.processes.device or "auto")
            self.outpainter = Outpainter(model)
        return self.outpainter

    def outpaint(self, known, truth, prompts, seed, pred_path, record, source) -> None:
        from ..image_io import save_image

        protocol = self.config.protocol
        result = self.load_outpainter().outpaint(
            known,
            prompts,
            expansion=ExpansionConfig(size=protocol.expansion_size),
            generation=self.config.generation(seed),
            blend=BlendConfig(feather=0, color_match=False),  # every known pixel pasted back exactly
            source=str(source),
        )
        if tuple(result.geometry.plan.image_box) != protocol.known_box or result.images[0].size != protocol.size:
            raise RuntimeError(
                f"outpaint placed the known center at {result.geometry.plan.image_box} on a "
                f"{result.images[0].size} canvas; the protocol needs {protocol.known_box} on {protocol.size}"
            )
        save_image(result.images[0], pred_path, metadata={**result.metadata, "eval": record}, overwrite=True)


def _finished(pred_path: Path, record: dict) -> bool:
    """An output made with the same settings is already there (its metadata says so)."""
    from ..image_io import read_metadata

    if not pred_path.is_file():
        return False
    try:
        stored = (read_metadata(pred_path).get("vip") or {}).get("eval") or {}
    except InputError:
        return False
    stored = {name: value for name, value in stored.items() if name != "prompts"}
    return stored == record


def _check_config(config: EvalConfig) -> None:
    from ..outpaint import check_generation

    check_generation(config.generation(config.seed), BlendConfig(feather=0))
    if config.limit is not None and config.limit < 1:
        raise OptionError(f"--limit {config.limit} is out of range: use 1 or more")
    if not config.settings:
        raise OptionError("give at least one --prompts setting")
    if config.out_dir.exists() and not config.out_dir.is_dir():
        raise OptionError(f"--out {config.out_dir} is a file: give a folder (RUN_DIR)")
    if config.data_dir.resolve() == config.out_dir.resolve() or config.data_dir.resolve() in config.out_dir.resolve().parents:
        raise OptionError(f"--out {config.out_dir} is inside DATA_DIR: its outputs would be read as test images")


def _check_run_file(run_file: Path, record: dict) -> None:
    if not run_file.is_file():
        return
    try:
        stored = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{run_file} is unreadable ({exc}): delete it to start the run over") from exc
    stored = {"cts": True, "region_strength": None, **stored}  # run files written before these settings existed
    changed = [f"{name} {stored.get(name)!r} -> {record[name]!r}" for name in record if stored.get(name) != record[name]]
    if changed:
        raise OptionError(
            f"{run_file.parent} was made with other settings ({'; '.join(changed)[:300]}): "
            "give another --out, or delete that folder to start over"
        )


def _merge_summaries(out_dir: Path, count: int) -> dict:
    merged = {"generated": 0, "reused": 0, "skipped": []}
    for index in range(count):
        summary = json.loads((out_dir / "logs" / f"generation-{index}.json").read_text(encoding="utf-8"))
        merged["generated"] += summary["generated"]
        merged["reused"] += summary["reused"]
        merged["skipped"].extend(summary["skipped"])
    return merged


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
    from ..image_io import expand_inputs

    for option, folder in (("--pred", pred_dir), ("--gt", gt_dir)):
        if not folder.is_dir():
            raise InputError(f"{option} {folder}: not a folder")
    weights = find_inception_weights(scoring.feature_weights)
    surroundings = {key: p.surrounding for key, p in read_prompts_file(prompts_file).items()} if prompts_file else {}

    def by_key(folder: Path) -> dict[str, Path]:
        paths, _problems = expand_inputs([str(folder)])
        return {image_key(path.relative_to(folder), suffix=False): path for path in paths}

    preds, truths = by_key(pred_dir), by_key(gt_dir)
    common = sorted(set(preds) & set(truths))
    if not common:
        raise InputError(
            f"--pred {pred_dir} ({len(preds)} images) and --gt {gt_dir} ({len(truths)} images) share no "
            "file name: outputs are paired with ground truth by path without suffix (a/b.png <-> a/b.jpg)"
        )
    pairs = [Pair(key, truths[key], preds[key], surrounding=surroundings.get(key)) for key in common]
    unpaired = sorted(set(preds) ^ set(truths))
    header = {
        "mode": "pairs",
        "pred_dir": str(pred_dir),
        "gt_dir": str(gt_dir),
        "protocol": protocol.to_dict(),
        "skipped": [
            {"image": key, "reason": f"{key}: only in --pred" if key in preds else f"{key}: only in --gt"} for key in unpaired
        ],
    }
    return score_settings(
        {pred_dir.name or "pred": pairs}, protocol, scoring, out_dir or pred_dir, header=header, weights=weights, progress=progress
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
    from ..device import pick_device

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
            summary.update(kid_mean=kid_mean, kid_std=kid_std, kid_subsets=metrics.KID_SUBSETS, kid_subset_size=kid_size)
        else:
            notes.append(f"'{name}': FID and KID need at least 2 images")
        splits = metrics.is_splits_for(len(pairs))
        summary["is_mean"], summary["is_std"] = metrics.inception_score(pred_features.logits, splits)
        summary["is_splits"] = splits
        summary["gt_is_mean"], summary["gt_is_std"] = metrics.inception_score(truth_logits, splits)
        rows_of_setting = _pixel_metrics(name, pairs, protocol, scoring, lpips_model, clip, references.get(name), progress)
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
            f"feature weights '{weights.name}' are not {FID_WEIGHTS_FILE}: FID / KID / IS are not comparable with published numbers"
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
    _write_text(results_path, json.dumps(_finite(results), indent=2) + "\n")
    _write_text(per_image_path, _csv(per_image))
    return EvalReport(results=results, per_image=per_image, results_path=results_path, per_image_path=per_image_path)


PER_IMAGE_METRICS = (
    "psnr_known", "psnr_generated", "psnr_whole", "ssim_known", "ssim_whole", "lpips_known", "lpips_whole", "clip_score",
)


def _pixel_metrics(name, pairs, protocol, scoring, lpips_model, clip, reference, progress) -> list[dict]:
    from .perceptual import lpips_distances, surrounding_only

    rows: list[dict] = []
    batch = max(1, scoring.batch_size)
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        preds, truths, boxes = [], [], []
        for pair in chunk:
            pred, truth = _read_rgb(pair.pred), _read_rgb(pair.gt)
            if pred.size != truth.size:
                raise InputError(f"{pair.pred} is {pred.size[0]}x{pred.size[1]} but {pair.gt} is {truth.size[0]}x{truth.size[1]}")
            preds.append(pred)
            truths.append(truth)
            boxes.append(scaled_known_box(protocol, pred.size))
        pred_arrays = [np.asarray(image) for image in preds]
        truth_arrays = [np.asarray(image) for image in truths]
        crop = [(p[b[1]:b[3], b[0]:b[2]], t[b[1]:b[3], b[0]:b[2]]) for p, t, b in zip(pred_arrays, truth_arrays, boxes)]
        lpips_whole = lpips_distances(lpips_model, pred_arrays, truth_arrays) if lpips_model is not None else [None] * len(chunk)
        lpips_known = (
            lpips_distances(lpips_model, [c[0] for c in crop], [c[1] for c in crop]) if lpips_model is not None else [None] * len(chunk)
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
            rows.append({
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
            })
        progress(f"pixels: {name}", start + len(chunk), len(pairs))
    return rows


def _features(
    extractor: InceptionExtractor, paths: list[Path], stage: str, progress: ProgressCallback, cache: "FeatureCache | None"
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
        rows = todo[start:start + extractor.batch_size]
        features = extractor([np.asarray(_read_rgb(paths[row])) for row in rows])
        pool[rows], logits[rows] = features.pool, features.logits
        if cache is not None:
            for offset, row in enumerate(rows):
                cache.put(paths[row], features.pool[offset], features.logits[offset])
        progress(stage, len(paths) - len(todo) + start + len(rows), len(paths))
    return InceptionFeatures(pool=pool, logits=logits)


class FeatureCache:
    """Inception features of RUN_DIR's images, so a resumed or re-scored run computes only new ones.

    One ``.npz`` per weights file (named by its sha256); an entry is used only while its file has
    the same size and modification time. Features are stored as float32, which they are computed in.
    """

    def __init__(self, root: Path, weights_digest: str) -> None:
        self.root = root
        self.path = root / "cache" / f"inception-{weights_digest[:16]}.npz"
        self.entries: dict[str, tuple[tuple[int, int], np.ndarray, np.ndarray]] = {}
        self.changed = False
        try:
            with np.load(self.path, allow_pickle=False) as data:
                for name, signature, pool, logits in zip(data["names"], data["signatures"], data["pool"], data["logits"]):
                    self.entries[str(name)] = ((int(signature[0]), int(signature[1])), pool, logits)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("ignoring unreadable feature cache %s: %s", self.path, exc)

    def _name_and_signature(self, path: Path) -> tuple[str, tuple[int, int]]:
        stat = path.stat()
        try:
            name = path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            name = str(path.resolve())
        return name, (stat.st_size, stat.st_mtime_ns)

    def get(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        name, signature = self._name_and_signature(path)
        entry = self.entries.get(name)
        if entry is None or entry[0] != signature:
            return None
        return entry[1].astype(np.float64), entry[2].astype(np.float64)

    def put(self, path: Path, pool: np.ndarray, logits: np.ndarray) -> None:
        name, signature = self._name_and_signature(path)
        self.entries[name] = (signature, pool.astype(np.float32), logits.astype(np.float32))
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        names = sorted(self.entries)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            names=np.array(names, dtype=str),
            signatures=np.array([self.entries[n][0] for n in names], dtype=np.int64).reshape(len(names), 2),
            pool=np.stack([self.entries[n][1] for n in names]),
            logits=np.stack([self.entries[n][2] for n in names]),
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, buffer.getvalue(), durable=False)
        except OSError as exc:  # a cache never fails a run
            logger.warning("cannot write feature cache %s: %s", self.path, exc)


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
    from .perceptual import Unavailable, load_lpips

    try:
        return load_lpips(device)
    except Unavailable as exc:
        notes.append(str(exc))
        return None


def _optional_clip(scoring: ScoreConfig, device, notes: list[str]):
    if not scoring.clip_model:
        notes.append("CLIP score skipped: pass --clip-model (e.g. openai/clip-vit-large-patch14) to compute it")
        return None
    from .perceptual import ClipScorer

    return ClipScorer.load(scoring.clip_model, device)


def _fill_surroundings(settings_pairs: dict[str, list[Pair]], wanted: bool) -> None:
    """The Surrounding prompt of each output, from its vip metadata when not known already."""
    if not wanted:
        return
    from ..image_io import read_metadata

    for pairs in settings_pairs.values():
        for pair in pairs:
            if pair.surrounding is None:
                try:
                    meta = read_metadata(pair.pred).get("vip") or {}
                except InputError:
                    meta = {}
                pair.surrounding = ((meta.get("prompts") or {}).get("surrounding") or "") if isinstance(meta, dict) else ""


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
        writer.writerow({
            column: ("" if row[column] is None else f"{row[column]:.6g}" if isinstance(row[column], float) else row[column])
            for column in columns
        })
    return buffer.getvalue()


def _write_text(path: Path, text: str) -> None:
    """Write atomically (temp file beside it, then rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text, durable=False)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
