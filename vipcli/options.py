"""Options shared by several commands, declared once."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        help="Inpainting model: hub id (default stable-diffusion-v1-5/stable-diffusion-inpainting), preset "
        "(sd15-inpaint, sd2-inpaint), a diffusers folder, or a single .safetensors file.",
        rich_help_panel="Model",
    ),
]
AdapterOpt = Annotated[
    Optional[str],
    typer.Option("--adapter", help="Trained C-T-S adapter (from `vip train`): file, folder or hub id.", rich_help_panel="Model"),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.", rich_help_panel="Model")
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="auto (fp16 on CUDA, fp32 elsewhere), fp32, fp16 or bf16.", rich_help_panel="Model")
]
NoCtsOpt = Annotated[
    bool, typer.Option("--no-cts", help="Plain inpainting with the Total prompt only (for comparison).", rich_help_panel="Prompts")
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
