"""Model families: what vip needs to know about each kind of inpainting model, chosen from the model's own config.

A family knows its pipeline class (how the three region prompts are encoded and how C-T-S routes them), its
generation defaults and fast preset (``resolve_generation`` / ``resolve_model``: the one place that fills what a
user left unset), its text window, and which vip features it supports. The family of a model is read from its
``model_index.json`` and UNet / transformer ``config.json``, never from its name, so a renamed or fine-tuned
checkpoint of a known architecture works.

Families, most specific first (the first whose ``matches`` accepts the configs wins):

- ``sdxl-union``: any text-to-image SDXL checkpoint with a ControlNet Union ProMax (a ``controlnet`` part);
- ``sdxl``: Stable Diffusion XL inpainting (two CLIP text encoders, UNet ``addition_embed_type="text_time"``);
- ``sd``: Stable Diffusion 1.x / 2.x inpainting (one CLIP text encoder);
- ``flux-fill``: FLUX.1 Fill (a ``FluxTransformer2DModel`` whose input carries the mask and masked image);
- ``flux2-klein``: FLUX.2 [klein] (a ``Flux2Transformer2DModel`` without guidance embeddings, one Qwen3 encoder).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from vipcli_model.config import GenerationConfig, ModelConfig
from vipcli_model.errors import ModelLoadError, OptionError


def _any_model(denoiser: dict) -> bool:
    return True


@dataclass(frozen=True)
class FastPreset:
    """A family's few-step preset (`fast`): a distilled LoRA fused into the denoiser, its sampler, guidance off."""

    lora: str  # hub id of the few-step LoRA
    steps: int  # where `steps` is unset
    guidance: float  # where `guidance` is unset; 1: guidance off, one denoiser pass per step
    scheduler: str  # where `scheduler` is unset (a key of config.SCHEDULERS)
    vae: str = "tiny"  # where `vae` is unset: "tiny" is the family's tiny autoencoder (``ModelFamily.tiny_vae``)
    fits: Callable[[dict], bool] = _any_model  # (denoiser config.json) -> the LoRA's layers fit this model's
    made_for: str = ""  # the models ``fits`` accepts, for messages ("SD-1.x")


@dataclass(frozen=True)
class Pairing:
    """A `model` preset that names a checkpoint and the ControlNet it runs with, and the checkpoint's own defaults
    (a step-distilled checkpoint needs few steps and its sampler, which its configs do not say)."""

    preset: str  # the `model` preset (a key of hub.PRESETS)
    controlnet: str  # where `controlnet` is unset
    steps: int  # where `steps` is unset
    guidance: float  # where `guidance` is unset
    scheduler: str  # where `scheduler` is unset (a key of config.SCHEDULERS)


def pairing_of(model: ModelConfig) -> Pairing | None:
    """The pairing preset ``model.model`` names, if any (a local folder of that name is that folder)."""
    from vipcli_model.models import hub
    from vipcli_model.models.families.sdxl_union import PAIRING

    found = {PAIRING.preset: PAIRING}.get(model.model or "")
    return found if found is not None and hub.resolve_spec(found.preset) != found.preset else None


def resolve_pairing(model: ModelConfig) -> ModelConfig:
    """``model`` with the ControlNet its pairing preset names where `controlnet` is unset."""
    pairing = pairing_of(model)
    return replace(model, controlnet=pairing.controlnet) if pairing and not model.controlnet else model


@dataclass(frozen=True)
class ModelFamily:
    """One kind of inpainting model, as vip runs it: what it is, its defaults, its fast preset."""

    name: str  # short id written to the output metadata ("sd", "sdxl")
    label: str  # what messages call it ("SD-1.x/2.x", "SDXL")
    matches: Callable[[dict, dict], bool]  # (model_index.json, denoiser config.json) -> is it this family?
    pipeline_class: Callable[[], type]  # the vip pipeline class (imported lazily: diffusers is heavy)
    steps: int  # default denoising steps (used where the user gives none)
    guidance: float  # default classifier-free guidance scale
    scheduler: str  # default scheduler (a key of config.SCHEDULERS)
    trainable: bool  # whether `vip train` supports it
    guidance_interval: tuple[float, float] | None = None  # default guidance interval (sigma); None: every step
    fast: FastPreset | None = None  # the few-step preset `fast` runs; None: none yet (`fast_lora` must name one)
    tiny_vae: str | None = None  # hub id of the tiny autoencoder (TAESD) distilled from its VAE; None: none
    prompt_tokenizer: str = "tokenizer"  # the pipeline's tokenizer of the text stream that carries region prompts
    prompt_tokens: int = 77  # that stream's length: a captioner's text is fitted to it (CLIP: 77, start/end included)
    lora_family: str = ""  # the family whose denoiser LoRAs fit this one's ("sdxl" for SDXL + ControlNet); "": its own

    @property
    def lora_group(self) -> str:
        """Families whose LoRAs are interchangeable share this name."""
        return self.lora_family or self.name


def resolve_generation(
    generation: GenerationConfig, family: ModelFamily, *, fast: bool = False, pairing: Pairing | None = None
) -> GenerationConfig:
    """``generation`` with every field left unset (None) filled by ``family``: the one place these defaults live.

    ``fast`` (a few-step LoRA is fused): the family's fast preset's steps, guidance and scheduler, guidance at
    every step (it is off anyway); a family without a preset keeps its own defaults. ``pairing`` (the `model`
    preset that ran, without `fast`): its checkpoint's steps, guidance and scheduler. Values that were set stay.
    """
    preset = family.fast if fast else pairing
    defaults = {
        "steps": preset.steps if preset else family.steps,
        "guidance": preset.guidance if preset else family.guidance,
        "scheduler": preset.scheduler if preset else family.scheduler,
        "guidance_interval": (None if fast else family.guidance_interval) or (0.0, math.inf),  # (0, inf): every step
    }
    return replace(generation, **{key: value for key, value in defaults.items() if getattr(generation, key) is None})


def resolve_model(model: ModelConfig, family: ModelFamily, denoiser: dict | None = None) -> ModelConfig:
    """``model`` with its fast LoRA and autoencoder decided for ``family``, refused where they cannot run.

    Called as soon as the model's configs are known (``denoiser``: its UNet / transformer ``config.json``), before
    any weight is fetched. ``fast_lora`` is then the LoRA that runs (None without `fast`), ``vae`` never None.
    """
    from vipcli_model.models import hub

    label, preset = family.label, family.fast
    fast_lora = None
    if model.fast_lora and not model.fast:
        raise OptionError("`fast_lora` needs `fast`: it replaces the fast preset's LoRA")
    if model.fast and model.fast_lora:
        fast_lora = model.fast_lora
        made_for = fast_loras().get(hub.resolve_spec(fast_lora))
        if made_for is not None and made_for.lora_group != family.lora_group:
            instead = f"use {preset.lora} (`fast` alone picks it)" if preset else f"{label} has no fast preset yet"
            raise OptionError(
                f"`fast_lora`: {hub.resolve_spec(fast_lora)} is made for {made_for.label}, not {label}: {instead}"
            )
    elif model.fast:
        if preset is None:
            raise OptionError(
                f"`fast`: {label} has no fast preset yet: pass `fast_lora` with a few-step LoRA made for {label}"
            )
        fast_lora = preset.lora
    if fast_lora and preset and hub.resolve_spec(fast_lora) == preset.lora and denoiser and not preset.fits(denoiser):
        argument = "`fast_lora`" if model.fast_lora else "`fast`"
        raise OptionError(
            f"{argument}: {hub.resolve_spec(model.model)} is not {preset.made_for}, and {preset.lora} is made for "
            f"{preset.made_for} only: pass `fast_lora` with a few-step LoRA made for this model, or run without `fast`"
        )
    vae = model.vae or (preset.vae if model.fast and preset else "full")
    return replace(model, fast_lora=fast_lora, vae=vae)


def _families() -> tuple[ModelFamily, ...]:
    from vipcli_model.models.families import flux, flux2_klein, sd, sdxl, sdxl_union

    return (sdxl_union.FAMILY, sdxl.FAMILY, sd.FAMILY, flux.FAMILY, flux2_klein.FAMILY)


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


def family_of_folder(folder: Path, *, controlnet: bool = False) -> ModelFamily:
    """The family of a diffusers folder, from its configs; ``controlnet``: as paired with a ControlNet."""
    index, denoiser = read_configs(folder)
    if controlnet:
        index = {**index, "controlnet": ["diffusers", "ControlNetUnionModel"]}
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
    return {family.fast.lora: family for family in _families() if family.fast}


__all__ = [
    "FastPreset",
    "ModelFamily",
    "family_from_configs",
    "fast_loras",
    "family_of_folder",
    "family_of_pipeline",
    "read_configs",
    "resolve_generation",
    "resolve_model",
]
