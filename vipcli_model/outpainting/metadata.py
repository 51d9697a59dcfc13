"""What an output file records about how it was made: the ``vip`` JSON and the A1111 ``parameters`` text.

Plain values in, plain dicts out: no model, no torch (``--preview`` writes metadata too).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from vipcli_model.config import BlendConfig, ExpansionConfig, GenerationConfig, ModelConfig, sampler_settings
from vipcli_model.models.hub import resolve_spec
from vipcli_model.outpainting.canvas import Geometry
from vipcli_model.prompts import RegionPrompts


def vip_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vip-outpaint")
    except PackageNotFoundError:
        return "0+unknown"


def preview_metadata(source: str, expansion: ExpansionConfig, geometry: Geometry) -> dict[str, Any]:
    """The metadata of a ``--preview`` canvas and mask."""
    return {
        "source": source,
        "expansion": expansion.to_dict(),
        "canvas_size": list(geometry.plan.canvas_size),
        "image_box": list(geometry.plan.image_box),
    }


def outpaint_metadata(
    *,
    source: str,
    model_name: str,
    model: ModelConfig,
    prompts: RegionPrompts,
    prompt_info: dict | None,
    seed: int,
    generation: GenerationConfig,
    cts: dict,
    expansion: ExpansionConfig,
    geometry: Geometry,
    blend: BlendConfig,
    color_correction: list | None,
    runtime: dict[str, Any],
) -> dict[str, Any]:
    """Everything needed to reproduce an outpaint (stored as JSON in the output's ``vip`` chunk).

    ``cts`` is how C-T-S ran (``OutpaintPipelineOutput.cts``); ``runtime`` the pipeline's state:
    family (``families/``), vae ("full", or the tiny autoencoder's hub id / folder), vae_tiling, vae_channels_last,
    device, dtype, and guided_steps (with a guidance interval: how many steps ran guided / unguided).
    """
    interval = generation.guidance_interval
    every_step = interval is None or (interval[0] <= 0.0 and interval[1] == float("inf"))
    return {
        "vip_version": vip_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "model": model_name,
        "family": runtime.get("family"),
        "adapter": model.adapter,
        "controlnet": resolve_spec(model.controlnet) if model.controlnet else None,
        "prompts": prompts.to_dict(),
        "prompt_source": prompt_info or {"source": "user" if not prompts.is_empty else "unconditional"},
        "negative": generation.negative,
        "seed": seed,
        "steps": generation.steps,
        "guidance": generation.guidance,
        "guidance_interval": None if every_step or generation.guidance <= 1.0 else list(interval),
        "guided_steps": None if every_step or generation.guidance <= 1.0 else runtime.get("guided_steps"),
        "deep_cache": generation.deep_cache if generation.deep_cache > 1 else None,
        "cached_steps": runtime.get("cached_steps") if generation.deep_cache > 1 else None,
        "scheduler": generation.scheduler,
        "num_images": generation.num_images,
        "cts": cts,
        "region_strength": generation.region_strength,
        "fast_lora": model.fast_lora,
        "expansion": expansion.to_dict(),
        "image_size": list(geometry.plan.image_size),
        "canvas_size": list(geometry.plan.canvas_size),
        "image_box": list(geometry.plan.image_box),
        "working_size": list(geometry.work_size) if geometry.work_size is not None else None,
        "feather": blend.feather,
        "color_match": blend.color_match,
        "color_correction": color_correction or None,
        "vae": runtime.get("vae", "full"),
        "vae_tiling": runtime["vae_tiling"],
        "vae_channels_last": runtime["vae_channels_last"],
        "cpu_offload": model.cpu_offload,
        "memory": runtime.get("memory"),
        "compile": model.compile,
        "device": runtime["device"],
        "dtype": runtime["dtype"],
    }


def parameters_text(metadata: dict[str, Any]) -> tuple[str, dict[str, object]]:
    """The A1111-style settings for the PNG ``parameters`` chunk: (the Total prompt, settings)."""
    from vipcli_model.cts.attention import DEFAULT_REGION_STRENGTH  # torch: only after a model ran

    meta = metadata
    settings = {  # A1111's own keys first, in its order; then vip's
        "Steps": meta["steps"],
        **sampler_settings(meta["scheduler"]),
        "CFG scale": meta["guidance"],
        "Seed": meta["seed"],
        "Size": "x".join(map(str, meta["canvas_size"])),
        "Model": meta["model"],
        "DeepCache": meta.get("deep_cache"),
        "Guidance interval": ",".join(map(str, meta["guidance_interval"])) if meta.get("guidance_interval") else None,
        "Model family": meta.get("family"),
        "Center": meta["prompts"]["center"] or None,
        "Surrounding": meta["prompts"]["surrounding"] or None,
        "C-T-S": (meta["cts"].get("mode") if meta["cts"].get("enabled") else "off"),
        "Region strength": meta["region_strength"]
        if meta["region_strength"] is not None
        else ("adapter" if meta["adapter"] else DEFAULT_REGION_STRENGTH),
        "Fast LoRA": meta.get("fast_lora"),
        "VAE": meta.get("vae") if meta.get("vae") not in (None, "full") else None,
        "Detail": _detail_text(meta.get("detail")),
        "Version": f"vip {meta['vip_version']}",
    }
    return meta["prompts"]["total"], settings


def _detail_text(detail: dict | None) -> str | None:
    """The detail pass in the parameters text (``detail.py``): only when it ran."""
    if not detail or not detail.get("ran"):
        return None
    return (
        f"{detail['tiles']} tiles of {detail['tile_size']} px, strength {detail['strength']}, {detail['steps']} steps"
    )
