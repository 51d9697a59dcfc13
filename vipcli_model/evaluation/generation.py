"""`vip eval`'s generation: the test images and their keys, this process's place among several,
and the ground truth and outputs of each image, resumably (an output made with the same settings
is kept)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from PIL import Image

from vipcli_model.batch import Processes as _Processes
from vipcli_model.config import BlendConfig, ExpansionConfig
from vipcli_model.errors import InputError, ModelLoadError, ModelNotFoundError, OptionError, OutputError, VipError
from vipcli_model.evaluation.protocol import ground_truth, known_region
from vipcli_model.evaluation.settings import UNCONDITIONAL, EvalConfig, PromptSetting, SkipCallback
from vipcli_model.files import unique_image_keys
from vipcli_model.prompts import RegionPrompts

logger = logging.getLogger(__name__)


def list_images(data_dir: Path, limit: int | None = None) -> tuple[list[tuple[str, Path, int]], list[tuple[str, str]]]:
    """(key, path, index) of the test images in sorted order, and (spec, reason) of specs that gave none.

    A key is the image's path below ``data_dir`` without suffix, distinct for each image
    (``files.unique_image_keys``): ``gt/<key>.png`` and ``pred/<setting>/<key>.png`` never collide.
    """
    from vipcli_model.images.io import expand_inputs

    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: not a folder of images")
    paths, problems = expand_inputs([str(data_dir)])
    if not paths:
        raise InputError(f"{data_dir}: no images found (searched recursively)")
    left_out: list[tuple[str, str]] = [(spec, reason) for spec, reason in problems]
    # one distinct key (output name) per image: x.png and x.jpg give x_png and x_jpg
    keys = unique_image_keys([path.relative_to(data_dir) for path in paths])
    found = [(key, path, index) for index, (key, path) in enumerate(zip(keys, paths))]
    if limit is not None:
        found = found[:limit]
    return found, left_out


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
            "steps": config.generation.steps,
            "guidance": config.generation.guidance,
            "scheduler": config.generation.scheduler,
            "cts": config.generation.cts,
            "region_strength": config.generation.region_strength,
        }
        if setting.kind == "file":  # an edited prompts file regenerates the images whose prompts changed
            record["file_prompts"] = self.prompt_files[setting.name][key].to_dict()
        return record

    def ground_truth(self, key: str, source: Path, gt_path: Path) -> Image.Image:
        from vipcli_model.images.io import load_image, read_metadata, save_image

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
        from vipcli_model.captioning.captioner import CaptionCache, caption_for_outpaint, load_captioner

        if self.captioner is None:
            config = self.config
            self.captioner = load_captioner(
                model=config.prompts.captioner,
                url=config.prompts.captioner_url,
                server_model=config.prompts.captioner_model,
                device=self.processes.device or config.model.device,
            )
        # prompts fitted to the model's own text window, as `vip outpaint` does
        tokenizer, max_tokens = self.load_outpainter().prompt_window()
        return caption_for_outpaint(
            self.captioner, known, tokenizer=tokenizer, cache=CaptionCache(), max_tokens=max_tokens
        ).prompts

    def load_outpainter(self):
        if self.outpainter is None:
            from vipcli_model.outpainting.outpainter import Outpainter

            model = self.config.model
            if self.processes.count > 1 and model.device == "auto":
                model = replace(model, device=self.processes.device or "auto")
            self.outpainter = Outpainter(model)
        return self.outpainter

    def outpaint(self, known, truth, prompts, seed, pred_path, record, source) -> None:
        from vipcli_model.images.io import save_image

        protocol = self.config.protocol
        result = self.load_outpainter().outpaint(
            known,
            prompts,
            expansion=ExpansionConfig(size=protocol.expansion_size),
            generation=self.config.generation_for(seed),
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
    """An output made with the same settings is already there (its metadata says so), whole: a file that does not
    read to its end is made again, as `skip_existing` never takes one for finished (``images.outputs``)."""
    from vipcli_model.images.io import read_metadata

    if not pred_path.is_file():
        return False
    try:
        with Image.open(pred_path) as image:
            image.verify()
        stored = (read_metadata(pred_path).get("vip") or {}).get("eval") or {}
    except (InputError, OSError, SyntaxError, ValueError):
        return False
    stored = {name: value for name, value in stored.items() if name != "prompts"}
    return stored == record


def _check_run_file(run_file: Path, record: dict) -> None:
    if not run_file.is_file():
        return
    try:
        stored = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{run_file} is unreadable ({exc}): delete it to start the run over") from exc
    stored = {"cts": True, "region_strength": None, **stored}  # run files written before these settings existed
    # settings recorded only when used (a guidance interval, DeepCache): absent on one side is a change too
    names = [*record, *(name for name in ("guidance_interval", "deep_cache") if name in stored and name not in record)]
    changed = [
        f"{name} {stored.get(name)!r} -> {record.get(name)!r}" for name in names if stored.get(name) != record.get(name)
    ]
    if changed:
        raise OptionError(
            f"{run_file.parent} was made with other settings ({'; '.join(changed)[:300]}): "
            "give another `out_dir`, or delete that folder to start over"
        )


def _merge_summaries(out_dir: Path, count: int) -> dict:
    merged = {"generated": 0, "reused": 0, "skipped": []}
    for index in range(count):
        summary = json.loads((out_dir / "logs" / f"generation-{index}.json").read_text(encoding="utf-8"))
        merged["generated"] += summary["generated"]
        merged["reused"] += summary["reused"]
        merged["skipped"].extend(summary["skipped"])
    return merged
