"""`vip caption`: Center / Surrounding / Total prompts from a multimodal LLM, for outpainting or training."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..console import download_bars, err_console, out_console, progress, quiet_third_party, warn
from ..options import (
    CaptionerModelOpt,
    CaptionerOpt,
    CaptionerUrlOpt,
    DaskOpt,
    DeviceOpt,
    JsonOpt,
    KeywordsOpt,
    RatioOpt,
    flag_message,
)

API_KEY_ENV = "VIP_CAPTIONER_API_KEY"


def caption(
    images: Annotated[
        list[str],
        typer.Argument(help="Image files, folders (searched recursively) or glob patterns.", show_default=False),
    ],
    captioner: CaptionerOpt = None,
    captioner_url: CaptionerUrlOpt = None,
    captioner_model: CaptionerModelOpt = None,
    captioner_timeout: Annotated[
        float,
        typer.Option(
            "--captioner-timeout",
            help="Seconds to wait for each answer of a --captioner-url server.",
            rich_help_panel="Prompts",
        ),
    ] = 60.0,
    device: DeviceOpt = "auto",
    keywords: KeywordsOpt = "",
    for_training: Annotated[
        bool,
        typer.Option(
            "--for-training",
            help="Training data: describe the center box (see --ratio) and the border around it separately.",
            rich_help_panel="Prompts",
        ),
    ] = False,
    ratio: RatioOpt = None,
    jsonl: Annotated[
        Optional[Path],
        typer.Option(
            "--jsonl",
            help="Append one JSON object per image to this JSON Lines file (what `vip train` reads; image paths "
            "relative to the data folder). Images already in it are skipped, so an interrupted run resumes.",
            rich_help_panel="Output",
        ),
    ] = None,
    json_out: JsonOpt = False,
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache",
            help="Ask the captioner again instead of reusing its cached answers.",
            rich_help_panel="Output",
        ),
    ] = False,
    dask: DaskOpt = None,
) -> None:
    """Write Center / Surrounding / Total prompts for images with a multimodal LLM.

    For a photo to extend (the default), the photo is the Center and the Surrounding is what
    plausibly lies beyond its frame. With --for-training, the Center is the middle of the image
    and the Surrounding the border around it, written to a JSON Lines file for `vip train`.
    Each prompt is cut to the text encoder's 77 tokens at a sentence boundary (with a warning).
    Answers are cached by image content, model and template version: a repeated run is instant.
    With --for-training, --ratio (1 < ratio <= 8, default 2x) sets the center box. A --captioner-url
    server that wants an API key reads it from $VIP_CAPTIONER_API_KEY. --json prints one object per
    image (image, center, surrounding, total, model, template_version, mode, truncated, cached;
    center_box with --for-training). A failed image is reported in one line and the others go on;
    the exit status is the failures' shared code (3 unreadable image, 6 captioner), else 1.

    Examples:

    \b
      vip caption photo.jpg
      vip caption photo.jpg --keywords "snowy mountains" --json
      vip caption data/train --for-training --ratio 2x \\
          --jsonl data/train/captions.jsonl
      vip caption photo.jpg --captioner qwen2-vl-2b --device cuda
      vip caption photo.jpg --captioner-url http://127.0.0.1:8080/v1 \\
          --captioner-model smolvlm
      vip caption data/train --for-training \\
          --jsonl data/train/captions.jsonl --dask tcp://10.0.0.5:8786
    """
    from vipcli_model.captioning.captioner import CaptionerSpec, caption_images, data_root_for, parse_ratio
    from vipcli_model.errors import InputError, OptionError, batch_exit_code
    from vipcli_model.images.io import expand_inputs

    spec = CaptionerSpec(
        model=captioner,
        url=captioner_url,
        server_model=captioner_model,
        device=device,
        timeout=captioner_timeout,
        api_key=os.environ.get(API_KEY_ENV) or None,
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

    display = progress()
    loading_task: list[int] = []

    def on_loading(name: str) -> None:
        quiet_third_party()
        loading_task.append(display.add_task(f"loading {name}", total=None))

    def on_item(item, done: int, total: int) -> None:
        while loading_task:
            display.remove_task(loading_task.pop())
        _render(item, json_out)
        display.update(images_task, completed=done)

    with display:
        images_task = display.add_task("captioning", total=len(paths))
        options = dict(for_training=for_training, ratio=ratio_value, keywords=keywords, jsonl=jsonl)
        options.update(data_root=data_root_for(paths, images), use_cache=not no_cache, on_item=on_item)
        if dask:  # the same run, each worker captioning with its own copy of the captioner
            from vipcli_model.distributed import caption_on_dask

            run = caption_on_dask(paths, spec, scheduler=dask, **options)
        else:
            options.update(on_loading=on_loading, download_progress=download_bars(display))
            run = caption_images(paths, spec, **options)

    _summary(run, len(missing), jsonl)
    codes = [item.exit_code for item in run.items if item.status == "failed"] + [InputError.exit_code] * len(missing)
    if codes:  # the code the failures share (other images may have succeeded), else 1
        raise typer.Exit(code=batch_exit_code(codes))


def _render(item, json_out: bool) -> None:
    """One image's outcome: data on stdout, problems on stderr."""
    if item.status == "failed":
        error = flag_message(item.error or "", "caption")
        message = error if str(item.path) in error else f"{item.path}: {error}"
        err_console.print(f"[red]failed[/] {escape(message)}", highlight=False, soft_wrap=True)
        return
    if item.status == "skipped":
        return
    result = item.result
    for name in result.truncated:
        warn(escape(f"{item.path}: {name.capitalize()} prompt cut to 77 tokens at a sentence boundary"))
    if json_out:
        record = {"image": str(item.path), **result.to_dict()}
        out_console.print(
            json.dumps(record, ensure_ascii=False), markup=False, emoji=False, highlight=False, soft_wrap=True
        )
        return
    from rich.table import Table
    from rich.text import Text

    purpose = "outpainting" if result.mode == "outpaint" else "training"
    written = "cached answer of" if result.cached else "written by"
    table = Table(
        title=Text(str(item.path), style="bold"),
        caption=Text(f"prompts for {purpose}, {written} {result.model}"),
        show_header=False,
        title_justify="left",
        caption_justify="left",
        expand=False,
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
