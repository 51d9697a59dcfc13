"""Model families: what vip needs to know about each kind of inpainting model, chosen from the model's own config.

A family knows its pipeline class (how the three region prompts are encoded and how C-T-S routes them), its
working resolution, its generation defaults and fast preset, and which vip features it supports. The family of a
model is read from its ``model_index.json`` and UNet / transformer ``config.json``, never from its name, so a
renamed or fine-tuned checkpoint of a known architecture works.

Families, most specific first (the first whose ``matches`` accepts the configs wins):

- ``sdxl``: Stable Diffusion XL inpainting (two CLIP text encoders, UNet ``addition_embed_type="text_time"``);
- ``sd``: Stable Diffusion 1.x / 2.x inpainting (one CLIP text encoder);
- ``flux-fill``: FLUX.1 Fill (a ``FluxTransformer2DModel`` whose input carries the mask and masked image).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vipcli_model.errors import ModelLoadError


@dataclass(frozen=True)
class ModelFamily:
    """One kind of inpainting model, as vip runs it."""

    name: str  # short id written to the output metadata ("sd", "sdxl")
    label: str  # what messages call it ("SD-1.x/2.x", "SDXL")
    matches: Callable[[dict, dict], bool]  # (model_index.json, denoiser config.json) -> is it this family?
    pipeline_class: Callable[[], type]  # the vip pipeline class (imported lazily: diffusers is heavy)
    resolution: int  # typical working resolution in pixels (the model's own sample size decides at run time)
    steps: int  # default denoising steps (used where the user gives none)
    guidance: float  # default classifier-free guidance scale
    scheduler: str  # default scheduler (a key of config.SCHEDULERS)
    fast_lora: str | None  # hub id of the few-step LoRA --fast fuses; None: no fast preset yet
    trainable: bool  # whether `vip train` supports it
    note: str = ""  # what is not supported yet, for messages and docs
    fast_steps: int = 4  # the fast preset's steps (LCM-LoRA's default: 4 of its 2-8), guidance and scheduler
    fast_guidance: float = 1.0  # 1: guidance off, one denoiser pass per step
    fast_scheduler: str = "lcm"
    guidance_interval: tuple[float, float] | None = None  # default guidance interval (sigma); None: every step

    def with_defaults(self, generation, *, fast: bool = False):
        """``generation`` with this family's steps / guidance / scheduler where nobody set them (``open_fields``),
        and its guidance interval where none was given.

        ``fast``: the fast preset's values (a few-step LoRA is fused; guidance off, so every step is one pass),
        else the family's defaults.
        """
        from dataclasses import replace

        from vipcli_model.speed.guidance_interval import EVERY_STEP

        if fast:
            defaults = {"steps": self.fast_steps, "guidance": self.fast_guidance, "scheduler": self.fast_scheduler}
        else:
            defaults = {"steps": self.steps, "guidance": self.guidance, "scheduler": self.scheduler}
        chosen = {key: value for key, value in defaults.items() if key in generation.open_fields}
        if generation.guidance_interval is None:
            chosen["guidance_interval"] = (None if fast else self.guidance_interval) or EVERY_STEP
        return replace(generation, **chosen)


def _families() -> tuple[ModelFamily, ...]:
    from vipcli_model.models.families import flux
    from vipcli_model.models.families import sd
    from vipcli_model.models.families import sdxl

    return (sdxl.FAMILY, sd.FAMILY, flux.FAMILY)


def read_configs(folder: Path) -> tuple[dict, dict]:
    """``model_index.json`` and the denoiser's (``unet/`` or ``transformer/``) ``config.json`` of a diffusers folder."""
    folder = Path(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read '{folder / 'model_index.json'}': {exc}") from exc
    denoiser: dict = {}
    for part in ("unet", "transformer"):
        path = folder / part / "config.json"
        if part in index and path.is_file():
            try:
                denoiser = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot read '{path}': {exc}") from exc
            break
    return index, denoiser


def family_from_configs(index: dict, denoiser: dict, *, where: str = "the model") -> ModelFamily:
    """The family whose architecture the configs describe, or a ``ModelLoadError`` naming what was found."""
    for family in _families():
        if family.matches(index, denoiser):
            return family
    found = index.get("_class_name") or denoiser.get("_class_name") or "an unknown pipeline"
    supported = ", ".join(family.label for family in _families())
    raise ModelLoadError(f"{where} is a {found}: vip runs inpainting models of these families: {supported}")


def family_of_folder(folder: Path) -> ModelFamily:
    """The family of a diffusers folder, from its configs."""
    index, denoiser = read_configs(folder)
    return family_from_configs(index, denoiser, where=f"'{folder}'")


def family_of_pipeline(pipe: object) -> ModelFamily:
    """The family of a loaded pipeline, from its components' configs."""
    index = {"_class_name": type(pipe).__name__}
    index.update({name: ["", ""] for name in getattr(pipe, "components", {}) if getattr(pipe, name, None) is not None})
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    config = dict(denoiser.config) if denoiser is not None else {}
    return family_from_configs(index, config, where=type(pipe).__name__)


def fast_loras() -> dict[str, ModelFamily]:
    """Each family's own fast LoRA (hub id) -> the family it is made for."""
    return {family.fast_lora: family for family in _families() if family.fast_lora}


def family_named(name: str) -> ModelFamily:
    for family in _families():
        if family.name == name:
            return family
    raise KeyError(name)


__all__ = ["ModelFamily", "family_from_configs", "family_named", "fast_loras", "family_of_folder", "family_of_pipeline", "read_configs"]
