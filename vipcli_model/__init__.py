"""vip's library: image outpainting steered by space-aware prompts (VIP), and instruction editing.

Everything ``vip`` does is one call here; nothing prints. Start with::

    from vipcli_model import ExpansionConfig, OutpaintJob, outpaint_images

Parts (each a subpackage; lower ones never import higher ones):

- shared modules: ``config`` (typed settings), ``errors``, ``files``, ``prompts``, ``device``, ``batch``;
- ``images``: load, validate, save atomically, find inputs, name outputs;
- ``cts``: the Center-Total-Surrounding attention processor and adapter;
- ``speed``: levers that change how the denoiser runs (guidance interval, feature cache);
- ``pipelines``: the diffusers pipelines with region prompts (SD, SDXL, FLUX Fill);
- ``models``: the hub, the files per model, families, loading, memory plans;
- ``captioning``: the multimodal LLM that writes the region prompts;
- ``outpainting``: canvas, blend, the detail pass, one image and many, the warm session of ``vip ui``;
- ``editing``, ``training``, ``evaluation``: ``vip edit``, ``vip train``, ``vip eval``.

Names load on first use: ``import vipcli_model`` imports neither torch nor diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BlendConfig": "vipcli_model.config",
    "DetailConfig": "vipcli_model.config",
    "ExpansionConfig": "vipcli_model.config",
    "GenerationConfig": "vipcli_model.config",
    "ModelConfig": "vipcli_model.config",
    "PromptConfig": "vipcli_model.config",
    "VipError": "vipcli_model.errors",
    "InputError": "vipcli_model.errors",
    "OptionError": "vipcli_model.errors",
    "ModelNotFoundError": "vipcli_model.errors",
    "ModelLoadError": "vipcli_model.errors",
    "OutputError": "vipcli_model.errors",
    "CaptionerError": "vipcli_model.errors",
    "Cancelled": "vipcli_model.errors",
    "RegionPrompts": "vipcli_model.prompts",
    "OutpaintJob": "vipcli_model.outpainting.run",
    "OutpaintRun": "vipcli_model.outpainting.run",
    "outpaint_images": "vipcli_model.outpainting.run",
    "Outpainter": "vipcli_model.outpainting.outpainter",
    "OutpaintResult": "vipcli_model.outpainting.outpainter",
    "OutpaintSession": "vipcli_model.outpainting.session",
    "canvas_preview": "vipcli_model.outpainting.session",
    "EditSession": "vipcli_model.editing.session",
    "VipOutpaintPipeline": "vipcli_model.pipelines.sd",
    "VipOutpaintXLPipeline": "vipcli_model.pipelines.sdxl",
    "VipOutpaintXLUnionPipeline": "vipcli_model.pipelines.sdxl_union",
    "VipOutpaintFluxFillPipeline": "vipcli_model.pipelines.flux",
    "VipOutpaintFlux2KleinPipeline": "vipcli_model.pipelines.flux2_klein",
    "EditJob": "vipcli_model.editing.run",
    "edit_images": "vipcli_model.editing.run",
    "caption_images": "vipcli_model.captioning.captioner",
    "TrainConfig": "vipcli_model.training.config",
    "run_training": "vipcli_model.training.recipe",
    "EvalConfig": "vipcli_model.evaluation.settings",
    "run_eval": "vipcli_model.evaluation.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vipcli_model' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
