"""The `vip outpaint` command line that reproduces a result of the web app: its settings as the CLI's flags."""

from __future__ import annotations

import shlex
from pathlib import Path

from vipcli_model.config import BlendConfig, DetailConfig, ExpansionConfig, ModelConfig
from vipcli_model.outpainting.run import OutpaintJob

EXPANSION_FLAGS = {
    "ratio": "--ratio",
    "aspect": "--aspect",
    "size": "--size",
    "left": "--left",
    "right": "--right",
    "top": "--top",
    "bottom": "--bottom",
}


def outpaint_command(photo: str | Path, job: OutpaintJob, metadata: dict, output: str | Path | None = None) -> str:
    """``vip outpaint PHOTO ...`` giving the result ``metadata`` describes: the job's settings, the seed that ran, and
    the prompts that ran (a captioner's written out, so the command needs no captioner)."""
    words = ["vip", "outpaint", str(photo)]

    def add(flag: str, value: object = None) -> None:
        words.extend([flag] if value is None else [flag, str(value)])

    expansion = job.expansion
    for name, flag in EXPANSION_FLAGS.items():
        if getattr(expansion, name) is not None:
            add(flag, getattr(expansion, name))
    if expansion.align != ExpansionConfig.align:
        add("--align", expansion.align)
    prompts = metadata.get("prompts", {})
    source = metadata.get("prompt_source", {}).get("source")
    if source == "captioner":
        add("--center", prompts.get("center", ""))
        add("--surrounding", prompts.get("surrounding", ""))
    elif source == "unconditional":
        add("--no-caption")
    else:
        if job.prompts.total:
            add("--prompt", job.prompts.total)
        for flag, value in (
            ("--center", job.prompts.center),
            ("--surrounding", job.prompts.surrounding),
            ("--keywords", job.prompts.keywords),
        ):
            if value:
                add(flag, value)
    generation = job.generation
    if generation.negative:
        add("--negative", generation.negative)
    if not generation.cts:
        add("--no-cts")
    for flag, value in (
        ("--steps", generation.steps),
        ("--guidance", generation.guidance),
        ("--scheduler", generation.scheduler),
        ("--region-strength", generation.region_strength),
    ):
        if value is not None:
            add(flag, value)
    if generation.guidance_interval is not None:
        add("--guidance-interval", ",".join(map(str, generation.guidance_interval)))
    add("--seed", metadata["seed"])
    if generation.num_images != 1:
        add("--num-images", generation.num_images)
    if job.blend.feather != BlendConfig.feather:
        add("--feather", job.blend.feather)
    if job.blend.color_match:
        add("--color-match")
    if job.detail.mode != DetailConfig.mode:
        add("--detail", job.detail.mode)
    model = job.model
    if model.model != ModelConfig.model:
        add("--model", model.model)
    if model.fast:
        add("--fast")
    if model.adapter:
        add("--adapter", model.adapter)
    if model.device != ModelConfig.device:
        add("--device", model.device)
    if output is not None:
        add("-o", output)
    return shlex.join(words)
