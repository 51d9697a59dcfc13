"""`vip eval`: the field's outpainting benchmark: generate and score, or score existing outputs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..console import err_console, out_console, quiet_third_party, warn
from ..options import AdapterOpt, DeviceOpt, DtypeOpt, ModelOpt, NoCtsOpt, RegionStrengthOpt


def eval_(
    data_dir: Annotated[Optional[str], typer.Argument(help="Folder of test images (searched recursively, sorted). Omit with --pred/--gt.", show_default=False)] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="RUN_DIR: ground truth, outputs, results.json, per_image.csv. A second run with the same settings resumes. With --pred: where results go (default: the --pred folder).", rich_help_panel="Run")] = None,
    protocol: Annotated[Optional[str], typer.Option("--protocol", help="standard (192x192, center 128x128 known: 2.25x area), 5x (center 86x86), 11.7x (center 56x56), or custom (--size, --ratio). Default: standard.", rich_help_panel="Run")] = None,
    size: Annotated[Optional[str], typer.Option("--size", help="custom protocol: ground-truth size WxH (default 192x192).", rich_help_panel="Run")] = None,
    ratio: Annotated[Optional[str], typer.Option("--ratio", help="custom protocol: per-side factor, as in `vip outpaint --ratio` (1.5x = 2.25x area).", rich_help_panel="Run")] = None,
    prompts: Annotated[Optional[list[str]], typer.Option("--prompts", help="Prompt setting, repeatable, each scored separately: unconditional (empty prompts), captioner (an MLLM describes the known center), or a JSON Lines file ({\"image\": \"rel/path.png\", \"center\": ..., \"surrounding\": ...}). Default: unconditional. With --pred: a file giving the Surrounding prompts for the CLIP score.", rich_help_panel="Run")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N images (sorted), for a quick look.", rich_help_panel="Run")] = None,
    # --- scoring existing outputs
    pred: Annotated[Optional[str], typer.Option("--pred", help="Score this folder of outputs (another tool's) against --gt, paired by file name without suffix; generates nothing.", rich_help_panel="Score existing outputs")] = None,
    gt: Annotated[Optional[str], typer.Option("--gt", help="Ground-truth folder for --pred.", rich_help_panel="Score existing outputs")] = None,
    # --- generation
    seed: Annotated[int, typer.Option("--seed", help="Base seed: image i (in sorted order) uses seed + i.", rich_help_panel="Generation")] = 0,
    steps: Annotated[int, typer.Option("--steps", help="Denoising steps (the paper: 50).", rich_help_panel="Generation")] = 50,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale (the paper: 7.5).", rich_help_panel="Generation")] = 7.5,
    scheduler: Annotated[str, typer.Option("--scheduler", help="dpm++, dpm++-karras, ddim, euler, euler-a, unipc, pndm, lcm.", rich_help_panel="Generation")] = "dpm++",
    captioner: Annotated[Optional[str], typer.Option("--captioner", help="captioner setting: transformers model (preset, hub id or folder; default SmolVLM-256M-Instruct).", rich_help_panel="Generation")] = None,
    captioner_url: Annotated[Optional[str], typer.Option("--captioner-url", help="captioner setting: an OpenAI-compatible server instead, e.g. http://127.0.0.1:8080/v1.", rich_help_panel="Generation")] = None,
    captioner_model: Annotated[Optional[str], typer.Option("--captioner-model", help="The model name the --captioner-url server serves.", rich_help_panel="Generation")] = None,
    no_cts: NoCtsOpt = False,
    region_strength: RegionStrengthOpt = None,
    # --- model
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    # --- metrics
    feature_weights: Annotated[Optional[str], typer.Option("--feature-weights", help="FID Inception weights pt_inception-2015-12-05-6726825d.pth (pytorch-fid's). Default: cached, else downloaded once.", rich_help_panel="Metrics")] = None,
    clip_model: Annotated[Optional[str], typer.Option("--clip-model", help="CLIP model (hub id or folder) for the CLIP score of the generated surrounding against its Surrounding prompt. Default: no CLIP score.", rich_help_panel="Metrics")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass of the metric networks.", rich_help_panel="Metrics")] = 32,
    json_out: Annotated[bool, typer.Option("--json", help="Print results.json on stdout instead of the table.", rich_help_panel="Output")] = False,
) -> None:
    """Benchmark outpainting as published papers do: FID, KID, IS, PSNR, SSIM, LPIPS, CLIP score.

    Each test image is resized to 192x192, its center is given to the model, and the output is
    compared with the original (QueryOTR / PQDiff / VIP protocol). FID uses pytorch-fid's Inception
    features, so numbers are comparable with published tables (same test set, same image count).
    Known pixels are always pasted back; the unconditional and prompted settings are reported
    separately. Exit status 1 when some images were skipped (results are still written).

    Examples:

      vip eval scenery/test --model sd15-inpaint --out runs/sd15 --steps 50

      vip eval scenery/test --out runs/vip --adapter my-adapter --prompts unconditional --prompts captioner

      vip eval --pred other_tool/outputs --gt runs/sd15/gt --json

      accelerate launch --num_processes 4 -m vipcli.main eval scenery/test --out runs/sd15   # one process per GPU
    """
    from vipcli_model.errors import OptionError
    from vipcli_model.evaluation.protocol import resolve_protocol

    chosen = resolve_protocol(protocol, size=size, ratio=ratio)
    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size} is out of range: use 1 or more")
    from vipcli_model.evaluation.runner import ScoreConfig  # imports torch: after the cheap checks

    scoring = ScoreConfig(feature_weights=feature_weights, clip_model=clip_model, device=device, batch_size=batch_size)

    if pred is not None or gt is not None:
        report = _score_existing(data_dir, pred, gt, out, prompts, chosen, scoring, model, adapter, captioner, captioner_url)
    else:
        report = _generate_and_score(
            data_dir, out, chosen, prompts, limit, seed, steps, guidance, scheduler, captioner, captioner_url,
            captioner_model, model, adapter, device, dtype, scoring, no_cts, region_strength,
        )
        if report is None:  # not the main process of a multi-GPU run
            return

    if json_out:
        out_console.print_json(report.results_path.read_text(encoding="utf-8"))
    else:
        out_console.print(results_table(report.results))
    for note in report.results.get("notes", []):
        _plain(f"note: {note}")
    _plain(f"wrote {report.results_path} and {report.per_image_path.name}")
    skipped = report.results.get("skipped") or []
    if skipped:
        warn(f"{len(skipped)} image(s) skipped (see 'skipped' in {report.results_path.name}):")
        for item in skipped[:10]:
            where = f"{item['setting']}: " if item.get("setting") else ""
            _plain(f"  {where}{_with_name(item['image'], item['reason'])}")
        if len(skipped) > 10:
            _plain(f"  ... and {len(skipped) - 10} more")
        raise typer.Exit(code=1)


def _with_name(image: str, reason: str) -> str:
    return reason if image in reason else f"{image}: {reason}"


def _score_existing(data_dir, pred, gt, out, prompts, chosen, scoring, model, adapter, captioner, captioner_url):
    from vipcli_model.errors import OptionError
    from vipcli_model.evaluation.runner import score_pairs

    if pred is None or gt is None:
        raise OptionError("--pred and --gt go together: the outputs to score and their ground truth")
    if data_dir is not None:
        raise OptionError(f"DATA_DIR '{data_dir}' and --pred/--gt are two modes: generate from DATA_DIR, or score --pred against --gt")
    extra = [name for name, value in (("--model", model), ("--adapter", adapter), ("--captioner", captioner), ("--captioner-url", captioner_url)) if value]
    if extra:
        raise OptionError(f"{', '.join(extra)} have no effect with --pred/--gt (nothing is generated)")
    if prompts and len(prompts) > 1:
        raise OptionError("with --pred/--gt, --prompts takes one JSON Lines file (the Surrounding prompts for the CLIP score)")
    prompts_file = Path(prompts[0]) if prompts else None
    if prompts_file is not None and not prompts_file.is_file():
        raise OptionError(f"--prompts {prompts_file}: with --pred/--gt, give a JSON Lines prompts file")
    if scoring.clip_model:
        quiet_third_party()
    with _progress() as progress:
        return score_pairs(
            Path(pred), Path(gt), protocol=chosen, scoring=scoring, out_dir=Path(out) if out else None,
            prompts_file=prompts_file, progress=progress,
        )


def _generate_and_score(
    data_dir, out, chosen, prompts, limit, seed, steps, guidance, scheduler, captioner, captioner_url,
    captioner_model, model, adapter, device, dtype, scoring, no_cts, region_strength,
):
    from vipcli_model.config import ModelConfig
    from vipcli_model.errors import OptionError
    from vipcli_model.evaluation.runner import CAPTIONER, EvalConfig, parse_prompt_settings, run_eval
    from vipcli_model.hub import DEFAULT_INPAINT_MODEL

    if data_dir is None:
        raise OptionError("give DATA_DIR (a folder of test images), or --pred and --gt to score existing outputs")
    if out is None:
        raise OptionError("--out RUN_DIR is required: it keeps the ground truth, the outputs and the results")
    settings = parse_prompt_settings(prompts)
    if (captioner or captioner_url or captioner_model) and not any(s.kind == CAPTIONER for s in settings):
        raise OptionError("--captioner/--captioner-url/--captioner-model need --prompts captioner")
    if no_cts and region_strength is not None:
        raise OptionError("--region-strength has no effect with --no-cts")
    if region_strength is not None and not 0.0 <= region_strength <= 1.0:
        raise OptionError(f"--region-strength {region_strength} is out of range: use 0 to 1")
    config = EvalConfig(
        data_dir=Path(data_dir),
        out_dir=Path(out),
        model=ModelConfig(model=model or DEFAULT_INPAINT_MODEL, adapter=adapter, device=device, dtype=dtype),
        protocol=chosen,
        settings=settings,
        seed=seed,
        steps=steps,
        guidance=guidance,
        scheduler=scheduler,
        cts=not no_cts,
        region_strength=region_strength,
        limit=limit,
        captioner_model=captioner,
        captioner_url=captioner_url,
        captioner_server_model=captioner_model,
        scoring=scoring,
    )
    quiet_third_party()
    with _progress() as progress:
        report = run_eval(
            config,
            progress=progress,
            on_skip=lambda image, reason: _plain(f"skipped {_with_name(image, reason)}"),
        )
    if report is not None:
        generation = report.results["generation"]
        _plain(
            f"generated {generation['generated']}, reused {generation['reused']} "
            f"(already in {config.out_dir}), {generation['images_listed']} image(s) listed"
        )
    return report


def _plain(message: str) -> None:
    """A message on stderr, printed as is (file names may hold [brackets] that Rich would read as markup)."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


class _progress:
    """A Rich progress display on stderr (hidden when stderr is not a terminal), fed by the library's callback."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.display = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=err_console, transient=True, disable=not err_console.is_terminal,
        )
        self.display.__enter__()
        self.tasks: dict[str, int] = {}
        return self.update

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.display.add_task(stage, total=total)
        self.display.update(self.tasks[stage], completed=done, total=total)

    def __exit__(self, *exc) -> None:
        self.display.__exit__(*exc)


ROWS = (
    ("images", "images", "{:d}"),
    ("FID", "fid", "{:.2f}"),
    ("KID", ("kid_mean", "kid_std"), "{:.4f} ± {:.4f}"),
    ("IS", ("is_mean", "is_std"), "{:.2f} ± {:.2f}"),
    ("IS (ground truth)", ("gt_is_mean", "gt_is_std"), "{:.2f} ± {:.2f}"),
    ("PSNR known (dB)", "psnr_known", "{:.2f}"),
    ("PSNR generated (dB)", "psnr_generated", "{:.2f}"),
    ("PSNR whole (dB)", "psnr_whole", "{:.2f}"),
    ("SSIM known", "ssim_known", "{:.4f}"),
    ("SSIM whole", "ssim_whole", "{:.4f}"),
    ("LPIPS known", "lpips_known", "{:.4f}"),
    ("LPIPS whole", "lpips_whole", "{:.4f}"),
    ("CLIP score", "clip_score", "{:.2f}"),
)


def results_table(results: dict):
    """Metrics as rows, prompt settings as columns (fits a narrow terminal)."""
    from rich.markup import escape
    from rich.table import Table

    protocol = results["protocol"]
    title = (
        f"vip eval: {protocol['name']} protocol, {protocol['size'][0]}x{protocol['size'][1]}, "
        f"center {protocol['known_size'][0]}x{protocol['known_size'][1]} known ({protocol['area_factor']:g}x area)"
    )
    table = Table(title=escape(title), title_justify="left")
    table.add_column("metric")
    names = list(results["settings"])
    for name in names:
        table.add_column(escape(name), justify="right")
    for label, keys, pattern in ROWS:
        cells = [_cell(results["settings"][name], keys, pattern) for name in names]
        if all(cell == "-" for cell in cells):
            continue
        table.add_row(label, *cells)
    return table


def _cell(summary: dict, keys, pattern: str) -> str:
    keys = (keys,) if isinstance(keys, str) else keys
    values = [summary.get(key) for key in keys]
    if any(value is None for value in values):
        return "-"
    if any(isinstance(value, float) and math.isinf(value) for value in values):
        return "inf (identical)"
    return pattern.format(*values)
