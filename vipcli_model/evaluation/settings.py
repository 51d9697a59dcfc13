"""`vip eval`'s settings: what a run generates and how it scores (``EvalConfig``, ``ScoreConfig``),
where each output's prompts come from (``PromptSetting``, ``--prompts``) and the prompts file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from vipcli_model.config import GenerationConfig, ModelConfig
from vipcli_model.errors import InputError, OptionError
from vipcli_model.files import image_key, read_jsonl
from vipcli_model.prompts import RegionPrompts
from vipcli_model.evaluation.protocol import PROTOCOLS, EvalProtocol

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
            center=record.get("center") or "", surrounding=record.get("surrounding") or "", total=record.get("total") or None
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
    guidance: float | None = None  # None: the model family's (7.5 for SD / SDXL, 30 for FLUX Fill)
    scheduler: str | None = None  # None: the model family's (dpm++ for SD / SDXL, flow-match for FLUX Fill)
    cts: bool = True  # C-T-S region prompts; False: plain inpainting with the Total prompt
    region_strength: float | None = None  # C-T-S gate; None: the adapter's gates, else the default
    guidance_interval: tuple[float, float] | None = None  # guidance only at sigma in (low, high]; None: every step
    deep_cache: int = 0  # DeepCache: the deep UNet blocks at one step in N (0: off)
    limit: int | None = None  # only the first N images (sorted)
    captioner_model: str | None = None  # for the "captioner" setting: transformers model (default SmolVLM)
    captioner_url: str | None = None  # ... or an OpenAI-compatible server
    captioner_server_model: str | None = None  # the model name that server serves
    scoring: ScoreConfig = ScoreConfig()

    def generation(self, seed: int) -> GenerationConfig:
        from vipcli_model.config import generation_config

        # guidance / scheduler left unset stay open: the loaded model's family fills them in
        return generation_config(
            steps=self.steps, guidance=self.guidance, seed=seed, scheduler=self.scheduler,
            cts=self.cts, region_strength=self.region_strength,
            guidance_interval=self.guidance_interval or (0.0, float("inf")),  # the protocol guides every step
            deep_cache=self.deep_cache,
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
            **({"guidance_interval": list(self.guidance_interval)} if self.guidance_interval else {}),
            **({"deep_cache": self.deep_cache} if self.deep_cache > 1 else {}),
        }


@dataclass
class EvalReport:
    """What a run produced: the content of results.json, the per-image rows, and where they are."""

    results: dict
    per_image: list[dict]
    results_path: Path
    per_image_path: Path
