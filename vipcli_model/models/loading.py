"""Loading the inpainting model: hub id or preset (through :mod:`hub`), diffusers folder, or single file."""

from __future__ import annotations

import logging
import re
from importlib.metadata import version
from pathlib import Path

import torch

from vipcli_model.config import ModelConfig
from vipcli_model.cts.adapter import ADAPTER_FILENAME
from vipcli_model.device import pick_device, pick_dtype
from vipcli_model.errors import ModelLoadError, ModelNotFoundError, OptionError
from vipcli_model.models import hub
from vipcli_model.models.catalog import ADAPTER, INPAINT, LORA, TINY_VAE
from vipcli_model.models.controlnet import load_controlnet
from vipcli_model.models.families import ModelFamily, family_of_folder, read_configs, resolve_model, resolve_pairing
from vipcli_model.models.memory import QUANTIZER, MemoryPlan, plan_memory
from vipcli_model.pipelines.sd import VipOutpaintPipeline
from vipcli_model.speed.lora_fuse import fuse_lora, fuse_lora_state_dict, read_lora

# diffusers 0.40 renamed `torch_dtype` to `dtype` in from_pretrained and from_single_file (the old name warns);
# earlier versions know only `torch_dtype`.
DTYPE_KEYWORD = "dtype" if tuple(map(int, re.findall(r"\d+", version("diffusers"))[:2])) >= (0, 40) else "torch_dtype"

# Families with a transformer denoiser: bf16 where the GPU has it (their activations overflow fp16), and a
# transformer that may be quantized (no LoRA or adapter is fused into it).
TRANSFORMER_FAMILIES = ("flux-fill", "flux2-klein")

# Keywords each family's pipeline class takes at load time beyond the dtype (SDXL pipelines have no safety checker).
_LOAD_KEYWORDS = {"sd": {"safety_checker": None, "requires_safety_checker": False}}

logger = logging.getLogger(__name__)


def _load_single_file(
    path: Path, model_config: str | None, common: dict, tqdm_class=None, paired: dict | None = None
) -> VipOutpaintPipeline:
    """A single original-layout checkpoint plus the diffusers config of its architecture (configs only: no weights);
    ``paired``: a ControlNet, with which the checkpoint is a text-to-image SDXL model (``from_single_file`` of the
    ControlNet pipeline)."""
    check_single_file(path)
    default = hub.PRESETS["sdxl-union"] if paired else hub.DEFAULT_INPAINT_MODEL  # a text-to-image SDXL's configs
    config_spec = hub.resolve_spec(model_config or default)
    if Path(config_spec).expanduser().exists():
        config_folder = Path(config_spec).expanduser()
    else:
        try:
            config_folder = hub.ensure_model(
                config_spec,
                INPAINT,
                what="model config",
                configs_only=True,
                tqdm_class=tqdm_class,
                option="model_config",
                single_file=False,
            ).folder
        except ModelNotFoundError as exc:  # the checkpoint is local: the problem is the config
            raise ModelNotFoundError(
                f"single-file model '{path}' needs the diffusers config of its architecture: {exc}"
            ) from exc
    family = family_of_folder(config_folder, controlnet=bool(paired))
    if family.name not in ("sd", "sdxl-union") or (family.name == "sdxl-union") != bool(paired):
        raise ModelLoadError(
            f"single-file checkpoints are supported for SD-1.x/2.x inpainting models, and for text-to-image SDXL "
            f"models with `controlnet`; '{config_spec}' is {family.label}: use the model's diffusers folder or hub id"
        )
    return family.pipeline_class().from_single_file(
        str(path),
        config=str(config_folder),
        local_files_only=True,
        **common,
        **_LOAD_KEYWORDS.get(family.name, {}),
        **(paired or {}),
    )


def _from_pretrained(
    folder: Path,
    common: dict,
    variant: str | None = None,
    auto_dtype: bool = False,
    memory: str = "auto",
    device: torch.device | None = None,
    components: dict | None = None,
):
    """Load a diffusers folder with the pipeline class of its family (read from its configs).

    ``auto_dtype``: the dtype was chosen automatically; FLUX then runs in bf16 on a CUDA GPU that has it (its
    activations overflow fp16), where SD and SDXL use fp16. ``memory``: the requested memory plan
    (``families/memory.py``), decided here from the folder's parameter counts and the free GPU memory; the
    pipeline comes back with it as ``vip_memory_plan`` (a quantized denoiser is already quantized, nothing placed).
    ``components``: parts already loaded (a tiny autoencoder): the folder's own are then never read.
    """
    components = components or {}
    family: ModelFamily = family_of_folder(folder, controlnet="controlnet" in components)
    if "controlnet" in components and family.name != "sdxl-union":
        found = "an SDXL inpainting model (9-channel UNet)" if family.name == "sdxl" else family.label
        raise ModelLoadError(
            f"`controlnet`: ControlNet Union runs with text-to-image SDXL models, and '{folder}' is {found}: "
            "pass an SDXL checkpoint as `model`, or leave `controlnet` out"
        )
    extra = {"variant": variant} if variant else {}
    dtype = common[DTYPE_KEYWORD]
    if family.name in TRANSFORMER_FAMILIES and auto_dtype and dtype == torch.float16 and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
        common = {**common, DTYPE_KEYWORD: dtype}
    plan = memory_plan_for(folder, family, device or torch.device("cpu"), dtype, memory, variant, components)
    if plan.quantize:
        extra["quantization_config"] = _quantization_config(plan.quantize, dtype)
    extra.update(components or {})
    keywords = {**common, **_LOAD_KEYWORDS.get(family.name, {}), **extra}
    pipe = family.pipeline_class().from_pretrained(str(folder), **keywords)
    pipe.vip_memory_plan = plan
    return pipe


def folder_parameters(folder: Path, variant: str | None = None) -> dict[str, int]:
    """Parameters of each part of a diffusers folder, from its safetensors headers (no weights read)."""
    import json
    import math
    import struct

    counts: dict[str, int] = {}
    for part in sorted(path for path in Path(folder).iterdir() if path.is_dir()):
        files = sorted(part.glob("*.safetensors"))
        chosen = (
            [f for f in files if variant and f".{variant}." in f.name]
            or [f for f in files if not any(f".{name}." in f.name for name in ("fp16", "bf16", "fp32"))]
            or files
        )
        total = 0
        for path in chosen:
            with path.open("rb") as handle:
                header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
            total += sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
        if total:
            counts[part.name] = total
    return counts


def pipeline_parameters(folder: Path, variant: str | None = None, components: dict | None = None) -> dict[str, int]:
    """Parameters of each part that will run: the folder's (``folder_parameters``), with the parts handed over
    already loaded (a paired ControlNet, a tiny autoencoder) counted instead of the folder's own."""
    params = folder_parameters(folder, variant)
    for name, part in (components or {}).items():
        if isinstance(part, torch.nn.Module):
            params[name] = sum(parameter.numel() for parameter in part.parameters())
    return params


def memory_plan_for(
    folder: Path,
    family: ModelFamily,
    device: torch.device,
    dtype: torch.dtype,
    requested: str,
    variant: str | None = None,
    components: dict | None = None,
) -> MemoryPlan:
    """The memory plan for this folder (with ``components``) on ``device``: the pure decision of ``plan_memory``
    on measured inputs."""
    import importlib.util

    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    installed = frozenset(name for name in (QUANTIZER,) if importlib.util.find_spec(name) is not None)
    params = pipeline_parameters(folder, variant, components) if device.type == "cuda" else {}
    return plan_memory(
        device_type=device.type,
        free_bytes=free,
        params=params,
        denoiser="transformer" if "transformer" in params else "unet",
        itemsize=torch.finfo(dtype).bits // 8,
        requested=requested,
        quantizable=family.name in TRANSFORMER_FAMILIES,
        installed=installed,
    )


def _quantization_config(bits: str, dtype: torch.dtype):
    """diffusers' pipeline quantization of the denoiser with bitsandbytes (LLM.int8 or NF4)."""
    from diffusers import PipelineQuantizationConfig

    if bits == "8bit":
        backend, kwargs = "bitsandbytes_8bit", {"load_in_8bit": True}
    else:
        backend, kwargs = (
            "bitsandbytes_4bit",
            {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": dtype},
        )
    return PipelineQuantizationConfig(
        quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=["transformer"]
    )


def place_pipeline(pipe, plan: MemoryPlan, device: torch.device) -> None:
    """Put the pipeline where its memory plan says (CPU and ``full``: on ``device``)."""
    if plan.mode == "model-offload":
        pipe.enable_model_cpu_offload(device=device)
    elif plan.mode == "group-offload":
        pipe.enable_group_offload(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=device.type == "cuda",  # prefetch on a CUDA stream; other backends have none
        )
    elif plan.mode == "sequential-offload":
        pipe.enable_sequential_cpu_offload(device=device)
    elif plan.quantize:
        # the quantized transformer is already on the GPU (bitsandbytes places it at load); move the rest
        for name, part in pipe.components.items():
            if isinstance(part, torch.nn.Module) and name != "transformer":
                part.to(device)
    else:
        pipe.to(device)


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
    parts = {
        "model.diffusion_model.": "UNet",
        "first_stage_model.": "VAE",
        ("cond_stage_model.", "conditioner."): "text encoder",
    }
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
        raise OptionError("`cpu_offload` needs a CUDA device (it moves submodels to the GPU while they run)")
    if config.cpu_offload and config.memory not in ("auto", "model-offload"):
        raise OptionError(
            f"`cpu_offload` is `memory` model-offload: it cannot be combined with `memory` {config.memory}"
        )
    if config.memory != "auto":  # the plan itself is made at load, from the model's sizes and the free memory
        plan_memory(
            device_type=device.type,
            free_bytes=None,
            params={},
            denoiser="unet",
            itemsize=4,
            requested=config.memory,
            quantizable=True,
            installed=frozenset({QUANTIZER}),
        )


def load_pipeline(config: ModelConfig, *, tqdm_class=None) -> VipOutpaintPipeline:
    """Load the inpainting model once: hub id or preset (downloaded into the vip cache), folder, or single file.

    The pipeline class is the model family's (``families/``), chosen from the model's own configs.
    """
    check_model_config(config)
    config = resolve_pairing(config)  # a pairing preset names its ControlNet
    device = pick_device(config.device)
    dtype = pick_dtype(device, config.dtype)
    spec = hub.resolve_spec(config.model)
    logger.info("loading inpainting model %s on %s (%s)", spec, device, str(dtype).replace("torch.", ""))
    path = Path(spec).expanduser()
    common = {DTYPE_KEYWORD: dtype}
    auto_dtype = (config.dtype or "auto").strip().lower() == "auto"
    memory = "model-offload" if config.cpu_offload else config.memory

    def components_before_load(folder: Path) -> dict:
        """The fast preset and autoencoder decided from the folder's configs, refused before anything is fetched;
        a tiny autoencoder is then loaded first and handed to ``from_pretrained``, so the model's own VAE is never
        read (a single file swaps it after loading)."""
        if not config.fast and (config.vae or "full") == "full":
            return {}
        family = family_of_folder(folder, controlnet=bool(config.controlnet))
        vae = resolve_model(config, family, read_configs(folder)[1]).vae
        if vae == "full":
            return {}
        own = hub.load_with_errors(spec, "inpainting model", lambda: _read_json(folder / "vae" / "config.json"))
        tiny, _ = tiny_vae_for(
            family,
            vae,
            dtype,
            latent_channels=own.get("latent_channels", 4),
            scale=2 ** (len(own.get("block_out_channels", [0])) - 1),
            tqdm_class=tqdm_class,
        )
        return {"vae": tiny}

    def load_local(components: dict) -> VipOutpaintPipeline:
        if path.is_file():
            paired_part = {"controlnet": components["controlnet"]} if "controlnet" in components else None
            return _load_single_file(path, config.model_config, common, tqdm_class, paired_part)
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"model folder '{spec}' has no model_index.json: pass a diffusers folder, "
                "a single .safetensors file, or a hub id"
            )
        return _from_pretrained(
            path, common, auto_dtype=auto_dtype, memory=memory, device=device, components=components
        )

    # the ControlNet is handed to from_pretrained as one more part: with it, an SDXL model is the sdxl-union family
    paired = (
        {"controlnet": load_controlnet(config.controlnet, dtype, tqdm_class=tqdm_class)} if config.controlnet else {}
    )
    if path.exists():
        model_folder = path.is_dir() and (path / "model_index.json").is_file()
        components = {**(components_before_load(path) if model_folder else {}), **paired}
        pipe = hub.load_with_errors(spec, "inpainting model", lambda: load_local(components))
    elif hub.is_local(spec):
        raise ModelNotFoundError(f"model path '{spec}' does not exist")
    else:
        if config.fast or (config.vae or "full") != "full":  # decided from the configs, before the weights
            configs = hub.ensure_model(spec, INPAINT, what="inpainting model", configs_only=True)
            family = family_of_folder(configs.folder, controlnet=bool(config.controlnet))
            resolve_model(config, family, read_configs(configs.folder)[1])
        local = hub.ensure_model(spec, INPAINT, what="inpainting model", tqdm_class=tqdm_class)
        components = {**components_before_load(local.folder), **paired}
        pipe = hub.load_with_errors(
            spec,
            "inpainting model",
            lambda: _from_pretrained(local.folder, common, local.files.variant, auto_dtype, memory, device, components),
        )
    check_inpainting(pipe, spec)
    config = model_settings(pipe, config)  # a single file: its family is known now, before anything is fetched
    if config.vae != "full" and type(pipe.vae).__name__ != "AutoencoderTiny":  # a single file
        load_tiny_vae(pipe, config.vae, tqdm_class=tqdm_class)
    pipe.set_progress_bar_config(disable=True)
    if getattr(pipe, "vip_memory_plan", None) is None:  # a single-file checkpoint: its parts are not measured
        pipe.vip_memory_plan = plan_memory(
            device_type=device.type,
            free_bytes=None,
            params={},
            denoiser="unet",
            itemsize=torch.finfo(dtype).bits // 8,
            requested=memory,
        )
    place_pipeline(pipe, pipe.vip_memory_plan, device)
    if config.vae_tiling:
        pipe.vae.enable_tiling()
    if device.type == "cpu":
        # The VAE's convolutions run faster channels-last on CPU and the UNet's slower (benchmarks/bench_levers.py
        # measures both), so only the VAE switches. Same values up to float rounding.
        pipe.vae.to(memory_format=torch.channels_last)
    return pipe


def model_settings(pipe, config: ModelConfig) -> ModelConfig:
    """``config`` with the fast LoRA and autoencoder that run on ``pipe`` (``families.resolve_model``)."""
    from vipcli_model.models.families import family_of_pipeline

    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    return resolve_model(config, family_of_pipeline(pipe), dict(denoiser.config) if denoiser is not None else None)


def tiny_vae_spec(pipe, vae: str) -> str:
    """The hub id or folder ``vae`` names: ``tiny`` is the family's TAESD."""
    from vipcli_model.models.families import family_of_pipeline

    return tiny_vae_spec_of(family_of_pipeline(pipe), vae)


def tiny_vae_spec_of(family: ModelFamily, vae: str) -> str:
    """``tiny_vae_spec`` for a family known before its pipeline loads."""
    if vae != "tiny":
        return hub.resolve_spec(vae)
    if family.tiny_vae is None:
        raise OptionError(f"`vae`: {family.label} has no tiny autoencoder: use `vae='full'`")
    return family.tiny_vae


def load_tiny_vae(pipe, vae: str, *, tqdm_class=None) -> str:
    """Swap a loaded pipeline's autoencoder for a tiny one (``AutoencoderTiny``, TAESD); returns what was loaded.

    For a single-file checkpoint, whose VAE comes with it; a diffusers folder gets the tiny one at load instead
    (``load_pipeline``), its own VAE never read.
    """
    from vipcli_model.models.families import family_of_pipeline

    tiny, spec = tiny_vae_for(
        family_of_pipeline(pipe),
        vae,
        pipe.vae.dtype,
        latent_channels=pipe.vae.config.latent_channels,
        scale=pipe.vae_scale_factor,
        tqdm_class=tqdm_class,
    )
    pipe.vae = tiny.to(pipe.vae.device)
    return spec


def tiny_vae_for(
    family: ModelFamily, vae: str, dtype: torch.dtype, *, latent_channels: int, scale: int, tqdm_class=None
):
    """The tiny autoencoder (``AutoencoderTiny``, TAESD) ``vae`` names, on the CPU, and its hub id or folder.

    The tiny autoencoder reads and writes the same latents (scaling factor 1: its latents are SD's scaled ones),
    about 30x faster on CPU, less exactly: fine detail is invented by its decoder. Checked against the model's
    ``latent_channels`` and downsampling ``scale`` before use.
    """
    from diffusers import AutoencoderTiny

    spec = tiny_vae_spec_of(family, vae)
    path = Path(spec).expanduser()
    if path.exists():
        folder = path
    elif hub.is_local(spec):
        raise ModelNotFoundError(f"tiny autoencoder path '{spec}' does not exist")
    else:
        if hub.offline() and hub.find_cached(spec, TINY_VAE) is None:
            raise ModelNotFoundError(
                f"tiny autoencoder '{spec}' is not in the local cache and HF_HUB_OFFLINE=1 forbids downloading it: "
                f"run `vip models download {spec}` once with network access (~10 MB), or use `vae='full'`"
            )
        folder = hub.ensure_model(
            spec, TINY_VAE, what="tiny autoencoder", tqdm_class=tqdm_class, option="vae", single_file=False
        ).folder
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"tiny autoencoder '{spec}' has no config.json: pass an AutoencoderTiny folder or hub id"
        )
    tiny = hub.load_with_errors(
        spec, "tiny autoencoder", lambda: AutoencoderTiny.from_pretrained(str(folder), **{DTYPE_KEYWORD: dtype})
    )
    tiny_scale = 2 ** (len(tiny.config.block_out_channels) - 1)
    if tiny.config.latent_channels != latent_channels or tiny_scale != scale:
        raise ModelLoadError(
            f"tiny autoencoder '{spec}' makes {tiny.config.latent_channels}-channel latents at 1/{tiny_scale} size, "
            f"the model {latent_channels}-channel at 1/{scale}: use the model's own (`vae='full'`)"
        )
    return tiny, spec


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.is_file() else {}


def check_inpainting(pipe, spec: str) -> None:
    """Refuse text-to-image checkpoints: vip needs the inpainting variant of each family, or a ControlNet."""
    unet = getattr(pipe, "unet", None)
    if unet is not None and getattr(pipe, "controlnet", None) is not None:
        if unet.config.in_channels != 4:
            raise ModelLoadError(
                f"`controlnet`: '{spec}' is an inpainting model (its UNet takes {unet.config.in_channels} channels); "
                "ControlNet Union pairs with a text-to-image SDXL checkpoint: pass one, or leave `controlnet` out"
            )
        return
    if unet is not None and unet.config.in_channels != 9:
        raise ModelNotFoundError(
            f"'{spec}' is not an inpainting model (its UNet takes {unet.config.in_channels} channels, "
            "vip needs a 9-channel SD, SD-2 or SDXL inpainting UNet; an SDXL text-to-image model outpaints with "
            "`controlnet` union)"
        )
    transformer = getattr(pipe, "transformer", None)
    # FLUX.2 [klein] inpaints by in-context reference, without mask channels: nothing to check there
    if transformer is not None and type(transformer).__name__ != "Flux2Transformer2DModel":
        channels_in, channels_out = transformer.config.in_channels, transformer.config.out_channels
        if not channels_out or channels_in <= channels_out:
            raise ModelNotFoundError(
                f"'{spec}' is not a FLUX Fill model (its transformer takes no mask and masked image): "
                "use black-forest-labs/FLUX.1-Fill-dev or a fine-tune of it"
            )


def is_channels_last(module: torch.nn.Module) -> bool:
    weight = next((p for p in module.parameters() if p.ndim == 4 and p.shape[-1] > 1), None)  # a 3x3 kernel
    return weight is not None and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)


def load_fast_lora(pipe: VipOutpaintPipeline, spec: str, *, tqdm_class=None) -> None:
    """Fuse a few-step distilled LoRA (LCM-LoRA) into the UNet: hub id, folder, or .safetensors file."""
    spec = hub.resolve_spec(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        folder, weight_name = path.parent, path.name
    elif path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        if not found:
            raise ModelNotFoundError(f"fast LoRA folder '{spec}' holds no .safetensors file")
        folder, weight_name = path, found[0].name
    elif hub.is_local(spec):
        raise ModelNotFoundError(f"fast LoRA path '{spec}' does not exist")
    else:
        local = hub.ensure_model(spec, LORA, what="fast LoRA", tqdm_class=tqdm_class, option="fast_lora")
        folder, weight_name = local.folder, local.files.weight_name
    # an explicit weight_name from a local folder: diffusers then never asks the hub (works offline). A UNet's plain
    # LoRA (LCM-LoRA's layout) is added straight into its weights; any other goes through diffusers' LoRA layers
    if getattr(pipe, "unet", None) is not None:
        state = hub.load_with_errors(spec, "fast LoRA", lambda: read_lora(pipe, str(folder), weight_name))
        if fuse_lora_state_dict(pipe, *state) is not None:
            return
    hub.load_with_errors(
        spec, "fast LoRA", lambda: pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name="fast")
    )
    fuse_lora(pipe, "fast")
    pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go (no per-step cost)


def resolve_adapter_path(spec: str) -> Path:
    """A local .safetensors file, a folder holding ``cts_adapter.safetensors``, or a hub repo id."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / ADAPTER_FILENAME
        if candidate.is_file():
            return candidate
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        raise ModelNotFoundError(f"adapter folder '{spec}' holds no {ADAPTER_FILENAME}")
    if hub.is_local(spec):
        raise ModelNotFoundError(f"adapter path '{spec}' does not exist")

    return hub.ensure_model(spec, ADAPTER, what="adapter", option="adapter").folder / ADAPTER_FILENAME
