"""`vip models`: list, download and locate model weights."""

from __future__ import annotations

from typing import Annotated

import typer

from ..console import err_console, out_console

app = typer.Typer(help="List, download and locate model weights (Hugging Face hub cache layout).", no_args_is_help=True)

# Files a diffusers inpainting pipeline needs; skips original-format checkpoints and the safety checker.
DIFFUSERS_PATTERNS = [
    "model_index.json",
    "scheduler/*",
    "tokenizer/*",
    "text_encoder/*.json",
    "text_encoder/*.safetensors",
    "unet/*.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/*.json",
    "vae/diffusion_pytorch_model.safetensors",
]


@app.command("list")
def list_models() -> None:
    """Presets and what is already in the cache."""
    from vipcli_model import hub

    out_console.print("presets:", highlight=False)
    for name, repo in hub.PRESETS.items():
        out_console.print(f"  {name:<14} {repo}", highlight=False)
    out_console.print(f"cache: {hub.cache_dir()}", highlight=False)
    try:
        from huggingface_hub import scan_cache_dir

        cached = scan_cache_dir(hub.cache_dir())
        for repo in sorted(cached.repos, key=lambda r: r.repo_id):
            out_console.print(f"  {repo.repo_id:<55} {repo.size_on_disk_str:>9}", highlight=False)
    except Exception:  # noqa: BLE001 - an empty or missing cache is not an error
        out_console.print("  (empty)", highlight=False)


@app.command("download")
def download(
    model: Annotated[str, typer.Argument(help="Hub id or preset, e.g. sd15-inpaint or smolvlm-256m.")],
) -> None:
    """Download a model into the vip cache now (otherwise it downloads on first use)."""
    from huggingface_hub import snapshot_download

    from vipcli_model import hub

    repo = hub.resolve_spec(model)
    if not hub.offline() and not hub.hub_reachable():
        from vipcli_model.errors import ModelNotFoundError

        raise ModelNotFoundError(f"cannot download '{repo}': the Hugging Face hub cannot be reached from this machine")
    is_diffusers = repo in (hub.PRESETS[key] for key in ("sd15-inpaint", "sd2-inpaint", "sdxl-inpaint"))
    path = hub.load_with_errors(
        repo,
        "model",
        lambda: snapshot_download(
            repo,
            cache_dir=str(hub.cache_dir()),
            allow_patterns=DIFFUSERS_PATTERNS if is_diffusers else None,
        ),
    )
    err_console.print(f"[green]downloaded[/] {repo}", highlight=False)
    out_console.print(str(path), highlight=False)


@app.command("path")
def path(
    model: Annotated[str, typer.Argument(help="Hub id or preset.")],
) -> None:
    """Print the local folder of a cached model (exit 4 when it is not cached)."""
    from huggingface_hub import snapshot_download

    from vipcli_model import hub
    from vipcli_model.errors import ModelNotFoundError

    repo = hub.resolve_spec(model)
    try:
        folder = snapshot_download(repo, cache_dir=str(hub.cache_dir()), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelNotFoundError(f"'{repo}' is not in the cache ({hub.cache_dir()}): {hub.how_to_provide(repo)}") from exc
    out_console.print(str(folder), highlight=False)
