"""Options that more than one command takes, declared once (as the hf CLI does).

A command's own default shows in its help (``[default: ...]``) where it has one; the help text here
holds for every command that uses the option.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

MODEL_PANEL = "Model and device"

ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        help="Inpainting model (SD-1.x/2.x, SDXL, FLUX Fill or FLUX.2 [klein], recognised from its config): a preset "
        "(sd15-inpaint, the default; sd2-inpaint, sdxl-inpaint, flux-fill, flux2-klein-4b), a hub id, a diffusers "
        "folder, or a single .safetensors file (SD-1.x/2.x). `vip models list` shows the presets' hub ids.",
        rich_help_panel=MODEL_PANEL,
    ),
]
ControlNetOpt = Annotated[
    Optional[str],
    typer.Option(
        "--controlnet",
        help="ControlNet that lets a text-to-image SDXL --model (hub id or diffusers folder) outpaint: union "
        "(ControlNet Union ProMax, OzzyGT/controlnet-union-promax-sdxl-1.0), a hub id or a folder.",
        rich_help_panel=MODEL_PANEL,
    ),
]
AdapterOpt = Annotated[
    Optional[str],
    typer.Option(
        "--adapter",
        help="Trained C-T-S adapter (from `vip train`): file, folder or hub id.",
        rich_help_panel=MODEL_PANEL,
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.", rich_help_panel=MODEL_PANEL
    ),
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype", help="auto (fp16 on CUDA, fp32 elsewhere), fp32, fp16 or bf16.", rich_help_panel=MODEL_PANEL
    ),
]
NoCtsOpt = Annotated[
    bool,
    typer.Option(
        "--no-cts", help="Plain inpainting with the Total prompt only (for comparison).", rich_help_panel="Prompts"
    ),
]
RegionStrengthOpt = Annotated[
    Optional[float],
    typer.Option(
        "--region-strength",
        help="C-T-S gate in [0, 1]: 0 = Total prompt only, 1 = region prompts only. Default: the adapter's learned "
        "gates, else 0.5.",
        rich_help_panel="Prompts",
    ),
]

# --- the captioner (vip caption, vip outpaint, vip eval)
CaptionerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--captioner",
        help="Captioner (a transformers image-text-to-text model): preset (smolvlm-256m, smolvlm-500m, qwen2-vl-2b), "
        "hub id or local folder. Default: HuggingFaceTB/SmolVLM-256M-Instruct.",
        rich_help_panel="Prompts",
    ),
]
CaptionerUrlOpt = Annotated[
    Optional[str],
    typer.Option(
        "--captioner-url",
        help="Base URL of an OpenAI-compatible chat-completions server to caption with instead (llama.cpp, vLLM, "
        "Ollama), e.g. http://127.0.0.1:8080/v1. Needs --captioner-model.",
        rich_help_panel="Prompts",
    ),
]
CaptionerModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--captioner-model", help="The model name the --captioner-url server serves.", rich_help_panel="Prompts"
    ),
]
KeywordsOpt = Annotated[
    str,
    typer.Option(
        "--keywords",
        "-k",
        help="Steer the Surrounding: asked for, and put first in its text, e.g. 'snowy mountains'.",
        rich_help_panel="Prompts",
    ),
]

# --- generation (vip outpaint, vip eval)
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Denoising steps.", rich_help_panel="Generation")]
GuidanceOpt = Annotated[
    Optional[float],
    typer.Option("--guidance", help="Classifier-free guidance scale (1 or less: off).", rich_help_panel="Generation"),
]
ImageGuidanceOpt = Annotated[
    Optional[float],
    typer.Option(
        "--image-guidance",
        help="Image guidance scale: higher stays closer to the input photo.",
        rich_help_panel="Generation",
    ),
]
SD_SCHEDULERS = "dpm++, dpm++-karras, ddim, euler, euler-a, unipc, pndm, lcm, tcd"  # vip edit takes these too
SchedulerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--scheduler",
        help=f"{SD_SCHEDULERS}; flow-match for FLUX. Default: the model family's.",
        rich_help_panel="Generation",
    ),
]


def guidance_interval_option(default: str):
    """``--guidance-interval``, with the default of the command that takes it."""
    return typer.Option(
        "--guidance-interval",
        help="Classifier-free guidance only at steps whose noise level sigma is in (LOW, HIGH], e.g. 0.28,5.42 "
        f"(Kynkaanniemi et al. 2024); the other steps run the UNet once. 'full': every step. Default: {default}.",
        rich_help_panel="Generation",
    )


DeepCacheOpt = Annotated[
    Optional[int],
    typer.Option(
        "--deep-cache",
        help="DeepCache: run the deep UNet blocks at one step in N and reuse their features in between (faster, "
        "changes the image; 0: off). For runs of many steps: with 4 it loses quality.",
        rich_help_panel="Generation",
    ),
]
SeedOpt = Annotated[
    Optional[int],
    typer.Option("--seed", help="Random seed: the same seed gives the same result.", rich_help_panel="Generation"),
]

# --- geometry (vip outpaint, vip caption --for-training, vip eval --protocol custom)
RatioOpt = Annotated[
    Optional[str],
    typer.Option(
        "--ratio",
        help="Per-side scale factor of the full image over the known photo, e.g. 1.5x or 2x (2.25x, 4x the area).",
        rich_help_panel="Geometry",
    ),
]

# --- output
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json", help="Print JSON on stdout (one object per line) instead of text.", rich_help_panel="Output"
    ),
]

SkipExistingOpt = Annotated[
    bool,
    typer.Option(
        "--skip-existing",
        help="Resume a stopped run: skip an input whose outputs are all there and record the same settings and model "
        "(read from each file's metadata); an output made with other settings is an error naming them (unless "
        "--overwrite). Exits 0 when every input is done or skipped.",
        rich_help_panel="Output",
    ),
]

DaskOpt = Annotated[
    Optional[str],
    typer.Option(
        "--dask",
        envvar="DASK_SCHEDULER_ADDRESS",
        help="Run on a Dask cluster: the scheduler's address, e.g. tcp://10.0.0.5:8786 (start it with `dask "
        "scheduler`, and one `dask worker ADDRESS --nthreads 1` per GPU, with --resources GPU=1). Tasks are "
        "balanced over the workers, each loads the model once; inputs and -o may be fsspec URLs (s3://, gs://). "
        "Every worker must see local paths at the same place. Needs pip install 'vip-outpaint[dask]'.",
        rich_help_panel="Output",
        show_envvar=True,
    ),
]

# --- library arguments -> flags
# The library names the argument at fault as Python calls it, in backticks (`num_images`, `cts=False`);
# the command line shows the flag a user types instead. One table, used wherever an error becomes a message.
FLAGS = {
    "`ratio`": "--ratio",
    "`aspect`": "--aspect",
    "`size`": "--size",
    "`left`": "--left",
    "`right`": "--right",
    "`top`": "--top",
    "`bottom`": "--bottom",
    "`align`": "--align",
    "`mask`": "--mask",
    "`steps`": "--steps",
    "`guidance`": "--guidance",
    "`num_images`": "--num-images",
    "`scheduler`": "--scheduler",
    "`region_strength`": "--region-strength",
    "`seed`": "--seed",
    "`feather`": "--feather",
    "`cts=False`": "--no-cts",
    "`caption=False`": "--no-caption",
    "`captioner`": "--captioner",
    "`captioner_url`": "--captioner-url",
    "`captioner_model`": "--captioner-model",
    "`image_guidance`": "--image-guidance",
    "`threshold`": "--threshold",
    "`expand`": "--expand",
    "`instruction`": "the instruction",
    "`detail='on'`": "--detail on",
    "`detail='off'`": "--detail off",
    "`detail`": "--detail",
    "`detail_strength`": "--detail-strength",
    "`detail_steps`": "--detail-steps",
    "`tile_size`": "--tile-size",
    "`tile_overlap`": "--tile-overlap",
    "`output`": "-o",
    "`overwrite=True`": "--overwrite",
    "`skip_existing`": "--skip-existing",
    "`dask`": "--dask",
    "`total`": "--prompt",
    "`center`": "--center",
    "`surrounding`": "--surrounding",
    "`negative`": "--negative",
    "`caption`": "--no-caption",
    "`color_match`": "--color-match",
    "`preview`": "--preview",
    "`compile`": "--compile",
    "`model`": "--model",
    "`memory`": "--memory",
    "`cpu_offload`": "--cpu-offload",
    "`fast`": "--fast",
    "`fast_lora`": "--fast-lora",
    "`guidance_interval`": "--guidance-interval",
    "`vae='full'`": "--vae full",
    "`vae`": "--vae",
    "`deep_cache`": "--deep-cache",
    "`vae_tiling`": "--vae-tiling",
    "`device`": "--device",
    "`dtype`": "--dtype",
    "`captioner_timeout`": "--captioner-timeout",
    "`keywords`": "--keywords",
    "`for_training`": "--for-training",
    "`jsonl`": "--jsonl",
    "`protocol`": "--protocol",
    "`pred_dir`": "--pred",
    "`gt_dir`": "--gt",
    "`out_dir`": "--out",
    "`clip_model`": "--clip-model",
    "`feature_weights`": "--feature-weights",
    "`resume=True`": "--resume",
    "`run_dir`": "--out",
    "`mixed_precision`": "--mixed-precision",
    "`lr`": "--lr",
    "`gate_lr`": "--gate-lr",
    "`ema`": "--ema",
    "`limit`": "--limit",
    "`model_config`": "--model-config",
    "`controlnet`": "--controlnet",
    "`adapter`": "--adapter",
    "`batch_size`": "--batch-size",
    "`data_dir`": "DATA_DIR",
}
# Where a name is one command's own: `EvalConfig.settings` are the prompt settings `vip eval --prompts` names
COMMAND_FLAGS = {"eval": {"`settings`": "--prompts"}}


def flag_message(message: str, command: str | None = None) -> str:
    """A library message with the arguments it names (in backticks) shown as the flags of ``command`` that set them."""
    for argument, flag in {**FLAGS, **COMMAND_FLAGS.get(command or "", {})}.items():
        message = message.replace(argument, flag)
    return message
