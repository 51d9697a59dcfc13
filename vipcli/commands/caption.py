"""`vip caption`: Center / Surrounding / Total prompts from a multimodal LLM, for outpainting or training."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..console import err_console, out_console, warn
from ..options import DeviceOpt

API_KEY_ENV = "VIP_CAPTIONER_API_KEY"


def caption(
    images: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.", show_default=False)],
    captioner: Annotated[Optional[str], typer.Option("--captioner", help="Transformers image-text-to-text model: preset (smolvlm-256m, smolvlm-500m, qwen2-vl-2b), hub id or local folder. Default: HuggingFaceTB/SmolVLM-256M-Instruct.", rich_help_panel="Captioner")] = None,
    captioner_url: Annotated[Optional[str], typer.Option("--captioner-url", help=f"Base URL of an OpenAI-compatible chat-completions server (llama.cpp, vLLM, Ollama), e.g. http://127.0.0.1:8080/v1. Needs --captioner-model. An API key, if the server wants one, is read from ${API_KEY_ENV}.", rich_help_panel="Captioner")] = None,
    captioner_model: Annotated[Optional[str], typer.Option("--captioner-model", help="The model name the --captioner-url server serves.", rich_help_panel="Captioner")] = None,
    captioner_timeout: Annotated[float, typer.Option("--captioner-timeout", help="Seconds to wait for each answer of a --captioner-url server.", rich_help_panel="Captioner")] = 60.0,
    device: DeviceOpt = "auto",
    keywords: Annotated[str, typer.Option("--keywords", "-k", help="Steer the Surrounding of a photo to extend: asked for, and put first in its text, e.g. 'snowy mountains'.", rich_help_panel="Prompts")] = "",
    for_training: Annotated[bool, typer.Option("--for-training", help="Training data: describe the center box (see --ratio) and the border around it separately.", rich_help_panel="Prompts")] = False,
    ratio: Annotated[Optional[str], typer.Option("--ratio", help="With --for-training: the full image is this much larger than its center box on each side (1 < ratio <= 8), e.g. 2x. Default: 2x.", rich_help_panel="Prompts")] = None,
    jsonl: Annotated[Optional[Path], typer.Option("--jsonl", help="Append one JSON object per image to this JSON Lines file (what `vip train` reads; image paths relative to the data folder). Images already in it are skipped, so an interrupted run resumes.", rich_help_panel="Output")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object per image on stdout (JSON Lines: image, center, surrounding, total, model, template_version, mode, truncated, cached; center_box with --for-training).", rich_help_panel="Output")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Ask the captioner again instead of reusing its cached answers.", rich_help_panel="Output")] = False,
) -> None:
    """Write Center / Surrounding / Total prompts for images with a multimodal LLM.

    For a photo to extend (the default), the photo is the Center and the Surrounding is what
    plausibly lies beyond its frame. With --for-training, the Center is the middle of the image
    and the Surrounding the border around it, written to a JSON Lines file for `vip train`.
    Each prompt is cut to the text encoder's 77 tokens at a sentence boundary (with a warning).
    Answers are cached by image content, model and template version: a repeated run is instant.

    Examples:

    \b
      vip caption photo.jpg
      vip caption photo.jpg --keywords "snowy mountains" --json
      vip caption data/train --for-training --ratio 2x \\
          --jsonl data/train/captions.jsonl
      vip caption photo.jpg --captioner qwen2-vl-2b --device cuda
      vip caption photo.jpg --captioner-url http://127.0.0.1:8080/v1 \\
          --captioner-model smolvlm
    """
    from vipcli_model.captioner import CaptionerSpec, caption_images, data_root_for, parse_ratio
    from vipcli_model.errors import InputError, OptionError
    from vipcli_model.image_io import expand_inputs

    spec = CaptionerSpec(
        model=captioner, url=captioner_url, server_model=captioner_model, device=device,
        timeout=captioner_timeout, api_key=os.environ.get(API_KEY_ENV) or None,
    )
    if ratio is not None and not for_training:
        raise OptionError("--ratio sets the center box of training images: it needs --for-training")
    if for_training and keywords.strip():
        raise OptionError(
            "--keywords steer the invented Surrounding of a photo to extend; with --for-training the "
            "Surrounding is described from the image itself: drop --keywords"
        )
    ratio_value = parse_ratio(ratio) if ratio is not None else 2.0

    paths, missing = expand_inputs(images)
    for spec_text, reason in missing:
        err_console.print(f"[red]skipped[/] {escape(spec_text)}: {escape(reason)}", highlight=False, soft_wrap=True)
    if not paths:
        raise InputError(f"no images to caption in {', '.join(images)}")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=err_console, transient=True, disable=not err_console.is_terminal,
    )
    loading_task: list[int] = []

    def on_loading(name: str) -> None:
        from ..console import quiet_third_party

        quiet_third_party()
        loading_task.append(progress.add_task(f"loading {name}", total=None))

    def on_item(item, done: int, total: int) -> None:
        while loading_task:
            progress.remove_task(loading_task.pop())
        _render(item, json_out)
        progress.update(images_task, completed=done)

    with progress:
        images_task = progress.add_task("captioning", total=len(paths))
        run = caption_images(
            paths, spec, for_training=for_training, ratio=ratio_value, keywords=keywords, jsonl=jsonl,
            data_root=data_root_for(paths, images), use_cache=not no_cache,
            on_item=on_item, on_loading=on_loading,
        )

    _summary(run, len(missing), jsonl)
    failed = run.failed + len(missing)
    if failed:
        raise typer.Exit(code=1 if run.failed < len(run.items) else InputError.exit_code)


def _render(item, json_out: bool) -> None:
    """One image's outcome: data on stdout, problems on stderr."""
    if item.status == "failed":
        message = item.error if str(item.path) in (item.error or "") else f"{item.path}: {item.error}"
        err_console.print(f"[red]failed[/] {escape(message)}", highlight=False, soft_wrap=True)
        return
    if item.status == "skipped":
        return
    result = item.result
    for name in result.truncated:
        warn(escape(f"{item.path}: {name.capitalize()} prompt cut to 77 tokens at a sentence boundary"))
    if json_out:
        record = {"image": str(item.path), **result.to_dict()}
        out_console.print(json.dumps(record, ensure_ascii=False), markup=False, emoji=False, highlight=False, soft_wrap=True)
        return
    from rich.table import Table
    from rich.text import Text

    source = "from cache" if result.cached else result.model
    table = Table(
        title=Text(str(item.path), style="bold"), caption=Text(f"{result.mode}, {source}"),
        show_header=False, title_justify="left", caption_justify="left", expand=False,
    )
    table.add_column("prompt", style="bold", no_wrap=True)
    table.add_column("text", overflow="fold")
    table.add_row("Center", Text(result.prompts.center))
    table.add_row("Surrounding", Text(result.prompts.surrounding))
    table.add_row("Total", Text(result.prompts.total))
    if result.center_box is not None:
        table.add_row("center box", ", ".join(str(value) for value in result.center_box))
    out_console.print(table)


def _summary(run, missing: int, jsonl: Optional[Path]) -> None:
    parts = [f"{run.count('captioned')} captioned", f"{run.count('cached')} from cache"]
    if jsonl is not None:
        parts.append(f"{run.count('skipped')} skipped (already in {escape(str(jsonl))})")
    failed = run.failed + missing
    if failed:
        parts.append(f"{failed} failed")
    colour = "red" if failed else "green"
    total = len(run.items) + missing
    err_console.print(f"[{colour}]{total} image(s):[/] " + ", ".join(parts), highlight=False, soft_wrap=True)
