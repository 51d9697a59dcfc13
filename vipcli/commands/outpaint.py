"""`vip outpaint`: extend photos outward, steered by region prompts. Parse, build the job, one library call, render."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vipcli_model.config import BlendConfig

from ..options import (
    AdapterOpt,
    CaptionerModelOpt,
    CaptionerOpt,
    CaptionerUrlOpt,
    ControlNetOpt,
    DaskOpt,
    DeepCacheOpt,
    DeviceOpt,
    DtypeOpt,
    GuidanceOpt,
    JsonOpt,
    KeywordsOpt,
    ModelOpt,
    NoCtsOpt,
    RatioOpt,
    RegionStrengthOpt,
    SchedulerOpt,
    SeedOpt,
    SkipExistingOpt,
    StepsOpt,
    guidance_interval_option,
)
from ..render import run_and_render

GEOMETRY, PROMPTS, GENERATION, MODEL, OUTPUT = "Geometry", "Prompts", "Generation", "Model and device", "Output"
DETAIL = "Detail pass"


def outpaint(
    images: Annotated[
        list[str],
        typer.Argument(help="Image files, folders (searched recursively) or glob patterns.", show_default=False),
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
    ratio: RatioOpt = None,
    aspect: Annotated[
        Optional[str],
        typer.Option(
            "--aspect", help="Grow the smaller dimension just enough to reach W:H, e.g. 16:9.", rich_help_panel=GEOMETRY
        ),
    ] = None,
    size: Annotated[
        Optional[str],
        typer.Option("--size", help="Exact canvas WxH in pixels, at least the image's size.", rich_help_panel=GEOMETRY),
    ] = None,
    left: Annotated[
        Optional[str],
        typer.Option("--left", help="Add N pixels (or N% of the width) on the left.", rich_help_panel=GEOMETRY),
    ] = None,
    right: Annotated[
        Optional[str],
        typer.Option("--right", help="Add N pixels (or N% of the width) on the right.", rich_help_panel=GEOMETRY),
    ] = None,
    top: Annotated[
        Optional[str],
        typer.Option("--top", help="Add N pixels (or N% of the height) on top.", rich_help_panel=GEOMETRY),
    ] = None,
    bottom: Annotated[
        Optional[str],
        typer.Option("--bottom", help="Add N pixels (or N% of the height) at the bottom.", rich_help_panel=GEOMETRY),
    ] = None,
    align: Annotated[
        Optional[str],
        typer.Option(
            "--align",
            help="Where the photo sits on a --ratio/--aspect/--size canvas: center, left, right, top, bottom, "
            "top-left, top-right, bottom-left, bottom-right.",
            rich_help_panel=GEOMETRY,
        ),
    ] = None,
    mask: Annotated[
        Optional[str],
        typer.Option(
            "--mask",
            help="Extra region to generate (white = generate), the size of the image or of the canvas.",
            rich_help_panel=GEOMETRY,
        ),
    ] = None,
    prompt: Annotated[
        Optional[str],
        typer.Option(
            "--prompt",
            "-p",
            help="The Total prompt (the whole picture). Default: 'Center: <center>; Surrounding: <surrounding>'.",
            rich_help_panel=PROMPTS,
        ),
    ] = None,
    center: Annotated[
        str, typer.Option("--center", help="What the photo shows (the known Center).", rich_help_panel=PROMPTS)
    ] = "",
    surrounding: Annotated[
        str,
        typer.Option(
            "--surrounding", help="What should appear around it (the generated Surrounding).", rich_help_panel=PROMPTS
        ),
    ] = "",
    keywords: KeywordsOpt = "",
    negative: Annotated[
        str, typer.Option("--negative", help="Negative prompt, paired with every branch.", rich_help_panel=PROMPTS)
    ] = "",
    no_caption: Annotated[
        bool,
        typer.Option(
            "--no-caption",
            help="With no prompt given, run unconditionally instead of asking the captioner.",
            rich_help_panel=PROMPTS,
        ),
    ] = False,
    captioner: CaptionerOpt = None,
    captioner_url: CaptionerUrlOpt = None,
    captioner_model: CaptionerModelOpt = None,
    no_cts: NoCtsOpt = False,
    region_strength: RegionStrengthOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    guidance_interval: Annotated[
        Optional[str], guidance_interval_option("the model family's (SD-1.x/2.x: 1,5.42)")
    ] = None,
    deep_cache: DeepCacheOpt = None,
    seed: SeedOpt = None,
    scheduler: SchedulerOpt = None,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast",
            help="Few-step preset: the model family's LCM-LoRA fused into the UNet (SD-1.5: lcm-lora-sdv1-5, SDXL: "
            "lcm-lora-sdxl), 4 steps, guidance off, lcm scheduler, tiny autoencoder (TAESD). "
            "--steps/--guidance/--scheduler/--vae still win.",
            rich_help_panel=GENERATION,
        ),
    ] = False,
    fast_lora: Annotated[
        Optional[str],
        typer.Option(
            "--fast-lora",
            help="The distilled LoRA --fast uses (hub id, folder or file). Default: the model family's "
            "(latent-consistency/lcm-lora-sdv1-5 or latent-consistency/lcm-lora-sdxl).",
            rich_help_panel=GENERATION,
        ),
    ] = None,
    num_images: Annotated[
        int, typer.Option("--num-images", "-n", help="Results per input image.", rich_help_panel=GENERATION)
    ] = 1,
    feather: Annotated[
        int,
        typer.Option(
            "--feather",
            help="Blend the seam over N pixels on the known side; 0 keeps every original pixel byte-identical.",
            rich_help_panel=GENERATION,
        ),
    ] = BlendConfig.feather,
    color_match: Annotated[
        bool,
        typer.Option(
            "--color-match",
            help="Correct the generated area's colour drift, measured on the known pixels.",
            rich_help_panel=GENERATION,
        ),
    ] = False,
    detail: Annotated[
        str,
        typer.Option(
            "--detail",
            help="Refine the generated area in tiles at full resolution after generation, so it is as sharp as the "
            "photo: auto (on a GPU when the canvas has at least 4x the pixels of the model's working size; on the "
            "CPU it only says what 'on' would cost), on, off.",
            rich_help_panel=DETAIL,
        ),
    ] = "auto",
    detail_strength: Annotated[
        Optional[float],
        typer.Option(
            "--detail-strength",
            help="Denoising strength of each tile, more than 0 and at most 1: low keeps the generated layout, high "
            "invents more detail. Default: 0.35.",
            rich_help_panel=DETAIL,
            show_default=False,
        ),
    ] = None,
    detail_steps: Annotated[
        Optional[int],
        typer.Option(
            "--detail-steps",
            help="Denoising steps run per tile. Default: --steps x --detail-strength (at least 1).",
            rich_help_panel=DETAIL,
            show_default=False,
        ),
    ] = None,
    tile_size: Annotated[
        Optional[int],
        typer.Option(
            "--tile-size",
            help="Tile side in pixels, a multiple of 8 (16 for FLUX). Default: the model's working resolution (512 "
            "SD-1.5, 1024 SDXL / FLUX).",
            rich_help_panel=DETAIL,
            show_default=False,
        ),
    ] = None,
    tile_overlap: Annotated[
        Optional[int],
        typer.Option(
            "--tile-overlap",
            help="Pixels neighbouring tiles share and blend, at most half the tile. Default: an eighth of the tile.",
            rich_help_panel=DETAIL,
            show_default=False,
        ),
    ] = None,
    model: ModelOpt = None,
    model_config: Annotated[
        Optional[str],
        typer.Option(
            "--model-config",
            help=(
                "Diffusers config (hub id or folder) for a single-file --model checkpoint "
                "(with --controlnet: a text-to-image SDXL model's)."
            ),
            rich_help_panel=MODEL,
        ),
    ] = None,
    controlnet: ControlNetOpt = None,
    adapter: AdapterOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    cpu_offload: Annotated[
        bool,
        typer.Option(
            "--cpu-offload",
            help="Keep submodels on the CPU until they run (CUDA, low VRAM); the same as --memory model-offload.",
            rich_help_panel=MODEL,
        ),
    ] = False,
    memory: Annotated[
        Optional[str],
        typer.Option(
            "--memory",
            help="GPU memory plan: auto (default: chosen from the free GPU memory and the model's size), full, "
            "model-offload, 8bit or 4bit (FLUX Fill's transformer quantized; needs bitsandbytes), group-offload, "
            "sequential-offload. Recorded in the metadata; on a CPU nothing changes.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    vae_tiling: Annotated[
        bool, typer.Option("--vae-tiling", help="Encode/decode in tiles (less memory).", rich_help_panel=MODEL)
    ] = False,
    vae: Annotated[
        Optional[str],
        typer.Option(
            "--vae",
            help="Autoencoder: full (the model's own), tiny (TAESD: about 10x faster on CPU, less fine detail; "
            "downloads ~10 MB once), or an AutoencoderTiny hub id or folder. Default: full; tiny with --fast.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    compile_unet: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the UNet: the first image waits for compilation (minutes), later steps run faster. For "
            "long batches on a GPU.",
            rich_help_panel=MODEL,
        ),
    ] = False,
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
    preview: Annotated[
        bool,
        typer.Option(
            "--preview",
            help="Only write the canvas and mask (<stem>_canvas.png, <stem>_mask.png); loads no model.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Extend images outward with Stable Diffusion inpainting steered by Center / Surrounding / Total prompts.

    Results are named <stem>_outpaint.png beside each input or under -o DIR (x.png and x.jpg in one
    folder: x_png_outpaint.png and x_jpg_outpaint.png). Defaults: the sd15-inpaint model
    (stable-diffusion-v1-5/stable-diffusion-inpainting); for SD-1.x/2.x 16 steps, dpm++,
    guidance 7.5 at noise levels 1 to 5.42 (SDXL: 25 steps, every step), a random seed (recorded
    in the output). --json prints one object per written file (path + metadata).
    On a GPU a large canvas then gets the detail pass (--detail): the new area refined in tiles at full
    resolution.
    Every output is checked before any model loads. A failed input is reported in one line and the
    others go on; the exit status is the failures' shared code (3 input, 5 output, 2 options), else 1.

    Examples:

    \b
      vip outpaint photo.jpg --ratio 2x --keywords "snowy mountains"
      vip outpaint shots/ --aspect 16:9 -o out/
      vip outpaint photo.jpg --left 100 --top 10% --center "a red barn" \\
          --surrounding "snowy field" --seed 1
      vip outpaint photo.jpg --ratio 1.5x --preview  # geometry, no model
      vip outpaint photo.jpg --ratio 2x --fast       # LCM-LoRA, 4 steps
      vip outpaint photo.jpg --ratio 2x --detail on  # sharper new area
      # one process per GPU:
      accelerate launch --num_processes 4 -m vipcli.main \\
          outpaint shots/ -o out/
      vip outpaint shots/ -o out/ --skip-existing  # resume
      vip outpaint shots/ -o out/ --dask tcp://10.0.0.5:8786  # a cluster
    """
    from vipcli_model.config import (
        DetailConfig,
        ExpansionConfig,
        GenerationConfig,
        ModelConfig,
        PromptConfig,
        parse_guidance_interval,
    )
    from vipcli_model.outpainting.run import OutpaintJob, outpaint_images

    # unset stays unset (None): the model family fills it, its fast preset's with --fast
    given = lambda **values: {key: value for key, value in values.items() if value is not None}  # noqa: E731
    job = OutpaintJob(
        expansion=ExpansionConfig(
            **given(
                ratio=ratio,
                aspect=aspect,
                size=size,
                left=left,
                right=right,
                top=top,
                bottom=bottom,
                align=align,
                mask=mask,
            )
        ),
        prompts=PromptConfig(
            total=prompt,
            center=center,
            surrounding=surrounding,
            keywords=keywords,
            caption=not no_caption,
            captioner=captioner,
            captioner_url=captioner_url,
            captioner_model=captioner_model,
        ),
        generation=GenerationConfig(
            **given(
                steps=steps,
                guidance=guidance,
                seed=seed,
                scheduler=scheduler,
                num_images=num_images,
                negative=negative,
                cts=not no_cts,
                region_strength=region_strength,
                deep_cache=deep_cache,
                guidance_interval=parse_guidance_interval(guidance_interval) if guidance_interval else None,
            )
        ),
        blend=BlendConfig(feather=feather, color_match=color_match),
        detail=DetailConfig(
            **given(
                mode=detail, strength=detail_strength, steps=detail_steps, tile_size=tile_size, overlap=tile_overlap
            )
        ),
        model=ModelConfig(
            **given(
                model=model,
                model_config=model_config,
                controlnet=controlnet,
                adapter=adapter,
                device=device,
                dtype=dtype,
                cpu_offload=cpu_offload,
                memory=memory,
                vae_tiling=vae_tiling,
                compile=compile_unet,
                vae=vae,
                fast=fast,
                fast_lora=fast_lora,
            )
        ),
        output=output,
        overwrite=overwrite,
        skip_existing=skip_existing,
        preview=preview,
    )
    run_and_render(
        images,
        job,
        json_out,
        dask=dask,
        run_locally=lambda view: outpaint_images(
            images, job, **view.callbacks, on_tile=view.on_tile, on_warning=view.on_warning, on_note=view.on_note
        ),
    )
