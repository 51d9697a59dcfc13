"""Model ids -> local files: presets, the user cache, and clear offline errors.

Where weights live (first match wins):

1. ``VIP_CACHE_DIR`` when set;
2. the Hugging Face hub cache when the user configured one (``HF_HUB_CACHE`` or ``HF_HOME``),
   so models already downloaded by other tools are reused;
3. ``<platformdirs user cache>/vip/hub``.

The layout is the Hugging Face hub cache layout in every case, so ``huggingface-cli scan-cache``
and friends work on it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

import platformdirs

from .errors import ModelLoadError, ModelNotFoundError

DEFAULT_INPAINT_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"
DEFAULT_CAPTIONER_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"

# Short names users may type instead of hub ids.
PRESETS: dict[str, str] = {
    "sd15-inpaint": DEFAULT_INPAINT_MODEL,
    "sd2-inpaint": "stabilityai/stable-diffusion-2-inpainting",
    "sdxl-inpaint": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
    "smolvlm-256m": "HuggingFaceTB/SmolVLM-256M-Instruct",
    "smolvlm-500m": "HuggingFaceTB/SmolVLM-500M-Instruct",
    "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
}

T = TypeVar("T")


def cache_dir() -> Path:
    """The folder (hub cache layout) where vip stores downloaded weights."""
    if os.environ.get("VIP_CACHE_DIR"):
        return Path(os.environ["VIP_CACHE_DIR"]).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(platformdirs.user_cache_dir("vip", appauthor=False)) / "hub"


def offline() -> bool:
    """True when the user asked for no network (``HF_HUB_OFFLINE=1`` or ``VIP_OFFLINE=1``)."""
    truthy = {"1", "true", "yes", "on"}
    return (
        os.environ.get("HF_HUB_OFFLINE", "").lower() in truthy
        or os.environ.get("VIP_OFFLINE", "").lower() in truthy
    )


def resolve_spec(spec: str) -> str:
    """Expand a preset name; leave hub ids and paths as they are."""
    return PRESETS.get(spec, spec)


def is_local(spec: str) -> bool:
    """A spec naming something on disk (folder or file), as opposed to a hub id."""
    return Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")) or spec.endswith(
        (".safetensors", ".ckpt")
    )


def how_to_provide(model: str) -> str:
    """One sentence telling a user how to make ``model`` available."""
    return (
        f"download it once with network access (`vip models download {model}`), "
        f"or pass a local folder or .safetensors file with --model"
    )


_REACHABLE: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can the Hugging Face hub (``HF_ENDPOINT``) be reached? One quick TCP connect, remembered per process.

    Without this check an unreachable hub costs minutes: huggingface_hub retries every file with backoff.
    """
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint not in _REACHABLE:
        parsed = urlparse(endpoint)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
                _REACHABLE[endpoint] = True
        except OSError:
            _REACHABLE[endpoint] = False
    return _REACHABLE[endpoint]


def load_cached_first(model: str, what: str, loader: Callable[[bool], T]) -> T:
    """Load a hub model from the cache when it is there (no network at all), else download it.

    ``loader(local_files_only)`` does the loading. A model that is not cached while the hub is
    unreachable (or ``HF_HUB_OFFLINE=1``) fails at once with one line naming it and how to provide it.
    """
    if offline():
        return load_with_errors(model, what, lambda: loader(True))
    try:
        return loader(True)
    except Exception:  # noqa: BLE001 - not (fully) cached: fall through to the network
        pass
    if not hub_reachable():
        raise ModelNotFoundError(
            f"{what} '{model}' is not in the local cache ({cache_dir()}) and the Hugging Face hub "
            f"cannot be reached: {how_to_provide(model)}"
        )
    return load_with_errors(model, what, lambda: loader(False))


def load_with_errors(model: str, what: str, loader: Callable[[], T]) -> T:
    """Run ``loader`` and turn the many ways a model can fail to load into one-line errors.

    ``what`` names the part being loaded ("inpainting model", "captioner", ...).
    """
    try:
        return loader()
    except (ModelNotFoundError, ModelLoadError):
        raise
    except Exception as exc:  # noqa: BLE001 - translated into a user message below
        raise _translate(model, what, exc) from exc


def _translate(model: str, what: str, exc: Exception) -> Exception:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, GatedRepoError):
        return ModelNotFoundError(
            f"{what} '{model}' is gated on the Hugging Face hub: accept its licence on its hub page "
            "and log in (`hf auth login`), or pass a local copy with --model"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelNotFoundError(
            f"{what} '{model}' does not exist on the Hugging Face hub and is not a local path: "
            "check the spelling, or pass a local folder or .safetensors file"
        )
    network_markers = (
        "offline",
        "connection",
        "resolve",
        "couldn't connect",
        "cannot find the requested files",
        "does not appear to have",
        "not cached",
        "max retries",
        "name or service not known",
        "we couldn't connect",
        "not fully cached",
        "cached snapshot",
        "fetch metadata",
        "outgoing traffic",
        "timed out",
        "temporary failure",
    )
    local = is_local(model)
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)) or (
        not local and any(marker in text.lower() for marker in network_markers)
    ):
        return ModelNotFoundError(
            f"{what} '{model}' is not in the local cache ({cache_dir()}) and the Hugging Face hub "
            f"cannot be reached: {how_to_provide(model)}"
        )
    if local and not Path(model).expanduser().exists():
        return ModelNotFoundError(f"{what} path '{model}' does not exist")
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(f"cannot load {what} '{model}': {first_line}")
