"""`vip edit`: change photos by instruction with an InstructPix2Pix model.

Parse, build the job, one library call, render.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..options import (
    SD_SCHEDULERS,
    CaptionerModelOpt,
    CaptionerOpt,
    CaptionerUrlOpt,
    DaskOpt,
    DeviceOpt,
    DtypeOpt,
    GuidanceOpt,
    ImageGuidanceOpt,
    JsonOpt,
    SeedOpt,
    SkipExistingOpt,
    StepsOpt,
)
from ..render import run_and_render

GENERATION, MODEL, OUTPUT, EXPAND = "Generation", "Model and device", "Output", "Instruction"


def edit(
    images: Annotated[
        list[str],
        typer.Argument(help="Image files, folders (searched recursively) or glob patterns.", show_default=False),
    ],
    instruction: Annotated[
        str, typer.Argument(help='What to change, e.g. "add a red boat on the lake".', show_default=False)
    ],
    output: Annotated[
        Optional[str],
        typer.Option(
            "--output",
            "-o",
            help="Output folder (inputs found in folders keep their relative path below it), or a file name "
            "(.png/.jpg/.webp) for a single result. Default: next to each input.",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    expand: Annotated[
        bool,
        typer.Option(
            "--expand",
            help="Have the captioner look at each photo and rewrite the instruction into a concrete, visual one (77 "
            "CLIP tokens at most); the output records both. This is MGIE's expressive-instruction step only, not "
            "its learned visual tokens or edit head.",
            rich_help_panel=EXPAND,
        ),
    ] = False,
    captioner: CaptionerOpt = None,
    captioner_url: CaptionerUrlOpt = None,
    captioner_model: CaptionerModelOpt = None,
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt.", rich_help_panel=EXPAND)] = "",
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    image_guidance: ImageGuidanceOpt = None,
    seed: SeedOpt = None,
    scheduler: Annotated[
        Optional[str],
        typer.Option("--scheduler", help=f"{SD_SCHEDULERS}. Default: the model's own.", rich_help_panel=GENERATION),
    ] = None,
    num_images: Annotated[
        int, typer.Option("--num-images", "-n", help="Results per input image.", rich_help_panel=GENERATION)
    ] = 1,
    mask: Annotated[
        Optional[str],
        typer.Option(
            "--mask",
            help="Edit only here (white = may change, the image's size); every pixel outside is the original, byte for "
            "byte.",
            rich_help_panel=GENERATION,
        ),
    ] = None,
    threshold: Annotated[
        Optional[int],
        typer.Option(
            "--threshold",
            help="0-255: a pixel is edited when the model's result differs this much from the input's VAE round trip; "
            "the rest stays the original at full resolution. 0: take the whole result. Default: 24.",
            rich_help_panel=GENERATION,
        ),
    ] = None,
    feather: Annotated[
        Optional[int],
        typer.Option(
            "--feather",
            help="Soften the edges of the edit over N pixels (never outside --mask). Default: 8.",
            rich_help_panel=GENERATION,
        ),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            help="InstructPix2Pix model: preset (pbi-general-mb, the default; pbi-general, pbi-add, pbi-add-mb), hub "
            "id (e.g. timbrooks/instruct-pix2pix) or a diffusers folder.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace existing output files (a run never overwrites its own results).",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    skip_existing: SkipExistingOpt = False,
    dask: DaskOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Edit images by instruction with an InstructPix2Pix model (Paint by Inpaint's by default).

    The model works at 512 px; only pixels it changed come from its result, the rest stay the original at full
    resolution. Results are <stem>_edit.png beside each input or under -o DIR. Defaults: the
    paint-by-inpaint/general-finetuned-mb model, 50 steps, guidance 7, image guidance 1.5, the model's scheduler,
    a random seed (recorded).
    There is no --fast: no distilled InstructPix2Pix model is supported yet.

    Examples:

    \b
      vip edit photo.jpg "add a red boat on the lake"
      vip edit shots/ "make it winter" -o edited/ --seed 1
      vip edit photo.jpg "add a dog" --model pbi-add --mask where.png \\
          --feather 0
      # the captioner rewrites the instruction first (MGIE-style):
      vip edit photo.jpg "make it healthier" --expand
    """
    from vipcli_model.config import ModelConfig, PromptConfig
    from vipcli_model.editing.editor import DEFAULT_EDIT_MODEL, EditConfig
    from vipcli_model.editing.run import EditJob, edit_images

    given = {
        key: value
        for key, value in dict(
            steps=steps,
            guidance=guidance,
            image_guidance=image_guidance,
            seed=seed,
            scheduler=scheduler,
            threshold=threshold,
            feather=feather,
        ).items()
        if value is not None
    }
    job = EditJob(
        edit=EditConfig(
            instruction=instruction, negative=negative, num_images=num_images, mask=mask, expand=expand, **given
        ),
        model=ModelConfig(model=model or DEFAULT_EDIT_MODEL, device=device, dtype=dtype),
        captioner=PromptConfig(captioner=captioner, captioner_url=captioner_url, captioner_model=captioner_model),
        output=output,
        overwrite=overwrite,
        skip_existing=skip_existing,
    )
    run_and_render(
        images,
        job,
        json_out,
        dask=dask,
        run_locally=lambda view: edit_images(images, job, **view.callbacks),
        wrote_suffix=_instruction_used,
    )


def _instruction_used(file) -> str:
    """After the first written file of an input: the instruction the model got, when --expand rewrote it."""
    expanded = file.metadata.get("edit_prompt") != file.metadata.get("instruction")
    return f" (instruction: {file.metadata['edit_prompt']})" if expanded and file.metadata.get("index") == 0 else ""
