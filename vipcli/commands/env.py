"""`vip env`: versions, device and cache paths, for bug reports."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..console import out_console


def env(json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Print versions, the device vip would pick, and where models are cached (paste this into bug reports)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from vipcli_model import device
    from vipcli_model.models import hub

    info: dict[str, str] = {"python": platform.python_version(), "platform": platform.platform()}
    packages = (
        "vip-outpaint",
        "torch",
        "diffusers",
        "transformers",
        "accelerate",
        "huggingface_hub",
        "safetensors",
        "pillow",
    )
    for package in packages:
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = "not installed"
    info.update(device.describe())
    info["model_cache"] = str(hub.cache_dir())
    info["model_caches_read"] = [str(folder) for folder in hub.cache_dirs()]
    info["offline"] = str(hub.offline())
    info["default_model"] = hub.DEFAULT_INPAINT_MODEL
    if json_out:
        out_console.print(json.dumps(info, indent=2), highlight=False)
        return
    width = max(len(key) for key in info)
    for key, value in info.items():
        out_console.print(f"{key:<{width}}  {value}", highlight=False)
