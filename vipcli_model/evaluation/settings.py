"""`vip eval`'s settings: what a run generates and how it scores (``EvalConfig``, ``ScoreConfig``),
where each output's prompts come from (``PromptSetting``, `settings`) and the prompts file."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vipcli_model.config import BlendConfig, GenerationConfig, ModelConfig, PromptConfig, check_generation
from vipcli_model.errors import InputError, OptionError
from vipcli_model.evaluation.protocol import PROTOCOLS, EvalProtocol
from vipcli_model.files import image_key, read_jsonl
from vipcli_model.prompts import RegionPrompts

logger = logging.getLogger(__name__)

UNCONDITIONAL = "unconditional"
CAPTIONER = "captioner"
RESERVED_SETTINGS = (UNCONDITIONAL, CAPTIONER)

ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)
SkipCallback = Callable[[str, str], None]  # (image key or setting/key, reason)


@dataclass(frozen=True)
class PromptSetting:
    """Where an output's prompts come from; each setting is generated and scored separately."""

    name: str  # folder name under pred/ and column of the results
    kind: str  # "unconditional" (empty prompts), "captioner" (an MLLM on the known center) or "file"
    path: Path | None = None  # the JSON Lines prompts file of a "file" setting

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, **({"path": str(self.path)} if self.path else {})}


def parse_prompt_settings(specs: Sequence[str] | None) -> tuple[PromptSetting, ...]:
    """Prompt setting names -> settings: "unconditional", "captioner", or a JSON Lines file (named by its stem)."""
    settings: list[PromptSetting] = []
    for spec in specs or [UNCONDITIONAL]:
        if spec in RESERVED_SETTINGS:
            setting = PromptSetting(spec, spec)
        else:
            path = Path(spec).expanduser()
            if not path.is_file():
                raise OptionError(f"`settings` '{spec}' is neither 'unconditional', 'captioner' nor a JSON Lines file")
            setting = PromptSetting(path.stem, "file", path)
            if setting.name in RESERVED_SETTINGS:
                raise OptionError(
                    f"`settings` {spec}: rename the file, '{path.stem}' is the name of a built-in setting"
                )
        if setting.name in {existing.name for existing in settings}:
            raise OptionError(f"`settings` '{spec}' is given twice (or two files share the name '{setting.name}')")
        settings.append(setting)
    return tuple(settings)


def read_prompts_file(path: Path, data_dir: Path | None = None, *, suffix: bool = False) -> dict[str, RegionPrompts]:
    """A prompts file: one JSON object a line, ``{"image": "relative/path.png", "center": ...,
    "surrounding": ..., "total": ...}`` (``total`` optional). Keys: the image path without suffix
    (``suffix=True``: with it, so that ``x.png`` and ``x.jpg`` keep their own records).
    A torn last line is skipped with a warning (``files.read_jsonl``)."""
    try:
        lines = read_jsonl(path, _check_prompts_record, what="a prompts record")
    except OSError as exc:
        raise InputError(f"cannot read prompts file {path}: {exc}") from exc
    records: dict[str, RegionPrompts] = {}
    for _number, record in lines:
        image = record["image"]
        root = data_dir if data_dir is not None and Path(image).is_absolute() else None  # relative: as written
        prompts = RegionPrompts.build(
            center=record.get("center") or "",
            surrounding=record.get("surrounding") or "",
            total=record.get("total") or None,
        )
        records[image_key(image, root, suffix=suffix)] = prompts
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


# The protocol's generation: the paper's 50 steps, base seed 0; guidance and scheduler left to the model family.
EVAL_GENERATION = GenerationConfig(steps=50, seed=0)


@dataclass(frozen=True)
class EvalConfig:
    """One generate-and-score run."""

    data_dir: Path  # folder of test images (searched recursively)
    out_dir: Path  # RUN_DIR
    model: ModelConfig = ModelConfig()
    protocol: EvalProtocol = PROTOCOLS["standard"]
    settings: tuple[PromptSetting, ...] = (PromptSetting(UNCONDITIONAL, UNCONDITIONAL),)
    generation: GenerationConfig = EVAL_GENERATION  # image i (in sorted order) uses seed + i (None: 0); unset
    # fields are the model family's, except the guidance interval: every step unless one is given
    prompts: PromptConfig = PromptConfig()  # the captioner of the "captioner" setting (captioner, captioner_url,
    # captioner_model); the prompts themselves come from ``settings``
    limit: int | None = None  # only the first N images (sorted)
    scoring: ScoreConfig = ScoreConfig()

    @property
    def seed(self) -> int:
        """The base seed: image i uses seed + i."""
        return self.generation.seed if self.generation.seed is not None else 0

    def generation_for(self, seed: int) -> GenerationConfig:
        """The generation of the image with ``seed``; guidance at every step unless an interval is given."""
        return replace(
            self.generation, seed=seed, guidance_interval=self.generation.guidance_interval or (0.0, float("inf"))
        )

    def check(self) -> None:
        """Reject settings that cannot run (``OptionError`` naming the argument) and an ``out_dir`` that cannot be
        written (``OutputError``), before any image or model."""
        generation, prompts = self.generation, self.prompts
        check_generation(self.generation_for(self.seed), BlendConfig(feather=0))
        if not generation.cts and generation.region_strength is not None:
            raise OptionError("`region_strength` has no effect with `cts=False`")
        if generation.num_images != 1:
            raise OptionError(f"`num_images` {generation.num_images}: an eval scores one output per image, use 1")
        if prompts.given or prompts.keywords or not prompts.caption:
            raise OptionError("an eval's prompts come from its `settings`; `prompts` only names the captioner")
        if prompts.names_captioner and not any(setting.kind == CAPTIONER for setting in self.settings):
            raise OptionError(
                "`captioner`/`captioner_url`/`captioner_model` are for the 'captioner' entry of `settings`"
            )
        prompts.check_captioner()
        if self.limit is not None and self.limit < 1:
            raise OptionError(f"`limit` {self.limit} is out of range: use 1 or more")
        if not self.settings:
            raise OptionError("give at least one prompt setting (`settings`)")
        from vipcli_model.images.outputs import check_destination

        if (problem := check_destination(self.out_dir, kind="folder", argument="out_dir")) is not None:
            raise problem
        data_dir, out_dir = self.data_dir.resolve(), self.out_dir.resolve()
        if data_dir == out_dir or data_dir in out_dir.parents:
            raise OptionError(
                f"`out_dir` {self.out_dir} is inside `data_dir`: its outputs would be read as test images"
            )

    def run_record(self) -> dict:
        """What a resumed run must share with the run that made RUN_DIR."""
        generation = self.generation
        return {
            "data_dir": str(self.data_dir.resolve()),
            "protocol": self.protocol.to_dict(),
            "model": self.model.model,
            "adapter": self.model.adapter,
            **({"controlnet": self.model.controlnet} if self.model.controlnet else {}),
            "seed": self.seed,
            "steps": generation.steps,
            "guidance": generation.guidance,
            "scheduler": generation.scheduler,
            "cts": generation.cts,
            "region_strength": generation.region_strength,
            **({"guidance_interval": list(generation.guidance_interval)} if generation.guidance_interval else {}),
            **({"deep_cache": generation.deep_cache} if generation.deep_cache > 1 else {}),
            **({"negative": generation.negative} if generation.negative else {}),
        }


@dataclass
class EvalReport:
    """What a run produced: the content of results.json, the per-image rows, and where they are."""

    results: dict
    per_image: list[dict]
    results_path: Path
    per_image_path: Path
