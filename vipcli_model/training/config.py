"""The settings of one `vip train` run: a typed dataclass with a comment on every field.

Sources, later wins: the defaults below, a TOML file (``--config train.toml``, flat keys named
like the fields), then command-line overrides. Every problem (unknown key, wrong type, value
out of range) is collected and reported in ONE ``OptionError`` (torchtune does the same), so a
user fixes a config file in one go.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from vipcli_model.errors import OptionError
from vipcli_model.models.hub import DEFAULT_INPAINT_MODEL

MODES = ("adapter", "lora", "full")
MIXED_PRECISION = ("no", "fp16", "bf16")
SCHEDULES = ("cosine", "constant")
MASK_KINDS = ("ratio", "one_side", "two_side", "irregular")

# Fields that may change when a run is resumed: they do not change what the next step computes.
RESUMABLE_CHANGES = frozenset(
    {"max_steps", "save_every", "keep", "validate_every", "validation_steps", "validation_image", "num_workers"}
)


# Relative weights of the mask kinds of ``masks.py`` (ratio expansion is what users do most).
DEFAULT_MASK_MIX: dict[str, float] = {"ratio": 0.4, "one_side": 0.2, "two_side": 0.2, "irregular": 0.2}


def _default_mask_mix() -> dict[str, float]:
    return dict(DEFAULT_MASK_MIX)


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in RUN_DIR/config.json and in every checkpoint)."""

    # ---- data
    data_dir: str = ""  # folder of training images, searched recursively
    captions: str = ""  # JSON Lines from `vip caption --for-training`; "": DATA_DIR/captions.jsonl when it exists
    resolution: int = 256  # images are resized (shorter side) and center-cropped to this square (paper: 256)
    mask_mix: dict[str, float] = field(default_factory=_default_mask_mix)  # relative weight of each mask kind
    prompt_dropout: float = 0.1  # chance that all three prompts are empty (trains classifier-free guidance)
    branch_dropout: float = 0.1  # chance, for each of Center / Surrounding, that its text is replaced by the Total
    num_workers: int = -1  # data-loading processes; -1: 4 on a GPU, 0 on CPU
    # ---- model
    model: str = DEFAULT_INPAINT_MODEL  # base inpainting model: hub id, preset, diffusers folder or .safetensors
    mode: str = "adapter"  # adapter: C-T-S only | lora: + LoRA on the UNet | full: + the whole UNet
    rank: int = 16  # rank of the C-T-S branch deltas (of to_k and to_v, which act on the 77 text tokens)
    out_delta: bool = False  # also a low-rank delta on each branch's output projection (acts on image tokens: slower)
    region_strength: float = 0.5  # initial C-T-S gate of every block, in (0, 1)
    lora_rank: int = 8  # rank of the UNet LoRA (mode lora)
    lora_alpha: float = 8.0  # LoRA scale numerator (scale = alpha / rank)
    # ---- optimisation
    max_steps: int = 2000  # optimizer steps
    batch_size: int = 4  # images per process per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step (effective batch = batch_size * grad_accum * processes)
    lr: float = 1e-4  # peak learning rate of the C-T-S branch deltas
    # peak learning rate of the C-T-S gates (no weight decay; 0: they stay at region_strength). A tenth of lr: a gate
    # is one scalar per block that Adam moves by ~lr a step whatever its gradient; at 10x lr they drifted toward the
    # Total prompt (0.5 -> 0.40 in 2000 steps) and the keyword swap gained least
    # (benchmarks/toyworld/results-training-recipes.md)
    gate_lr: float = 1e-5
    unet_lr: float = 0.0  # peak learning rate of UNet weights; 0: 1e-4 for LoRA, 1e-5 for the full UNet
    weight_decay: float = 1e-2  # AdamW decoupled weight decay (not applied to gates)
    adam_beta1: float = 0.9  # AdamW first-moment decay
    adam_beta2: float = 0.999  # AdamW second-moment decay
    adam_eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 100  # linear warmup from lr/warmup_steps to lr
    schedule: str = "cosine"  # after warmup: cosine (down to min_lr_ratio * lr) | constant
    min_lr_ratio: float = 0.1  # the cosine schedule ends at this fraction of the peak lr
    max_grad_norm: float = 1.0  # clip the global gradient norm to this (0: no clipping)
    known_loss_weight: float = (
        1.0  # weight of the loss on the known (kept) latents; 0: only the generated region counts
    )
    snr_gamma: float = 0.0  # Min-SNR loss weighting (Hang et al. 2023), e.g. 5: less weight on low-noise steps; 0: off
    mixed_precision: str = "no"  # no (fp32) | fp16 (CUDA) | bf16 (CUDA with bf16, or CPU autocast)
    gradient_checkpointing: bool = False  # recompute UNet activations in backward: less memory, ~30% slower
    ema: bool = False  # keep an exponential moving average of the trainable weights; the result uses it
    ema_decay: float = 0.999  # EMA decay per optimizer step (ramped up over the first steps)
    seed: int = 0  # seeds the data order, masks, prompt dropout, noise and timesteps
    # ---- bookkeeping
    save_every: int = 500  # write a checkpoint every N steps (and always at the end); 0: only at the end
    keep: int = 3  # checkpoints kept (the oldest are deleted)
    validate_every: int = 500  # validation outpaint every N steps (and at the end); 0: never
    validation_steps: int = 25  # denoising steps of the validation outpaint
    validation_image: str = ""  # image for validation outpaints; "": the first training image

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def effective_unet_lr(self) -> float:
        if self.unet_lr > 0:
            return self.unet_lr
        return 1e-4 if self.mode == "lora" else 1e-5


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _type_problem(name: str, value: Any, expected: Any) -> str | None:
    """None when ``value`` fits the field type, else a sentence saying what was expected."""
    origin = typing.get_origin(expected)
    if expected is bool:
        return None if isinstance(value, bool) else f"{name} = {value!r} must be true or false"
    if expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{name} = {value!r} must be an integer"
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else f"{name} = {value!r} must be a number"
    if expected is str:
        return None if isinstance(value, str) else f"{name} = {value!r} must be a string"
    if origin is dict:
        if not isinstance(value, dict):
            return f"{name} = {value!r} must be a table of name = weight"
        bad = [key for key, weight in value.items() if isinstance(weight, bool) or not isinstance(weight, (int, float))]
        return f"{name}: weights of {', '.join(bad)} must be numbers" if bad else None
    return None


def apply_overrides(base: TrainConfig, overrides: dict[str, Any], source: str = "options") -> TrainConfig:
    """``base`` with ``overrides`` applied; every unknown key and badly typed value in one error.

    ``source`` names where the overrides came from ("train.toml", "options") in the message.
    """
    types = _field_types()
    problems: list[str] = []
    clean: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in types:
            close = difflib.get_close_matches(key, list(types), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"unknown key '{key}'{hint}")
            continue
        problem = _type_problem(key, value, types[key])
        if problem:
            problems.append(problem)
            continue
        clean[key] = float(value) if types[key] is float else (dict(value) if isinstance(value, dict) else value)
    if problems:
        raise OptionError(f"{source}: " + "; ".join(problems))
    return dataclasses.replace(base, **clean)


def load_toml(path: str | Path) -> dict[str, Any]:
    """The flat key = value table of a TOML config file (a [train] table is accepted too)."""
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OptionError(f"config file {path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"config file {path}: cannot read it ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"config file {path}: not valid TOML ({exc})") from exc
    if set(data) == {"train"} and isinstance(data["train"], dict):
        data = data["train"]
    return data


def check_config(config: TrainConfig) -> None:
    """Every value out of range, in one ``OptionError``."""
    problems: list[str] = []

    def need(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    need(bool(config.data_dir), "data_dir is empty: pass the folder of training images")
    need(config.mode in MODES, f"mode '{config.mode}' is not one of {', '.join(MODES)}")
    need(
        config.mixed_precision in MIXED_PRECISION,
        f"mixed_precision '{config.mixed_precision}' is not one of {', '.join(MIXED_PRECISION)}",
    )
    need(config.schedule in SCHEDULES, f"schedule '{config.schedule}' is not one of {', '.join(SCHEDULES)}")
    need(
        64 <= config.resolution <= 2048 and config.resolution % 8 == 0,
        f"resolution {config.resolution} must be a multiple of 8 between 64 and 2048",
    )
    need(config.rank >= 1, f"rank {config.rank} must be at least 1")
    need(0.0 < config.region_strength < 1.0, f"region_strength {config.region_strength} must be in (0, 1)")
    need(config.lora_rank >= 1, f"lora_rank {config.lora_rank} must be at least 1")
    need(config.lora_alpha > 0, f"lora_alpha {config.lora_alpha} must be positive")
    need(config.max_steps >= 1, f"max_steps {config.max_steps} must be at least 1")
    need(config.batch_size >= 1, f"batch_size {config.batch_size} must be at least 1")
    need(config.grad_accum >= 1, f"grad_accum {config.grad_accum} must be at least 1")
    need(0.0 < config.lr <= 1.0, f"lr {config.lr} must be in (0, 1]")
    need(
        0.0 <= config.gate_lr <= 1.0,
        f"gate_lr {config.gate_lr} must be in [0, 1] (0: the gates stay at region_strength)",
    )
    need(0.0 <= config.known_loss_weight <= 1.0, f"known_loss_weight {config.known_loss_weight} must be in [0, 1]")
    need(0.0 <= config.unet_lr <= 1.0, f"unet_lr {config.unet_lr} must be in [0, 1] (0: the mode's default)")
    need(config.weight_decay >= 0, f"weight_decay {config.weight_decay} must be >= 0")
    need(
        0.0 <= config.adam_beta1 < 1.0 and 0.0 <= config.adam_beta2 < 1.0, "adam_beta1 and adam_beta2 must be in [0, 1)"
    )
    need(config.adam_eps > 0, f"adam_eps {config.adam_eps} must be positive")
    need(config.warmup_steps >= 0, f"warmup_steps {config.warmup_steps} must be >= 0")
    need(0.0 <= config.min_lr_ratio <= 1.0, f"min_lr_ratio {config.min_lr_ratio} must be in [0, 1]")
    need(config.max_grad_norm >= 0, f"max_grad_norm {config.max_grad_norm} must be >= 0 (0: no clipping)")
    need(config.snr_gamma >= 0, f"snr_gamma {config.snr_gamma} must be >= 0 (0: no Min-SNR weighting)")
    need(0.0 < config.ema_decay < 1.0, f"ema_decay {config.ema_decay} must be in (0, 1)")
    need(0 <= config.seed < 2**32, f"seed {config.seed} must be in [0, 2^32)")
    for name in ("prompt_dropout", "branch_dropout"):
        value = getattr(config, name)
        need(0.0 <= value <= 1.0, f"{name} {value} must be in [0, 1]")
    unknown_kinds = sorted(set(config.mask_mix) - set(MASK_KINDS))
    need(not unknown_kinds, f"mask_mix has unknown kinds {unknown_kinds} (known: {', '.join(MASK_KINDS)})")
    need(
        all(weight >= 0 for weight in config.mask_mix.values()) and sum(config.mask_mix.values()) > 0,
        "mask_mix weights must be >= 0 and not all zero",
    )
    need(config.save_every >= 0, f"save_every {config.save_every} must be >= 0 (0: only at the end)")
    need(config.keep >= 1, f"keep {config.keep} must be at least 1")
    need(config.validate_every >= 0, f"validate_every {config.validate_every} must be >= 0 (0: never)")
    need(1 <= config.validation_steps <= 1000, f"validation_steps {config.validation_steps} must be in [1, 1000]")
    need(config.num_workers >= -1, f"num_workers {config.num_workers} must be >= 0 (or -1: automatic)")
    if problems:
        raise OptionError("invalid training config: " + "; ".join(problems))


def resumed_config(saved: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """The config of a resumed run: the checkpoint's, with only bookkeeping changes allowed.

    Changing anything that alters what the next step computes (lr, batch size, mode, seed...)
    would not continue the run: those are refused, all at once.
    """
    changed = {key: value for key, value in overrides.items() if getattr(saved, key, object()) != value}
    refused = sorted(key for key in changed if key not in RESUMABLE_CHANGES)
    if refused:
        details = ", ".join(f"{key} ({getattr(saved, key, None)!r} -> {changed[key]!r})" for key in refused)
        raise OptionError(
            f"`resume=True` continues the run with its saved settings; these differ: {details}. "
            f"Only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume (start a new `run_dir` for the rest)"
        )
    return apply_overrides(saved, changed)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A saved config (checkpoint or config.json) back into the dataclass."""
    return apply_overrides(TrainConfig(), data, source="saved config")


PATH_FIELDS = ("data_dir", "captions", "validation_image")


def normalize_paths(values: dict[str, Any]) -> dict[str, Any]:
    """Paths made absolute (relative to the current folder), so a run resumes from anywhere.

    ``model`` becomes absolute only when it names something on disk (else it is a hub id or preset).
    """
    normalized = dict(values)
    for key in PATH_FIELDS:
        if isinstance(normalized.get(key), str) and normalized[key]:
            normalized[key] = str(Path(normalized[key]).expanduser().resolve())
    model = normalized.get("model")
    if isinstance(model, str) and model and Path(model).expanduser().exists():
        normalized["model"] = str(Path(model).expanduser().resolve())
    return normalized
