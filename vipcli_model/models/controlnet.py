"""Loading the ControlNet that `controlnet` pairs with a text-to-image SDXL model: preset, hub id or folder.

A ControlNet Union folder is a diffusers model folder (``config.json`` + ``diffusion_pytorch_model[.fp16]
.safetensors``), or xinsir's layout, whose ProMax sits beside the first release as ``config_promax.json`` +
``diffusion_pytorch_model_promax.safetensors``: vip then loads the ProMax (the one with the outpaint type).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vipcli_model.errors import ModelLoadError, ModelNotFoundError
from vipcli_model.models import hub
from vipcli_model.models.catalog import CONTROLNET, PROMAX_FILES


def controlnet_folder(spec: str, *, tqdm_class=None) -> Path:
    """The local folder of the ControlNet ``spec`` names ("union": the ProMax preset), downloaded once."""
    spec = hub.resolve_spec(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or hub.is_local(spec):
        raise ModelNotFoundError(f"controlnet '{spec}' is not a folder: pass a diffusers ControlNet folder or hub id")
    return hub.ensure_model(spec, CONTROLNET, what="controlnet", tqdm_class=tqdm_class, option="controlnet").folder


def load_controlnet(spec: str, dtype: torch.dtype, *, tqdm_class=None):
    """The ``ControlNetUnionModel`` ``spec`` names, in ``dtype`` on the CPU; a one-line error for anything else."""
    from diffusers import ControlNetUnionModel

    folder = controlnet_folder(spec, tqdm_class=tqdm_class)
    config_name, weights_name = PROMAX_FILES
    if not (folder / config_name).is_file():
        config_name = "config.json"
        weights = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
        weights_name = next((w.name for w in weights if w.name == "diffusion_pytorch_model.safetensors"), None) or (
            weights[0].name if weights else ""
        )
    if not (folder / config_name).is_file() or not (folder / weights_name).is_file():
        raise ModelNotFoundError(
            f"controlnet '{spec}' has no config.json and diffusion_pytorch_model safetensors: pass a diffusers "
            "ControlNet Union folder or hub id"
        )

    def load():
        from safetensors.torch import load_file

        config = ControlNetUnionModel.load_config(str(folder / config_name))
        if config.get("_class_name") not in (None, "ControlNetUnionModel", "ControlNetModel_Union"):
            raise ModelLoadError(
                f"controlnet '{spec}' is a {config.get('_class_name')}: vip runs ControlNet Union models "
                "(e.g. `controlnet` union)"
            )
        model = ControlNetUnionModel.from_config(config)
        missing, unexpected = model.load_state_dict(load_file(str(folder / weights_name)), strict=False)
        if missing or unexpected:
            raise ModelLoadError(
                f"controlnet '{spec}': its weights do not fit a ControlNet Union ({len(missing)} missing, "
                f"{len(unexpected)} unexpected tensors)"
            )
        return (model if dtype == torch.float32 else model.to(dtype=dtype)).eval()

    return hub.load_with_errors(spec, "controlnet", load)
