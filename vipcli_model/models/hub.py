"""Model ids -> local files: presets, the caches vip reads and writes, downloads, and clear one-line errors.

Where vip looks for a hub model, in order (the first cache holding every file the model needs wins):

1. ``VIP_CACHE_DIR`` when set;
2. the Hugging Face hub cache, where diffusers, transformers and ``hf download`` put models (``HF_HUB_CACHE``,
   ``HF_HOME``, ... as huggingface_hub reads them).

Downloads go to the first of these, through huggingface_hub (``snapshot_download``), in the hub cache layout, so
other tools see them too. Which files a model needs comes from :mod:`vipcli_model.models.catalog` (one table, one
rule), the same for ``vip models download`` and first use. Every network problem becomes one line naming the model
and the fix.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from vipcli_model.config import DEFAULT_INPAINT_MODEL
from vipcli_model.errors import ModelLoadError, ModelNotFoundError
from vipcli_model.models.catalog import (
    INPAINT,
    MODEL_FILES,
    IncompleteRepository,
    ModelFiles,
    detect_kind,
    files_for,
    select_files,
)

DEFAULT_CAPTIONER_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"
DEFAULT_HUB_TIMEOUT = 20.0  # seconds; VIP_HUB_TIMEOUT overrides

# Short names users may type instead of hub ids. Only models vip can run are listed.
PRESETS: dict[str, str] = {
    "sd15-inpaint": DEFAULT_INPAINT_MODEL,
    "sd2-inpaint": "sd2-community/stable-diffusion-2-inpainting",
    "sdxl-inpaint": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
    "flux-fill": "black-forest-labs/FLUX.1-Fill-dev",
    "flux2-klein-4b": "black-forest-labs/FLUX.2-klein-4B",
    "lcm-lora-sd15": "latent-consistency/lcm-lora-sdv1-5",
    "lcm-lora-sdxl": "latent-consistency/lcm-lora-sdxl",
    "sdxl-union": "SG161222/RealVisXL_V5.0_Lightning",  # with `controlnet` union (families.sdxl_union.PAIRING)
    "union": "OzzyGT/controlnet-union-promax-sdxl-1.0",  # `controlnet`: ControlNet Union ProMax for SDXL
    "tcd-lora-sdxl": "h1t/TCD-SDXL-LoRA",
    "smolvlm-256m": "HuggingFaceTB/SmolVLM-256M-Instruct",
    "smolvlm-500m": "HuggingFaceTB/SmolVLM-500M-Instruct",
    "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
    # vip edit (InstructPix2Pix pipelines); the default is DEFAULT_EDIT_MODEL in vipcli_model/editing.
    # timbrooks/instruct-pix2pix runs too (by hub id) but has no preset: its listing is not recorded in full.
    "pbi-add": "paint-by-inpaint/add-base",
    "pbi-add-mb": "paint-by-inpaint/add-finetuned-mb",
    "pbi-general": "paint-by-inpaint/general-base",
    "pbi-general-mb": "paint-by-inpaint/general-finetuned-mb",
    # tiny autoencoders (`vae='tiny'`, `fast`): TAESD for SD-1.x/2.x and SDXL latents
    "taesd": "madebyollin/taesd",
    "taesdxl": "madebyollin/taesdxl",
}

T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ caches


def hub_constants() -> ModuleType:
    """``huggingface_hub.constants`` evaluated against the environment as it is now.

    The imported module froze its values (cache paths, offline mode, endpoint) when huggingface_hub was first
    imported; a long-lived process or a test may change the environment afterwards. This runs the library's own
    definitions again, in a private module, so vip never re-implements them.
    """
    spec = importlib.util.find_spec("huggingface_hub.constants")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hf_cache_dir() -> Path:
    """The standard Hugging Face hub cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, ...)."""
    return Path(hub_constants().HF_HUB_CACHE)


def cache_dir() -> Path:
    """The folder (hub cache layout) vip downloads into: ``VIP_CACHE_DIR``, else the Hugging Face cache."""
    if os.environ.get("VIP_CACHE_DIR"):
        return Path(os.environ["VIP_CACHE_DIR"]).expanduser()
    return hf_cache_dir()


def cache_dirs() -> list[Path]:
    """Every cache vip reads, in the order it looks (see the module docstring)."""
    return list(dict.fromkeys((cache_dir(), hf_cache_dir())))


def offline() -> bool:
    """True when the user asked for no network (``HF_HUB_OFFLINE=1``, as huggingface_hub reads it)."""
    return bool(hub_constants().HF_HUB_OFFLINE)


def endpoint() -> str:
    """The hub's address (``HF_ENDPOINT`` for a mirror)."""
    return hub_constants().ENDPOINT.rstrip("/")


def hub_timeout() -> float:
    """Seconds vip waits for the hub to answer one request (``VIP_HUB_TIMEOUT``)."""
    try:
        return max(0.1, float(os.environ.get("VIP_HUB_TIMEOUT", DEFAULT_HUB_TIMEOUT)))
    except ValueError:
        return DEFAULT_HUB_TIMEOUT


def resolve_spec(spec: str) -> str:
    """Expand a preset name; leave hub ids and paths as they are. A folder or file of that name here wins over
    the preset (``--model sd15-inpaint`` in a directory holding a folder ``sd15-inpaint`` loads that folder)."""
    if spec in PRESETS and Path(spec).expanduser().exists():
        return spec
    return PRESETS.get(spec, spec)


def is_local(spec: str) -> bool:
    """A spec naming something on disk (folder or file), as opposed to a hub id."""
    return (
        Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")) or spec.endswith((".safetensors", ".ckpt"))
    )


def how_to_provide(model: str, option: str | None = "model", *, single_file: bool = True) -> str:
    """One sentence telling a user how to make ``model`` available: ``option`` is the argument that takes a local
    copy (None: the call that failed was the download itself), ``single_file`` whether it takes a .safetensors file."""
    if option is None:
        return "check the network connection (or HF_ENDPOINT, proxies) and try again"
    local = "a local folder or .safetensors file" if single_file else "a local folder"
    name = next((preset for preset, repo in PRESETS.items() if repo == model), model)
    return f"download it once with network access (`vip models download {name}`), or pass {local} as `{option}`"


def check_spec(spec: str, what: str = "model") -> str:
    """The hub id ``spec`` names (a preset expanded); a name that is no preset, hub id (owner/name) or path is
    refused here, before any network, with the presets listed."""
    repo_id = resolve_spec(spec)
    if "/" not in repo_id and not is_local(spec):
        raise ModelNotFoundError(
            f"{what} '{spec}' is not a preset, a hub id (owner/name) or a local path: presets are {', '.join(PRESETS)}"
        )
    return repo_id


# ------------------------------------------------------------------------------------------------ lookups


@dataclass(frozen=True)
class LocalModel:
    """A hub model whose files are all on disk: load it from ``folder`` with ``files.variant``."""

    repo_id: str
    folder: Path
    files: ModelFiles
    cache: Path


def _main_snapshot(cache: Path, repo_id: str) -> tuple[Path, list[str]] | None:
    """The snapshot ``refs/main`` points to in ``cache`` and the files present in it, as huggingface_hub's cache
    scan sees them (a snapshot with a link to a deleted blob is corrupt there, so it does not count)."""
    from huggingface_hub import scan_cache_dir

    if not cache.is_dir():
        return None
    try:
        info = scan_cache_dir(cache)
    except Exception:  # noqa: BLE001 - an unreadable cache holds nothing
        return None
    for repo in info.repos:
        if repo.repo_id == repo_id and repo.repo_type == "model" and "main" in repo.refs:
            revision = repo.refs["main"]
            folder = Path(revision.snapshot_path)
            return folder, sorted(Path(file.file_path).relative_to(folder).as_posix() for file in revision.files)
    return None


def _parts(folder: Path) -> list[str] | None:
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    return [key for key, value in index.items() if not key.startswith("_") and isinstance(value, list) and value[0]]


def _configs_only(files: ModelFiles) -> ModelFiles:
    keep = tuple(name for name in files.files if not name.endswith((".safetensors", ".bin")))
    return replace(files, files=keep)


def find_cached(repo_id: str, kind: str | None = None, *, configs_only: bool = False) -> LocalModel | None:
    """The model from the first cache that holds every file it needs; never touches the network.

    A table model needs the table's files; failing that (another tool's download, say fp32 pickles), or for
    any other id, whatever the rule of :mod:`vipcli_model.models.catalog` finds complete among the files present.
    """
    for cache in cache_dirs():
        snapshot = _main_snapshot(cache, repo_id)
        if snapshot is None:
            continue
        folder, present = snapshot
        known = MODEL_FILES.get(repo_id)
        candidates: list[ModelFiles] = [known] if known else []
        try:  # the rule over what is there: another tool's complete download counts too
            rule_kind = kind or (known.kind if known else detect_kind(present))
            candidates.append(select_files(rule_kind, present, _parts(folder)))
        except IncompleteRepository:
            pass
        for files in candidates:
            files = _configs_only(files) if configs_only else files
            if files.files and set(files.files) <= set(present):
                return LocalModel(repo_id, folder, replace(files, repo_id=repo_id), cache)
    return None


def _looked_in() -> str:
    return ", ".join(str(folder) for folder in cache_dirs())


# ------------------------------------------------------------------------------------------------ downloads


def _model_info(repo_id: str) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint()).model_info(repo_id, files_metadata=True, timeout=hub_timeout())


def plan_download(
    repo_id: str, kind: str | None = None, *, configs_only: bool = False, what: str = "model", provide: str = ""
) -> tuple[ModelFiles, str]:
    """Ask the hub which files ``repo_id`` has, and choose the ones vip needs: (files with sizes, commit).
    ``provide``: what a failure tells the user to do (default: check the network, this being the download)."""
    from huggingface_hub import hf_hub_download

    try:
        info = _model_info(repo_id)
        siblings = list(info.siblings or [])
        paths = [sibling.rfilename for sibling in siblings]
        sizes = {sibling.rfilename: sibling.size for sibling in siblings if sibling.size is not None}
        parts = None
        if repo_id not in MODEL_FILES and "model_index.json" in paths:
            index = hf_hub_download(
                repo_id,
                "model_index.json",
                revision=info.sha,
                cache_dir=str(cache_dir()),
                etag_timeout=hub_timeout(),
                endpoint=endpoint(),
            )
            parts = _parts(Path(index).parent)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise explain(exc, repo_id, what, provide=provide) from exc
    try:
        files = files_for(repo_id, kind, paths, parts)
    except IncompleteRepository as exc:
        raise ModelLoadError(f"{what} '{repo_id}' cannot be used by vip: {exc}") from exc
    files = _configs_only(files) if configs_only else files
    missing = [name for name in files.files if name not in paths]
    if missing:
        raise ModelNotFoundError(
            f"{what} '{repo_id}' on {endpoint()} has no file '{missing[0]}' (vip loads {len(files.files)} files "
            "from it): the repository changed; update vip, or pass a local copy as `model`"
        )
    return replace(files, repo_id=repo_id, sizes={name: sizes[name] for name in files.files if name in sizes}), info.sha


def download(
    repo_id: str,
    kind: str | None = None,
    *,
    what: str = "model",
    configs_only: bool = False,
    tqdm_class: Any = None,
    on_plan: Callable[[ModelFiles], None] | None = None,
    provide: str = "",
) -> LocalModel:
    """Download the files ``repo_id`` needs into :func:`cache_dir` (files already there are not fetched again).

    ``on_plan`` sees the files and their sizes before the first byte; ``tqdm_class`` draws the download's
    progress (None: huggingface_hub's default bars are silenced); ``provide``: as for :func:`plan_download`.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if offline():
        raise ModelNotFoundError(f"cannot download {what} '{repo_id}': HF_HUB_OFFLINE=1 forbids network access")
    files, _ = plan_download(repo_id, kind, configs_only=configs_only, what=what, provide=provide)
    if on_plan is not None:
        on_plan(files)
    if tqdm_class is None:
        disable_progress_bars()
    try:
        # revision "main": the library records which commit main was, so offline lookups find the snapshot
        folder = snapshot_download(
            repo_id,
            revision="main",
            allow_patterns=list(files.files),
            cache_dir=str(cache_dir()),
            endpoint=endpoint(),
            etag_timeout=hub_timeout(),
            tqdm_class=tqdm_class,
        )
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise explain(exc, repo_id, what, files, provide=provide) from exc
    finally:
        if tqdm_class is None:
            enable_progress_bars()
    return LocalModel(repo_id, Path(folder), files, cache_dir())


def ensure_model(
    spec: str,
    kind: str | None = None,
    *,
    what: str = "model",
    configs_only: bool = False,
    tqdm_class: Any = None,
    option: str | None = "model",
    single_file: bool = True,
) -> LocalModel:
    """A hub model's files on disk: from a cache (no network at all), else downloaded once. ``option``: the
    argument a local copy can be passed with instead (a .safetensors file too when ``single_file``), named in the
    error when it cannot be had."""
    repo_id = check_spec(spec, what)
    provide = how_to_provide(spec, option, single_file=single_file)
    check_requirements(repo_id, what)
    cached = find_cached(repo_id, kind, configs_only=configs_only)
    if cached is not None:
        return cached
    if offline():
        raise ModelNotFoundError(
            f"{what} '{repo_id}' is not in the local cache (looked in {_looked_in()}) and HF_HUB_OFFLINE=1 "
            f"forbids downloading it: {provide}"
        )
    return download(repo_id, kind, what=what, configs_only=configs_only, tqdm_class=tqdm_class, provide=provide)


def check_requirements(repo_id: str, what: str = "model") -> None:
    """Refuse, before any download, a table model whose loader needs a package that is not installed."""
    import importlib.util

    entry = MODEL_FILES.get(repo_id)
    missing = [name for name in (entry.requires if entry else ()) if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelLoadError(
            f"{what} '{repo_id}' needs {' and '.join(missing)}, which is not installed: "
            f"pip install 'vip-outpaint[qwen]' (or pip install {' '.join(missing)} matching your torch)"
        )


def download_url(url: str, target: Path, *, what: str, sha256_prefix: str | None = None) -> Path:
    """Fetch a file that does not live on the hub (FID Inception weights, ...): bounded wait, atomic write."""
    import hashlib
    import urllib.request

    if offline():
        raise ModelNotFoundError(f"{what} is not cached ({target}) and HF_HUB_OFFLINE=1 forbids downloading {url}")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=hub_timeout()) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                digest.update(block)
        if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix):
            raise ModelLoadError(f"{what} downloaded from {url} is corrupt (checksum mismatch): try again")
        os.replace(temp, target)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        reason = _network_reason(exc) or " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ModelNotFoundError(f"cannot download {what} from {url}: {reason}") from exc
    finally:
        Path(temp).unlink(missing_ok=True)
    return target


# ------------------------------------------------------------------------------------------------ errors


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _transport_errors() -> tuple[tuple[type[BaseException], ...], ...]:
    """(proxy, timeout, connection) failures of the HTTP clients in use: the standard library's and whichever of
    httpx2 / httpx (huggingface_hub 1.x and later) and requests (before) are installed."""
    proxy: list[type[BaseException]] = []
    timeout: list[type[BaseException]] = [TimeoutError, socket.timeout]
    connect: list[type[BaseException]] = [ConnectionError, urllib.error.URLError, socket.gaierror]
    for name in ("httpx2", "httpx"):
        if importlib.util.find_spec(name) is not None:
            client = __import__(name)
            proxy.append(client.ProxyError)
            timeout.append(client.TimeoutException)
            connect.append(client.NetworkError)
    if importlib.util.find_spec("requests") is not None:
        from requests import exceptions

        proxy.append(exceptions.ProxyError)
        timeout.append(exceptions.Timeout)
        connect.append(exceptions.ConnectionError)
    return tuple(proxy), tuple(timeout), tuple(connect)


def _proxy_for(url: str) -> str | None:
    """The proxy the HTTP clients use for ``url`` (the standard proxy variables), if any."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if urllib.request.proxy_bypass_environment(host):
        return None
    return urllib.request.getproxies_environment().get(urllib.parse.urlsplit(url).scheme)


def _network_reason(exc: BaseException) -> str | None:
    """A short reason when ``exc`` (or its cause) is a network failure, else None."""
    proxy, timeout, connect = _transport_errors()
    for error in _chain(exc):
        if isinstance(error, OfflineModeIsEnabled):
            return "HF_HUB_OFFLINE=1 forbids network access"
        if isinstance(error, proxy):
            used = _proxy_for(endpoint()) or "the configured proxy"
            return f"the proxy {used} refused or failed the connection (check HTTPS_PROXY / HTTP_PROXY)"
        if isinstance(error, timeout) or isinstance(getattr(error, "reason", None), TimeoutError):
            return f"no answer within {hub_timeout():g} s (VIP_HUB_TIMEOUT)"
        if isinstance(error, connect):
            text = " ".join(str(error).split())
            through = f" through the proxy {used}" if (used := _proxy_for(endpoint())) else ""
            return f"cannot connect{through} ({text[:100]})" if text else f"cannot connect{through}"
    return None


def explain(
    exc: BaseException, repo_id: str, what: str, files: ModelFiles | None = None, *, provide: str = ""
) -> ModelNotFoundError:
    """One line for a failed hub request: gated, missing, a missing file, proxy, timeout, no connection, HTTP error.
    ``provide``: how else to get the model (:func:`how_to_provide`); default: check the network and try again."""
    page = f"{endpoint()}/{repo_id}"
    known = MODEL_FILES.get(repo_id)
    for error in _chain(exc):
        if isinstance(error, GatedRepoError):  # before RepositoryNotFoundError: it is one
            licence = f" ({known.licence} licence)" if known and known.licence else ""
            return ModelNotFoundError(
                f"{what} '{repo_id}' is gated{licence}: accept its licence at {page} with your account, then log "
                "in with `hf auth login` or set HF_TOKEN"
            )
        if isinstance(error, RepositoryNotFoundError):
            presets = ", ".join(PRESETS)
            return ModelNotFoundError(
                f"{what} '{repo_id}' does not exist on {endpoint()} (or is private: log in with `hf auth login` or "
                f"set HF_TOKEN): check the spelling (presets: {presets}), or pass a local folder"
            )
        if isinstance(error, RevisionNotFoundError):
            return ModelNotFoundError(f"{what} '{repo_id}' has no 'main' revision on {endpoint()}")
        if isinstance(error, EntryNotFoundError) and not isinstance(error, LocalEntryNotFoundError):
            return ModelNotFoundError(
                f"{what} '{repo_id}' on {endpoint()} lacks a file vip needs ({' '.join(str(error).split())[:120]}): "
                "the repository changed; update vip, or pass a local copy"
            )
    reason = _network_reason(exc)
    if reason is not None:
        return ModelNotFoundError(
            f"cannot download {what} '{repo_id}' from {endpoint()}: {reason}; it is not in the local cache "
            f"(looked in {_looked_in()}): {provide or how_to_provide(repo_id, None)}"
        )
    for error in _chain(exc):
        status = getattr(error.response, "status_code", None) if isinstance(error, HfHubHTTPError) else None
        if isinstance(status, int) and status >= 400:
            return ModelNotFoundError(
                f"cannot download {what} '{repo_id}': {endpoint()} answered HTTP {status}"
                + (" (the hub may be down: try again later)" if status >= 500 else "")
            )
    first = " ".join(str(exc).split())[:200] or type(exc).__name__
    return ModelNotFoundError(f"cannot download {what} '{repo_id}' from {endpoint()}: {first}")


def load_with_errors(model: str, what: str, loader: Callable[[], T]) -> T:
    """Run ``loader`` (loading files already on disk) and turn its failures into one-line errors."""
    try:
        return loader()
    except (ModelNotFoundError, ModelLoadError):
        raise
    except Exception as exc:  # noqa: BLE001 - translated into a user message below
        if is_local(model) and not Path(model).expanduser().exists():
            raise ModelNotFoundError(f"{what} path '{model}' does not exist") from exc
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load {what} '{model}': {first_line}") from exc


__all__ = [
    "DEFAULT_CAPTIONER_MODEL",
    "DEFAULT_INPAINT_MODEL",
    "INPAINT",
    "LocalModel",
    "PRESETS",
    "cache_dir",
    "cache_dirs",
    "download",
    "download_url",
    "ensure_model",
    "explain",
    "find_cached",
    "load_with_errors",
]
