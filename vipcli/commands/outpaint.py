"""`vip outpaint`: extend photos outward, steered by region prompts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..console import err_console, out_console, warn
from ..options import (
    AdapterOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    NoCtsOpt,
    RegionStrengthOpt,
)

SAVE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def outpaint(
    images: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.", show_default=False)],
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Output folder, or a file name (.png/.jpg/.webp) for a single input. Default: next to each input.")] = None,
    # --- expansion
    ratio: Annotated[Optional[str], typer.Option("--ratio", help="Scale the canvas by this factor on each side, e.g. 1.5x, 2x.", rich_help_panel="Expansion")] = None,
    aspect: Annotated[Optional[str], typer.Option("--aspect", help="Grow the smaller dimension just enough to reach W:H, e.g. 16:9.", rich_help_panel="Expansion")] = None,
    size: Annotated[Optional[str], typer.Option("--size", help="Exact canvas WxH in pixels, at least the image's size.", rich_help_panel="Expansion")] = None,
    left: Annotated[Optional[str], typer.Option("--left", help="Add N pixels (or N% of the width) on the left.", rich_help_panel="Expansion")] = None,
    right: Annotated[Optional[str], typer.Option("--right", help="Add N pixels (or N% of the width) on the right.", rich_help_panel="Expansion")] = None,
    top: Annotated[Optional[str], typer.Option("--top", help="Add N pixels (or N% of the height) on top.", rich_help_panel="Expansion")] = None,
    bottom: Annotated[Optional[str], typer.Option("--bottom", help="Add N pixels (or N% of the height) at the bottom.", rich_help_panel="Expansion")] = None,
    align: Annotated[Optional[str], typer.Option("--align", help="Where the photo sits on a --ratio/--aspect/--size canvas: center, left, right, top, bottom, top-left, top-right, bottom-left, bottom-right.", rich_help_panel="Expansion")] = None,
    mask: Annotated[Optional[str], typer.Option("--mask", help="Extra region to generate (white = generate), the size of the image or of the canvas.", rich_help_panel="Expansion")] = None,
    # --- prompts
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="The Total prompt (the whole picture). Default: 'Center: <center>; Surrounding: <surrounding>'.", rich_help_panel="Prompts")] = None,
    center: Annotated[str, typer.Option("--center", help="What the photo shows (the known Center).", rich_help_panel="Prompts")] = "",
    surrounding: Annotated[str, typer.Option("--surrounding", help="What should appear around it (the generated Surrounding).", rich_help_panel="Prompts")] = "",
    keywords: Annotated[str, typer.Option("--keywords", "-k", help="Steer the Surrounding: put first in its text, e.g. 'snowy mountains'.", rich_help_panel="Prompts")] = "",
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt, paired with every branch.", rich_help_panel="Prompts")] = "",
    no_caption: Annotated[bool, typer.Option("--no-caption", help="With no prompt given, run unconditionally instead of asking the captioner.", rich_help_panel="Prompts")] = False,
    captioner: Annotated[Optional[str], typer.Option("--captioner", help="Captioner used when no prompt is given: preset (smolvlm-256m, smolvlm-500m, qwen2-vl-2b), hub id or folder. Default: SmolVLM-256M-Instruct.", rich_help_panel="Prompts")] = None,
    captioner_url: Annotated[Optional[str], typer.Option("--captioner-url", help="OpenAI-compatible chat-completions server for captions (llama.cpp, vLLM, Ollama), e.g. http://127.0.0.1:8080/v1.", rich_help_panel="Prompts")] = None,
    captioner_model: Annotated[Optional[str], typer.Option("--captioner-model", help="Model name on the --captioner-url server.", rich_help_panel="Prompts")] = None,
    no_cts: NoCtsOpt = False,
    region_strength: RegionStrengthOpt = None,
    # --- generation
    steps: Annotated[Optional[int], typer.Option("--steps", help="Denoising steps. Default: 25, or 6 with --fast.", rich_help_panel="Generation")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale (1 or less: off). Default: 7.5, or 1 with --fast.", rich_help_panel="Generation")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed; the same seed gives the same output. Default: random, recorded in the output.", rich_help_panel="Generation")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="dpm++, dpm++-karras, ddim, euler, euler-a, unipc, pndm, lcm. Default: dpm++, or lcm with --fast.", rich_help_panel="Generation")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="Few-step preset: LCM-LoRA fused into the UNet, 6 steps, guidance off (SD-1.5 models; about 8x fewer UNet passes).", rich_help_panel="Generation")] = False,
    fast_lora: Annotated[Optional[str], typer.Option("--fast-lora", help="The distilled LoRA --fast uses (hub id, folder or file). Default: latent-consistency/lcm-lora-sdv1-5.", rich_help_panel="Generation")] = None,
    num_images: Annotated[int, typer.Option("--num-images", "-n", help="Results per input image.", rich_help_panel="Generation")] = 1,
    # --- blending
    feather: Annotated[int, typer.Option("--feather", help="Blend the seam over N pixels on the known side; 0 keeps every original pixel byte-identical.", rich_help_panel="Blending")] = 8,
    color_match: Annotated[bool, typer.Option("--color-match", help="Correct the generated area's colour drift, measured on the known pixels.", rich_help_panel="Blending")] = False,
    # --- model and device
    model: ModelOpt = None,
    model_config: Annotated[Optional[str], typer.Option("--model-config", help="Diffusers config (hub id or folder) for a single-file --model checkpoint.", rich_help_panel="Model")] = None,
    adapter: AdapterOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    cpu_offload: Annotated[bool, typer.Option("--cpu-offload", help="Keep submodels on the CPU until they run (CUDA, low VRAM).", rich_help_panel="Model")] = False,
    vae_tiling: Annotated[bool, typer.Option("--vae-tiling", help="Encode/decode in tiles (less memory).", rich_help_panel="Model")] = False,
    compile_unet: Annotated[bool, typer.Option("--compile", help="torch.compile the UNet: the first image waits for compilation (minutes), later steps run faster. For long batches on a GPU.", rich_help_panel="Model")] = False,
    # --- output
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.", rich_help_panel="Output")] = False,
    preview: Annotated[bool, typer.Option("--preview", help="Only write the canvas and mask (<stem>_canvas.png, <stem>_mask.png); loads no model.", rich_help_panel="Output")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object per written image on stdout (path + metadata).", rich_help_panel="Output")] = False,
) -> None:
    """Extend images outward with Stable Diffusion inpainting steered by Center / Surrounding / Total prompts.

    Examples:

      vip outpaint photo.jpg --ratio 2x --keywords "snowy mountains"

      vip outpaint shots/ --aspect 16:9 -o out/

      vip outpaint photo.jpg --left 100 --top 10% --center "a red barn" --surrounding "snowy field" --seed 1

      vip outpaint photo.jpg --ratio 1.5x --preview     # check the geometry, instantly
    """
    from vipcli_model.canvas import check_expansion_options, validate_expansion_values
    from vipcli_model.config import (
        DEFAULT_FAST_LORA,
        FAST_GUIDANCE,
        FAST_SCHEDULER,
        FAST_STEPS,
        BlendConfig,
        ExpansionConfig,
        GenerationConfig,
        ModelConfig,
    )
    from vipcli_model.errors import OptionError, OutputError, VipError
    from vipcli_model.hub import DEFAULT_INPAINT_MODEL
    from vipcli_model.image_io import expand_inputs, load_image, load_mask, save_image

    expansion = ExpansionConfig(
        ratio=ratio, aspect=aspect, size=size, left=left, right=right, top=top, bottom=bottom,
        align=align or "center", mask=mask,
    )
    check_expansion_options(
        ratio=ratio, aspect=aspect, size=size, sides={"left": left, "right": right, "top": top, "bottom": bottom}, align=align
    )
    validate_expansion_values(
        ratio=ratio, aspect=aspect, size=size, sides={"left": left, "right": right, "top": top, "bottom": bottom}
    )
    if not any((ratio, aspect, size, left, right, top, bottom, mask)):
        raise OptionError("say how to expand: --ratio, --aspect, --size, --left/--right/--top/--bottom, or --mask")
    if fast_lora and not fast:
        raise OptionError("--fast-lora needs --fast")
    steps = steps if steps is not None else (FAST_STEPS if fast else 25)
    guidance = guidance if guidance is not None else (FAST_GUIDANCE if fast else 7.5)
    scheduler = scheduler or (FAST_SCHEDULER if fast else "dpm++")
    generation = GenerationConfig(
        steps=steps, guidance=guidance, seed=seed, scheduler=scheduler, num_images=num_images,
        negative=negative, cts=not no_cts, region_strength=region_strength,
    )
    blend = BlendConfig(feather=feather, color_match=color_match)
    if no_caption and (captioner or captioner_url or captioner_model):
        raise OptionError("--no-caption cannot be combined with --captioner/--captioner-url/--captioner-model")
    if captioner_url and captioner:
        raise OptionError("--captioner-url and --captioner cannot be combined: pick a server or a local model")
    if bool(captioner_url) != bool(captioner_model):
        raise OptionError("--captioner-url and --captioner-model go together (the server and its model name)")
    user_gave_prompts = bool((prompt or "").strip() or center.strip() or surrounding.strip())
    want_caption = not no_caption and not user_gave_prompts
    if no_cts and region_strength is not None:
        raise OptionError("--region-strength has no effect with --no-cts")

    from vipcli_model.outpaint import check_generation

    check_generation(generation, blend)
    model_config = ModelConfig(
        model=model or DEFAULT_INPAINT_MODEL, model_config=model_config, adapter=adapter,
        device=device, dtype=dtype, cpu_offload=cpu_offload, vae_tiling=vae_tiling, compile=compile_unet,
        fast_lora=(fast_lora or DEFAULT_FAST_LORA) if fast else None,
    )
    if not preview:
        from vipcli_model.loading import check_model_config

        check_model_config(model_config)
    paths, missing = expand_inputs(images)
    failures: list[tuple[str, str]] = [(spec, f"{spec}: {reason}") for spec, reason in missing]
    for spec, reason in missing:
        err_console.print(f"[red]skipped[/] {spec}: {reason}", highlight=False)
    single_file_output = _single_file_output(output, len(paths), num_images, preview)

    def target(path: Path, suffix_name: str, index: int | None = None) -> Path:
        if single_file_output is not None:
            return single_file_output
        folder = Path(output) if output else path.parent
        name = f"{path.stem}_{suffix_name}" + (f"_{index + 1}" if index is not None else "") + ".png"
        return folder / name

    def outputs_for(path: Path) -> list[Path]:
        if preview:
            return [target(path, "canvas"), target(path, "mask")]
        if num_images == 1:
            return [target(path, "outpaint")]
        return [target(path, "outpaint", i) for i in range(num_images)]

    extra_mask = load_mask(mask) if mask else None
    written: list[Path] = []
    outpainter = None
    caption_state: dict = {"captioner": None, "loaded": not want_caption or preview, "cache": None}
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=err_console, transient=True, disable=not err_console.is_terminal,
    )
    with progress:
        images_task = progress.add_task("images", total=len(paths))
        for path in paths:
            try:
                destinations = outputs_for(path)
                for destination in destinations:
                    if destination.exists() and not overwrite:
                        raise OutputError(f"{destination} exists; pass --overwrite to replace it")
                loaded = load_image(path)
                for note in loaded.notes:
                    warn(f"{path}: {note}")
                if preview:
                    from vipcli_model.outpaint import prepare_geometry

                    native = 512
                    geometry = prepare_geometry(loaded.image, expansion, native, alpha=loaded.alpha, extra_mask=extra_mask)
                    meta = {"source": str(path), "expansion": expansion.to_dict(), "canvas_size": list(geometry.plan.canvas_size), "image_box": list(geometry.plan.image_box)}
                    save_image(geometry.canvas, destinations[0], metadata=meta, overwrite=overwrite)
                    save_image(geometry.mask, destinations[1], metadata=meta, overwrite=overwrite)
                    _report(destinations, meta, json_out)
                    written.extend(destinations)
                    progress.advance(images_task)
                    continue
                if outpainter is None:
                    outpainter = _load_outpainter(model_config, progress)
                if not caption_state["loaded"]:
                    caption_state.update(
                        _load_captioner(captioner, captioner_url, captioner_model, device, progress), loaded=True
                    )
                from vipcli_model.outpaint import choose_prompts

                prompts, prompt_info = choose_prompts(
                    loaded.image, total=prompt, center=center, surrounding=surrounding, keywords=keywords,
                    captioner=caption_state["captioner"], cache=caption_state["cache"],
                    tokenizer=outpainter.pipe.tokenizer,
                )
                if prompt_info.get("truncated"):
                    warn(f"{path}: captioner text cut to fit 77 tokens: {', '.join(prompt_info['truncated'])}")
                steps_task = progress.add_task(f"  {path.name}", total=steps)
                result = outpainter.outpaint(
                    loaded.image, prompts, expansion=expansion, generation=generation, blend=blend,
                    alpha=loaded.alpha, extra_mask=extra_mask, source=str(path), prompt_info=prompt_info,
                    step_callback=lambda done, total: progress.update(steps_task, completed=done, total=total),
                )
                progress.remove_task(steps_task)
                from vipcli_model.image_io import format_parameters
                from vipcli_model.outpaint import parameters_text

                total_prompt, settings = parameters_text(result)
                for index, (image, destination) in enumerate(zip(result.images, destinations)):
                    meta = dict(result.metadata, index=index)
                    save_image(
                        image, destination, metadata=meta,
                        parameters=format_parameters(total_prompt, generation.negative, settings),
                        overwrite=overwrite,
                    )
                    _report([destination], meta, json_out)
                    written.append(destination)
            except VipError as exc:
                if _is_fatal(exc):
                    raise
                message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
                failures.append((str(path), message))
                err_console.print(f"[red]failed[/] {message}", highlight=False)
            except Exception as exc:  # noqa: BLE001 - one broken image must not stop a batch
                if os.environ.get("VIP_DEBUG", "") not in ("", "0"):
                    raise
                failures.append((str(path), f"{path}: internal error {type(exc).__name__}: {exc}"))
                err_console.print(f"[red]failed[/] {path}: internal error {type(exc).__name__}: {exc} (VIP_DEBUG=1 for details)", highlight=False)
            progress.advance(images_task)

    total = len(paths) + len(missing)
    if failures:
        err_console.print(f"[bold]{len(written)} written, {len(failures)} of {total} input(s) failed:[/]", highlight=False)
        for _spec, message in failures:
            err_console.print(f"  {message}", highlight=False)
        raise typer.Exit(code=1 if written else 3)
    if not json_out:
        err_console.print(f"[green]done:[/] {len(written)} file(s) written", highlight=False)


def _load_captioner(model: str | None, url: str | None, server_model: str | None, device: str, progress) -> dict:
    """Load the captioner once. The default one may be missing (offline): then warn and go unconditional."""
    from vipcli_model.captioner import CaptionCache, load_captioner
    from vipcli_model.errors import VipError

    explicit = bool(model or url)
    task = progress.add_task(f"loading captioner {url or model or 'default'}", total=None)
    try:
        captioner = load_captioner(model, url=url, server_model=server_model, device=device)
    except VipError as exc:
        if explicit:
            raise
        warn(f"no captioner, running without prompts ({exc}); give prompts or pass --no-caption to silence this")
        return {"captioner": None, "cache": None}
    finally:
        progress.remove_task(task)
    return {"captioner": captioner, "cache": CaptionCache()}


def _single_file_output(output: str | None, count: int, num_images: int, preview: bool) -> Path | None:
    from vipcli_model.errors import OptionError

    if output is None:
        return None
    path = Path(output)
    if path.suffix.lower() in SAVE_SUFFIXES and not path.is_dir():
        if count > 1 or num_images > 1 or preview:
            raise OptionError(
                f"-o {output} names one file, but this run writes several: pass a folder instead"
            )
        return path
    if path.suffix and not path.is_dir():
        raise OptionError(f"-o {output}: unsupported image type '{path.suffix}' (use .png, .jpg or .webp, or a folder)")
    return None


def _load_outpainter(config, progress):
    from vipcli_model.outpaint import Outpainter

    from ..console import quiet_third_party

    quiet_third_party()
    task = progress.add_task(f"loading {config.model}", total=None)
    try:
        return Outpainter(config)
    finally:
        progress.remove_task(task)


def _is_fatal(exc: Exception) -> bool:
    """Errors that concern the whole run (model, adapter, options), not one image."""
    from vipcli_model.errors import ModelLoadError, ModelNotFoundError

    return isinstance(exc, (ModelNotFoundError, ModelLoadError))


def _report(paths: list[Path], metadata: dict, json_out: bool) -> None:
    for path in paths:
        if json_out:
            out_console.print_json(json.dumps({"path": str(path), **metadata}), indent=None)
        else:
            err_console.print(f"[green]wrote[/] {path}", highlight=False)
