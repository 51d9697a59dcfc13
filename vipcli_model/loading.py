"""Loading the inpainting model: hub id or preset (through :mod:`hub`), diffusers folder, or single file."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from . import hub
from .config import ModelConfig
from .device import pick_device, pick_dtype
from .errors import ModelLoadError, ModelNotFoundError, OptionError
from .pipeline import VipOutpaintPipeline


def _load_single_file(path: Path, model_config: str | None, common: dict) -> VipOutpaintPipeline:
    """A single original-layout checkpoint plus the diffusers config of its architecture."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    check_single_file(path)
    config_spec = hub.resolve_spec(model_config or hub.DEFAULT_INPAINT_MODEL)
    try:
        return VipOutpaintPipeline.from_single_file(
            str(path),
            config=config_spec,
            local_files_only=hub.offline() or Path(config_spec).exists(),
            cache_dir=str(hub.cache_dir()),
            **common,
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError, GatedRepoError) as exc:
        # the checkpoint is local: a hub error here is about the config
        raise ModelNotFoundError(
            f"single-file model '{path}' needs the diffusers config '{config_spec}', which is not in the local cache "
            f"({hub.cache_dir()}) and cannot be fetched: pass --model-config with a local diffusers folder (or a "
            f"cached hub id) of the same architecture, or download it once with `vip models download {config_spec}`"
        ) from exc


def check_single_file(path: Path) -> None:
    """Refuse files that are not safetensors checkpoints, or that lack a part of the pipeline."""
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(
            f"'{path}' is not a .safetensors file: vip loads single-file checkpoints in safetensors format only "
            "(pickle .ckpt files can run code; convert them first)"
        )
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ModelLoadError(f"'{path}' is not a valid safetensors file ({str(exc).splitlines()[0]})") from exc
    parts = {"model.diffusion_model.": "UNet", "first_stage_model.": "VAE", "cond_stage_model.": "text encoder"}
    missing = [name for prefix, name in parts.items() if not any(key.startswith(prefix) for key in keys)]
    if missing and len(missing) < len(parts):
        raise ModelLoadError(
            f"'{path}' has no {' and no '.join(missing)} weights (a pruned checkpoint?): use a full checkpoint "
            "or a diffusers folder"
        )


def check_model_config(config: ModelConfig) -> None:
    """Device, dtype and offload settings that cannot work here, reported before any loading."""
    device = pick_device(config.device)
    pick_dtype(device, config.dtype)
    if config.cpu_offload and device.type != "cuda":
        raise OptionError("--cpu-offload needs a CUDA device (it moves submodels to the GPU while they run)")


def load_pipeline(config: ModelConfig) -> VipOutpaintPipeline:
    """Load the inpainting model once: hub id or preset (downloaded into the vip cache), folder, or single file."""
    check_model_config(config)
    device = pick_device(config.device)
    dtype = pick_dtype(device, config.dtype)
    spec = hub.resolve_spec(config.model)
    path = Path(spec).expanduser()
    common = {"torch_dtype": dtype, "safety_checker": None, "requires_safety_checker": False}

    def load() -> VipOutpaintPipeline:
        if path.is_file():
            return _load_single_file(path, config.model_config, common)
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelNotFoundError(
                    f"model folder '{spec}' has no model_index.json: pass a diffusers folder, "
                    "a single .safetensors file, or a hub id"
                )
            return VipOutpaintPipeline.from_pretrained(str(path), **common)
        if hub.is_local(spec):
            raise ModelNotFoundError(f"model path '{spec}' does not exist")
        return None  # a hub id: loaded cache-first below

    def load_hub(local_files_only: bool) -> VipOutpaintPipeline:
        return VipOutpaintPipeline.from_pretrained(
            spec, cache_dir=str(hub.cache_dir()), local_files_only=local_files_only, **common
        )

    with warnings.catch_warnings():
        # newer diffusers renamed torch_dtype to dtype; older ones only know torch_dtype
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = hub.load_with_errors(spec, "inpainting model", load)
        if pipe is None:
            pipe = hub.load_cached_first(spec, "inpainting model", load_hub)
    if pipe.unet.config.in_channels != 9:
        raise ModelNotFoundError(
            f"'{spec}' is not an inpainting model (its UNet takes {pipe.unet.config.in_channels} channels, "
            "vip needs a 9-channel SD inpainting UNet)"
        )
    pipe.set_progress_bar_config(disable=True)
    if config.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if config.vae_tiling:
        pipe.vae.enable_tiling()
    if device.type == "cpu":
        # The VAE's convolutions run faster channels-last on CPU (encode x0.905, decode x0.814 of contiguous; the UNet
        # is slower that way and stays contiguous): benchmarks/bench_levers.py. Same values up to float rounding.
        pipe.vae.to(memory_format=torch.channels_last)
    return pipe


def is_channels_last(module: torch.nn.Module) -> bool:
    weight = next((p for p in module.parameters() if p.ndim == 4 and p.shape[-1] > 1), None)  # a 3x3 kernel
    return weight is not None and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)


def load_fast_lora(pipe: VipOutpaintPipeline, spec: str) -> None:
    """Fuse a few-step distilled LoRA (LCM-LoRA) into the UNet: hub id, folder, or .safetensors file."""
    spec = hub.resolve_spec(spec)
    path = Path(spec).expanduser()
    if hub.is_local(spec) and not path.exists():
        raise ModelNotFoundError(f"fast LoRA path '{spec}' does not exist")
    kwargs: dict = {"adapter_name": "fast"}
    if path.is_file():
        kwargs.update(weight_name=path.name)
        source = str(path.parent)
    else:
        source = str(path) if path.is_dir() else spec

    def load(local_files_only: bool) -> None:
        extra = {} if path.exists() else {"cache_dir": str(hub.cache_dir()), "local_files_only": local_files_only}
        pipe.load_lora_weights(source, **kwargs, **extra)

    if path.exists():
        hub.load_with_errors(spec, "fast LoRA", lambda: load(True))
    else:
        hub.load_cached_first(spec, "fast LoRA", load)
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go (no per-step cost)
