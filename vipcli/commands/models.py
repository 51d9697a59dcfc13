"""`vip models`: list, download and locate model weights."""

from __future__ import annotations

from typing import Annotated

import typer

from ..console import download_bars, err_console, out_console, progress

app = typer.Typer(help="List, download and locate model weights (Hugging Face hub cache layout).", no_args_is_help=True)


def human_size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


@app.command("list")
def list_models() -> None:
    """Presets, where vip looks for models, and what is already cached (with sizes)."""
    from vipcli_model.models import hub
    from vipcli_model.models.offline import scan_caches

    cached = scan_caches()
    out_console.print("presets:", highlight=False)
    for name, repo in hub.PRESETS.items():
        here = [(folder, size) for folder, repo_id, size in cached if repo_id == repo]
        state = f"cached, {human_size(here[0][1])}" if here else "not cached"
        out_console.print(f"  {name:<14} {repo:<52} {state}", highlight=False)
    out_console.print("caches, in the order vip looks (downloads go to the first):", highlight=False)
    for folder in hub.cache_dirs():
        rows = [(repo_id, size) for cache, repo_id, size in cached if cache == folder]
        out_console.print(f"  {folder}", highlight=False)
        for repo_id, size in rows:
            out_console.print(f"    {repo_id:<60} {human_size(size):>10}", highlight=False)
        if not rows:
            out_console.print("    (no models)", highlight=False)


@app.command("download")
def download(
    model: Annotated[str, typer.Argument(help="Hub id or preset, e.g. sd15-inpaint, lcm-lora-sd15 or smolvlm-256m.")],
    fast: Annotated[
        bool,
        typer.Option("--fast", help="Also what `vip outpaint --fast` runs with MODEL: its LoRA and tiny autoencoder."),
    ] = False,
    captioner: Annotated[
        bool, typer.Option("--captioner", help="Also the default captioner (smolvlm-256m), which writes the prompts.")
    ] = False,
) -> None:
    """Download the files vip loads from a model now (otherwise they download on first use).

    With --fast and --captioner, everything `vip outpaint --fast` needs to run offline (HF_HUB_OFFLINE=1) is
    fetched in one go; the total size is printed before the first byte.
    """
    from vipcli_model.models import hub
    from vipcli_model.models.offline import prepare_models

    def show_plan(plan) -> None:
        total = sum(needed.download_size for needed in plan)
        fetching = [needed for needed in plan if needed.cached is None]
        if fetching:
            files = sum(len(needed.files.files) for needed in fetching)
            err_console.print(
                f"to fetch: {human_size(total)} in {files} files of {len(fetching)} model(s), from {hub.endpoint()} "
                f"into {hub.cache_dir()}",
                highlight=False,
            )
        for needed in plan:
            if needed.cached is not None:
                err_console.print(
                    f"{needed.repo_id} ({needed.what}): already cached ({len(needed.cached.files.files)} files in "
                    f"{needed.cached.cache})",
                    highlight=False,
                )
                continue
            err_console.print(
                f"fetching {len(needed.files.files)} files of {needed.repo_id} ({needed.what}, "
                f"{human_size(needed.download_size)})",
                highlight=False,
            )
            for name in needed.files.files:
                err_console.print(f"  {name:<60} {human_size(needed.files.sizes.get(name)):>10}", highlight=False)

    from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with progress(*columns) as display:
        local = prepare_models(
            model, fast=fast, captioner=captioner, on_plan=show_plan, tqdm_class=download_bars(display)
        )
    err_console.print(f"[green]ready[/] for offline use: {', '.join(copy.repo_id for copy in local)}", highlight=False)
    for copy in local:
        out_console.print(str(copy.folder), highlight=False)


@app.command("path")
def path(model: Annotated[str, typer.Argument(help="Hub id or preset.")]) -> None:
    """Print the local folder of a cached model (exit 4 when it is not cached)."""
    from vipcli_model.errors import ModelNotFoundError
    from vipcli_model.models import hub

    repo = hub.resolve_spec(model)
    cached = hub.find_cached(repo)
    if cached is None:
        looked = ", ".join(str(folder) for folder in hub.cache_dirs())
        raise ModelNotFoundError(
            f"'{repo}' is not in the local cache (looked in {looked}): `vip models download {model}` fetches it"
        )
    out_console.print(str(cached.folder), highlight=False)
