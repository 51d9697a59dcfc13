"""What is cached, and getting ready for offline use: every model a workflow needs, fetched in one call.

``prepare_models("sd15-inpaint", fast=True, captioner=True)`` fetches the inpainting model, the LoRA and tiny
autoencoder its family's fast preset runs (decided from the model's configs by ``families.resolve_model``, as a run
decides them) and the default captioner; ``on_plan`` sees every model's files and sizes before the first weight byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vipcli_model.errors import ModelNotFoundError
from vipcli_model.models import hub
from vipcli_model.models.catalog import CONTROLNET, INPAINT, LORA, TINY_VAE, VLM, ModelFiles


@dataclass(frozen=True)
class NeededModel:
    """One model a workflow needs: cached already (``cached``), or ``files`` (with sizes) to fetch."""

    repo_id: str
    what: str  # how messages name it: "inpainting model", "fast LoRA", "tiny autoencoder", "captioner"
    kind: str | None  # the catalog kind that chooses its files (None: recognised from the repository)
    files: ModelFiles | None = None  # what a download fetches; None when cached
    cached: hub.LocalModel | None = None

    @property
    def download_size(self) -> int:
        """Bytes still to fetch (0 when cached; files of unknown size count 0)."""
        return 0 if self.cached is not None or self.files is None else self.files.total_size or 0


def workflow_models(model: str, *, fast: bool = False, captioner: bool = False) -> list[tuple[str, str, str | None]]:
    """(hub id, what, kind) of each model ``model`` needs for a run with ``fast`` and the default captioner.

    With ``fast`` the model's configs are fetched (a few kB) to know its family, the way a run decides.
    """
    from vipcli_model.config import ModelConfig
    from vipcli_model.models.families import family_of_folder, pairing_of, read_configs, resolve_model

    repo_id = hub.check_spec(model)
    needed: list[tuple[str, str, str | None]] = [(repo_id, "inpainting model" if fast else "model", None)]
    pairing = pairing_of(ModelConfig(model=model))
    if pairing is not None:  # a pairing preset: its ControlNet too
        needed.append((hub.resolve_spec(pairing.controlnet), "controlnet", CONTROLNET))
    if fast:
        needed[0] = (repo_id, "inpainting model", INPAINT)
        configs = hub.ensure_model(model, INPAINT, what="inpainting model", configs_only=True, option=None)
        family = family_of_folder(configs.folder, controlnet=pairing is not None)
        settings = resolve_model(ModelConfig(model=model, fast=True), family, read_configs(configs.folder)[1])
        needed.append((hub.resolve_spec(settings.fast_lora), "fast LoRA", LORA))
        if settings.vae == "tiny" and family.tiny_vae:
            needed.append((family.tiny_vae, "tiny autoencoder", TINY_VAE))
    if captioner:
        needed.append((hub.DEFAULT_CAPTIONER_MODEL, "captioner", VLM))
    return list(dict.fromkeys(needed))


def plan_models(needed: list[tuple[str, str, str | None]]) -> list[NeededModel]:
    """Which of ``needed`` are cached, and the files (with sizes, asked of the hub) of the others."""
    plan = []
    for repo_id, what, kind in needed:
        hub.check_requirements(repo_id, what)
        cached = hub.find_cached(repo_id, kind)
        if cached is not None:
            plan.append(NeededModel(repo_id, what, kind, cached=cached))
            continue
        if hub.offline():
            raise ModelNotFoundError(f"cannot download {what} '{repo_id}': HF_HUB_OFFLINE=1 forbids network access")
        files, _ = hub.plan_download(repo_id, kind, what=what)
        plan.append(NeededModel(repo_id, what, kind, files=files))
    return plan


def prepare_models(
    model: str,
    *,
    fast: bool = False,
    captioner: bool = False,
    on_plan: Callable[[list[NeededModel]], None] | None = None,
    tqdm_class: Any = None,
) -> list[hub.LocalModel]:
    """Fetch every model a workflow needs (:func:`workflow_models`) that is not cached yet; their local copies.

    ``on_plan`` sees the whole plan (cached or not, with sizes) before any weight is fetched.
    """
    plan = plan_models(workflow_models(model, fast=fast, captioner=captioner))
    if on_plan is not None:
        on_plan(plan)
    return [
        needed.cached or hub.download(needed.repo_id, needed.kind, what=needed.what, tqdm_class=tqdm_class)
        for needed in plan
    ]


def check_available(
    spec: str, kind: str | None = None, *, what: str = "model", option: str = "model", single_file: bool = True
) -> str:
    """Whether a run could have the model ``spec``, found as a run finds it but loading and fetching no weights:
    "local" (a path), "cached", or "hub" (the hub lists every file it needs); else ``ModelNotFoundError``."""
    if Path(spec).expanduser().exists():
        return "local"
    if hub.is_local(spec):
        raise ModelNotFoundError(f"{what} path '{spec}' does not exist")
    repo_id = hub.check_spec(spec, what)
    hub.check_requirements(repo_id, what)
    if hub.find_cached(repo_id, kind) is not None:
        return "cached"
    provide = hub.how_to_provide(spec, option, single_file=single_file)
    if hub.offline():
        looked = ", ".join(str(folder) for folder in hub.cache_dirs())
        raise ModelNotFoundError(
            f"{what} '{repo_id}' is not in the local cache (looked in {looked}) and HF_HUB_OFFLINE=1 forbids "
            f"downloading it: {provide}"
        )
    hub.plan_download(repo_id, kind, what=what, provide=provide)
    return "hub"


def scan_caches() -> list[tuple[Path, str, int]]:
    """(cache, repo id, bytes on disk) of every model in every cache vip reads."""
    from huggingface_hub import scan_cache_dir

    rows: list[tuple[Path, str, int]] = []
    for folder in hub.cache_dirs():
        if not folder.is_dir():
            continue
        try:
            info = scan_cache_dir(folder)
        except Exception:  # noqa: BLE001 - an unreadable cache lists nothing
            continue
        rows += [(folder, repo.repo_id, repo.size_on_disk) for repo in info.repos if repo.repo_type == "model"]
    return sorted(rows, key=lambda row: (str(row[0]), row[1]))
