"""`vip eval`: the field's outpainting benchmark: generate and score, or score existing outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..console import quiet_third_party
from ..options import (
    AdapterOpt,
    CaptionerModelOpt,
    CaptionerOpt,
    CaptionerUrlOpt,
    ControlNetOpt,
    DeepCacheOpt,
    DeviceOpt,
    DtypeOpt,
    GuidanceOpt,
    JsonOpt,
    ModelOpt,
    NoCtsOpt,
    RatioOpt,
    RegionStrengthOpt,
    SchedulerOpt,
    SeedOpt,
    StepsOpt,
    guidance_interval_option,
)
from ..render import StageProgress, plain, print_eval_report, with_name


def eval_(
    data_dir: Annotated[
        Optional[str],
        typer.Argument(
            help="Folder of test images (searched recursively, sorted). Omit with --pred/--gt.", show_default=False
        ),
    ] = None,
    out: Annotated[
        Optional[str],
        typer.Option(
            "--out",
            "-o",
            help="RUN_DIR: ground truth, outputs, results.json, per_image.csv. A second run with the same settings "
            "resumes. With --pred: where results go (default: the --pred folder).",
            rich_help_panel="Run",
        ),
    ] = None,
    protocol: Annotated[
        Optional[str],
        typer.Option(
            "--protocol",
            help="standard (192x192, center 128x128 known: 2.25x area), 5x (center 86x86), 11.7x (center 56x56), or "
            "custom (--size, --ratio). Default: standard.",
            rich_help_panel="Run",
        ),
    ] = None,
    size: Annotated[
        Optional[str],
        typer.Option("--size", help="custom protocol: ground-truth size WxH (default 192x192).", rich_help_panel="Run"),
    ] = None,
    ratio: RatioOpt = None,
    prompts: Annotated[
        Optional[list[str]],
        typer.Option(
            "--prompts",
            help="Prompt setting, repeatable, each scored separately: unconditional (empty prompts), captioner (an "
            'MLLM describes the known center), or a JSON Lines file ({"image": "rel/path.png", "center": ..., '
            '"surrounding": ...}). Default: unconditional. With --pred: a file giving the Surrounding prompts for '
            "the CLIP score.",
            rich_help_panel="Run",
        ),
    ] = None,
    limit: Annotated[
        Optional[int],
        typer.Option("--limit", help="Only the first N images (sorted), for a quick look.", rich_help_panel="Run"),
    ] = None,
    pred: Annotated[
        Optional[str],
        typer.Option(
            "--pred",
            help="Score this folder of outputs (another tool's) against --gt, paired by file name without suffix; "
            "generates nothing.",
            rich_help_panel="Score existing outputs",
        ),
    ] = None,
    gt: Annotated[
        Optional[str],
        typer.Option("--gt", help="Ground-truth folder for --pred.", rich_help_panel="Score existing outputs"),
    ] = None,
    seed: SeedOpt = 0,
    steps: StepsOpt = 50,
    guidance: GuidanceOpt = None,
    guidance_interval: Annotated[Optional[str], guidance_interval_option("every step")] = None,
    deep_cache: DeepCacheOpt = None,
    scheduler: SchedulerOpt = None,
    captioner: CaptionerOpt = None,
    captioner_url: CaptionerUrlOpt = None,
    captioner_model: CaptionerModelOpt = None,
    no_cts: NoCtsOpt = False,
    region_strength: RegionStrengthOpt = None,
    model: ModelOpt = None,
    controlnet: ControlNetOpt = None,
    adapter: AdapterOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    feature_weights: Annotated[
        Optional[str],
        typer.Option(
            "--feature-weights",
            help="FID Inception weights pt_inception-2015-12-05-6726825d.pth (pytorch-fid's). Default: cached, else "
            "downloaded once.",
            rich_help_panel="Metrics",
        ),
    ] = None,
    clip_model: Annotated[
        Optional[str],
        typer.Option(
            "--clip-model",
            help="CLIP model (hub id or folder) for the CLIP score of the generated surrounding against its "
            "Surrounding prompt. Default: no CLIP score.",
            rich_help_panel="Metrics",
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", help="Images per forward pass of the metric networks.", rich_help_panel="Metrics"),
    ] = 32,
    json_out: JsonOpt = False,
) -> None:
    """Benchmark outpainting as published papers do: FID, KID, IS, PSNR, SSIM, LPIPS, CLIP score.

    Each test image is resized to 192x192, its center is given to the model, and the output is
    compared with the original (QueryOTR / PQDiff / VIP protocol). FID uses pytorch-fid's Inception
    features, so numbers are comparable with published tables (same test set, same image count).
    Known pixels are always pasted back; the unconditional and prompted settings are reported
    separately. Exit status 1 when some images were skipped (results are still written).
    The custom protocol takes --size (default 192x192) and --ratio (as in `vip outpaint`). Image i
    (in sorted order) uses seed + i; the paper uses 50 steps and guidance 7.5. Guidance and scheduler
    default to the model family's (7.5 and dpm++ for SD / SDXL, 30 and flow-match for FLUX Fill). The
    captioner options are for --prompts captioner. --json prints results.json instead of the table.

    Examples:

      vip eval scenery/test --model sd15-inpaint --out runs/sd15 --steps 50

      vip eval scenery/test --out runs/vip --adapter my-adapter \\
          --prompts unconditional --prompts captioner

      vip eval --pred other_tool/outputs --gt runs/sd15/gt --json

      # one process per GPU:
      accelerate launch --num_processes 4 -m vipcli.main \\
          eval scenery/test --out runs/sd15
    """
    from vipcli_model.errors import OptionError
    from vipcli_model.evaluation.protocol import resolve_protocol

    chosen = resolve_protocol(protocol, size=size, ratio=ratio)
    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size} is out of range: use 1 or more")
    from vipcli_model.config import GenerationConfig, ModelConfig, PromptConfig, parse_guidance_interval
    from vipcli_model.evaluation.runner import (  # imports torch: after the cheap checks
        EvalConfig,
        ScoreConfig,
        parse_prompt_settings,
        run_eval,
        score_pairs,
    )

    scoring = ScoreConfig(feature_weights=feature_weights, clip_model=clip_model, device=device, batch_size=batch_size)

    if pred is not None or gt is not None:  # score another tool's outputs: nothing is generated
        generating = {
            "--model": model,
            "--controlnet": controlnet,
            "--adapter": adapter,
            "--captioner": captioner,
            "--captioner-url": captioner_url,
        }
        prompts_file = _score_only_prompts(data_dir, pred, gt, prompts, generating)
        if scoring.clip_model:
            quiet_third_party()
        with StageProgress() as progress:
            report = score_pairs(
                Path(pred),
                Path(gt),
                protocol=chosen,
                scoring=scoring,
                out_dir=Path(out) if out else None,
                prompts_file=prompts_file,
                progress=progress,
            )
    else:
        if data_dir is None:
            raise OptionError("give DATA_DIR (a folder of test images), or --pred and --gt to score existing outputs")
        if out is None:
            raise OptionError("--out RUN_DIR is required: it keeps the ground truth, the outputs and the results")
        config = EvalConfig(
            data_dir=Path(data_dir),
            out_dir=Path(out),
            protocol=chosen,
            settings=parse_prompt_settings(prompts),
            limit=limit,
            scoring=scoring,
            model=ModelConfig(
                **({"model": model} if model else {}),
                controlnet=controlnet,
                adapter=adapter,
                device=device,
                dtype=dtype,
            ),
            generation=GenerationConfig(
                seed=seed,
                steps=steps,
                guidance=guidance,
                scheduler=scheduler,
                cts=not no_cts,
                region_strength=region_strength,
                deep_cache=deep_cache or 0,
                guidance_interval=parse_guidance_interval(guidance_interval) if guidance_interval else None,
            ),
            prompts=PromptConfig(captioner=captioner, captioner_url=captioner_url, captioner_model=captioner_model),
        )
        config.check()  # before the third-party libraries load
        quiet_third_party()
        with StageProgress() as progress:
            report = run_eval(
                config, progress=progress, on_skip=lambda image, reason: plain(f"skipped {with_name(image, reason)}")
            )
        if report is None:  # not the main process of a multi-GPU run
            return
        generation = report.results["generation"]
        plain(
            f"generated {generation['generated']}, reused {generation['reused']} "
            f"(already in {config.out_dir}), {generation['images_listed']} image(s) listed"
        )

    if print_eval_report(report, json_out):  # some images were skipped
        raise typer.Exit(code=1)


def _score_only_prompts(
    data_dir: str | None, pred: str | None, gt: str | None, prompts: list[str] | None, generating: dict[str, object]
) -> Path | None:
    """The options of scoring existing outputs checked together; the prompts file for the CLIP score, if given.
    ``generating``: the options that only generation uses, by flag."""
    from vipcli_model.errors import OptionError

    if pred is None or gt is None:
        raise OptionError("--pred and --gt go together: the outputs to score and their ground truth")
    if data_dir is not None:
        raise OptionError(
            f"DATA_DIR '{data_dir}' and --pred/--gt are two modes: generate from DATA_DIR, or score --pred against --gt"
        )
    extra = [flag for flag, value in generating.items() if value]
    if extra:
        raise OptionError(f"{', '.join(extra)} have no effect with --pred/--gt (nothing is generated)")
    if prompts and len(prompts) > 1:
        raise OptionError(
            "with --pred/--gt, --prompts takes one JSON Lines file (the Surrounding prompts for the CLIP score)"
        )
    prompts_file = Path(prompts[0]) if prompts else None
    if prompts_file is not None and not prompts_file.is_file():
        raise OptionError(f"--prompts {prompts_file}: with --pred/--gt, give a JSON Lines prompts file")
    return prompts_file
