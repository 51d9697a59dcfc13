"""What the end-to-end benchmarks share: the timing probe of their subprocess scripts, running the scripts in ABBA
order, the medians and the printed rows; and the in-process step timing (``interleaved``, ``print_steps``).

A benchmark imports it as the others do (``sys.path`` holds ``benchmarks/``). Each measurement is a script run in its
own subprocess (``run``), so peak memory (max RSS, or peak CUDA memory on a GPU) is per run. ``script`` puts the probe
in front of a script's body: it times every pass of the denoiser (a wrapper on its ``forward``), and, when the body
calls ``_time_parts()``, the parts of the run (load, LoRA load, fuse, text encoder, autoencoder, saving: wrappers on
the diffusers, transformers and PIL calls, outermost calls only); the body ends with ``_report(total_s=...)``, one JSON
line. The report's ``unet_s`` key holds the denoiser's passes, whatever the denoiser.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The probe: time every pass of the denoiser, and the parts of a run (outermost calls only), report peak memory of
# the process (or of the GPU). "{denoiser}" is the diffusers class whose forward is the denoising pass.
PROBE = r"""
import json, resource, time
import torch
from diffusers import {denoiser} as _Denoiser
_unet_times = []
_parts = {}
_depth = [0]
_forward = _Denoiser.forward
def _timed_forward(self, *args, **kwargs):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = _forward(self, *args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    _unet_times.append(time.perf_counter() - t)
    return out
_Denoiser.forward = _timed_forward
def _time_part(owner, name, part):
    # `part` gets the seconds of the outermost timed call only (a model load inside a pipeline load is the load's)
    function = owner.__dict__[name]
    wrapped = function.__func__ if isinstance(function, (classmethod, staticmethod)) else function
    def timed(*args, **kwargs):
        _depth[0] += 1
        t = time.perf_counter()
        try:
            return wrapped(*args, **kwargs)
        finally:
            _depth[0] -= 1
            if _depth[0] == 0:
                _parts[part] = _parts.get(part, 0.0) + time.perf_counter() - t
    setattr(owner, name, classmethod(timed) if isinstance(function, classmethod) else timed)
def _time_parts(fuse_owner=None, fuse_name="fuse_lora"):
    from diffusers import AutoencoderKL, AutoencoderTiny, DiffusionPipeline, ModelMixin
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from PIL import Image
    from transformers import CLIPTextModel
    _time_part(DiffusionPipeline, "from_pretrained", "load")
    _time_part(ModelMixin, "from_pretrained", "load")
    _time_part(StableDiffusionLoraLoaderMixin, "load_lora_weights", "LoRA load")
    _time_part(StableDiffusionLoraLoaderMixin, "lora_state_dict", "LoRA load")  # the file read, alone or inside
    _time_part(fuse_owner or StableDiffusionLoraLoaderMixin, fuse_name, "fuse")
    for vae in (AutoencoderKL, AutoencoderTiny):
        _time_part(vae, "encode", "autoencoder")
        _time_part(vae, "decode", "autoencoder")
    _time_part(CLIPTextModel, "forward", "text encoder")
    _time_part(Image.Image, "save", "saving")
def _report(**extra):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated():  # a run that stayed on the CPU: its RSS
        peak = torch.cuda.max_memory_allocated() / 1e9
    print(json.dumps({"unet_s": _unet_times, "peak_gb": peak, "parts": _parts, **extra}))
"""

# The 2x outpaint canvas of the plain scripts: ``photo`` in the middle of a canvas twice its size, the mask white
# where the canvas is to be generated.
CANVAS = r"""
image = Image.open(photo).convert("RGB")
left, top = image.width // 2, image.height // 2
canvas = Image.new("RGB", (image.width * 2, image.height * 2))
canvas.paste(image, (left, top))
mask = Image.new("L", canvas.size, 255)
mask.paste(0, (left, top, left + image.width, top + image.height))
"""

# The tail of every script that runs `vip` in process: its own exit code, then the report.
_RUN_VIP = r"""
try:
    main()
except SystemExit as exc:
    if exc.code:
        raise
_report(total_s=time.perf_counter() - start)
"""

# The prompts of the end-to-end runs: one prompt, and Center / Surrounding (C-T-S attention active).
ONE_PROMPT = ["--prompt", "a photo"]
REGIONS = ["--center", "a woman in a space suit", "--surrounding", "a space station interior"]


def script(body: str, denoiser: str = "UNet2DConditionModel") -> str:
    """A benchmark script: the clock started first, then the probe timing ``denoiser``'s passes, then ``body``."""
    return "\nimport sys, time\nstart = time.perf_counter()\n" + PROBE.replace("{denoiser}", denoiser) + body


def vip_script(argv: str, setup: str = "", denoiser: str = "UNet2DConditionModel") -> str:
    """A script running `vip` in process: ``setup`` after the import of the command, then ``argv`` (code setting
    ``sys.argv`` from the script's own arguments), then the command, then the report."""
    return script("from vipcli.main import main\n" + setup + argv + _RUN_VIP, denoiser)


def run(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run ``script`` in its own Python process (``env`` over this one's); its report."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO, env=full_env
    )
    if result.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def abba(
    jobs: dict[str, tuple], repeats: int, env: dict[str, str] | None = None, progress: bool = False
) -> dict[str, list[dict]]:
    """Every job (``run``'s arguments) ``repeats`` times, the order reversed every other round (ABBA), so a machine
    that speeds up or slows down during the run weighs on every configuration alike; each job's reports."""
    runs: dict[str, list[dict]] = {name: [] for name in jobs}
    for round_index in range(repeats):
        order = list(jobs) if round_index % 2 == 0 else list(reversed(jobs))
        for name in order:
            runs[name].append(run(*jobs[name], env=env))
            if progress:
                done = runs[name][-1]
                print(
                    f"  ({name}: {done['total_s']:.1f} s, UNet {sum(done['unet_s']):.1f} s, {done['parts']})",
                    flush=True,
                )
    return runs


PARTS = ("imports", "load", "LoRA load", "fuse", "text encoder", "autoencoder", "saving")


def combine(results: list[dict]) -> dict:
    """Several runs of one configuration: median end to end, every UNet pass pooled, the highest peak, the median
    seconds of each part of a run (``PARTS``, then the UNet passes, then the rest)."""
    parts = {name: statistics.median(r.get("parts", {}).get(name, 0.0) for r in results) for name in PARTS}
    parts["UNet passes"] = statistics.median(sum(r["unet_s"]) for r in results)
    parts["other"] = statistics.median(
        r["total_s"] - sum(r.get("parts", {}).get(name, 0.0) for name in PARTS) - sum(r["unet_s"]) for r in results
    )
    return {
        "parts": parts,
        "total_s": statistics.median(r["total_s"] for r in results),
        "unet_s": [t for r in results for t in r["unet_s"]],
        "steps": len(results[0]["unet_s"]),
        "peak_gb": max(r["peak_gb"] for r in results),
        "unet_total_s": statistics.median(sum(r["unet_s"]) for r in results),  # all UNet passes of one run
    }


def measure(jobs: dict[str, tuple], repeats: int, env: dict[str, str] | None = None, progress: bool = False) -> dict:
    """``abba`` then ``combine``: each job's medians."""
    runs = abba(jobs, repeats, env, progress)
    return {name: combine(runs[name]) for name in jobs}


def per_step(r: dict) -> float:
    """Median UNet pass (one per step: guidance batches the two branches into one pass)."""
    return statistics.median(r["unet_s"])


def row(label: str, r: dict, against: dict | None = None, goal: str = "") -> str:
    text = (
        f"  {label:<44}{r['total_s']:7.1f} s end to end  {per_step(r):6.2f} s/step ({r['steps']} steps)"
        f"  peak {r['peak_gb']:.2f} GB"
    )
    if against is not None:
        text += (
            f"   x{r['total_s'] / against['total_s']:.3f} end to end, x{per_step(r) / per_step(against):.3f} per step"
        )
    return text + (f"  ({goal})" if goal else "")


def print_e2e(results: dict, plain: str, vip: str) -> None:
    """The rows of an end-to-end part: the plain script (``results["plain"]``), vip with one prompt (``"vip"``, goal
    <= 1.05x) and, when run, vip with Center / Surrounding (``"vipcts"``), both against the plain script."""
    print(row(plain, results["plain"]))
    print(row(vip, results["vip"], results["plain"], "goal <= 1.05"))
    if "vipcts" in results:
        print(row("vip outpaint, Center/Surrounding (C-T-S)", results["vipcts"], results["plain"]))


def split(label: str, r: dict, against: dict) -> str:
    """Where a configuration's seconds go, each part also as a ratio to ``against``'s end to end time."""
    shown = ", ".join(
        f"{name} {seconds:.1f} s (x{seconds / against['total_s']:.3f})"
        for name, seconds in r["parts"].items()
        if seconds >= 0.05 or name == "fuse"
    )
    return f"    {label}: {shown}"


def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """In process: one warm-up each, then ``repeats`` timed rounds in ABBA order."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for step in variants.values():
        step()
    for round_index in range(repeats):
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for name in order:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def print_steps(times: dict[str, list[float]], goals: dict[str, str]) -> None:
    """Each variant's median seconds per step and its ratio to the first's, then the process's peak RSS."""
    import resource

    base = statistics.median(next(iter(times.values())))
    for name, values in times.items():
        median = statistics.median(values)
        goal = f"  ({goals[name]})" if name in goals else ""
        print(
            f"  {name:<58}{median:8.2f} s/step  x{median / base:.3f}   runs: "
            f"{', '.join(f'{v:.2f}' for v in values)}{goal}"
        )
    print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB")


def write_photo(path: Path, side: int = 512) -> Path:
    """The benchmarks' photo: scikit-image's astronaut (512 px), at ``side`` px."""
    import skimage.data
    from PIL import Image

    photo = Image.fromarray(skimage.data.astronaut())
    if side != photo.width:
        photo = photo.resize((side, side))
    photo.save(path)
    return path


def print_footer(start: float) -> None:
    """The last line of a multi-part benchmark: its wall time, the date and the command that ran."""
    print(
        f"  (benchmark wall time {time.perf_counter() - start:.0f} s; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())};"
        f" command: python benchmarks/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])})"
    )
