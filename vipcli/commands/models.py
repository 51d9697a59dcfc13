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

    cached = hub.scan_caches()
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
) -> None:
    """Download the files vip loads from a model now (otherwise they download on first use)."""
    from vipcli_model.models import hub

    repo = hub.resolve_spec(model)
    cached = hub.find_cached(repo)
    if cached is not None:
        err_console.print(
            f"{repo}: already cached ({len(cached.files.files)} files in {cached.cache})", highlight=False
        )
        out_console.print(str(cached.folder), highlight=False)
        return

    def show_plan(files) -> None:
        err_console.print(
            f"fetching {len(files.files)} files of {repo} ({human_size(files.total_size)}) from {hub.endpoint()} "
            f"into {hub.cache_dir()}",
            highlight=False,
        )
        for name in files.files:
            err_console.print(f"  {name:<60} {human_size(files.sizes.get(name)):>10}", highlight=False)

    from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with progress(*columns) as display:
        local = hub.download(repo, what="model", tqdm_class=download_bars(display), on_plan=show_plan)
    err_console.print(f"[green]downloaded[/] {repo}", highlight=False)
    out_console.print(str(local.folder), highlight=False)


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
            f"'{repo}' is not in the local cache (looked in {looked}): {hub.how_to_provide(model)}"
        )
    out_console.print(str(cached.folder), highlight=False)
