"""Cost of the detail pass on the full-size SD-1.5 inpainting architecture: time against the generated
area, and peak memory against the first pass alone.

    python benchmarks/bench_detail.py                       # 1024 and 2048 px photos whole, 4032 px: first tiles
    python benchmarks/bench_detail.py --limit 4032=0        # every size whole (hours on 2 CPU cores)
    python benchmarks/bench_detail.py --sizes 1024 --detail-steps 1   # a quick look

Random weights (speed and memory do not depend on weight values), built once and saved as a diffusers folder
(``bench_outpaint.build_model``), loaded through ``ModelConfig(model=DIR)`` as a user's model is. Each photo
(4:3, 1024x768, 2048x1536, 4032x3024) is outpainted at ``--ratio 2x`` twice, each run in its own subprocess,
in alternating order: the first pass alone (``detail="off"``) and with the detail pass (``detail="on"``, 512 px
tiles, 64 px overlap, ``--detail-steps`` steps at strength 0.5). Peak memory is the process's max RSS (peak CUDA
memory on a GPU), so "with / without" is what the pass adds to a run. On a size with a tile limit the run stops
after that many tiles of the pass: its per-tile time, measured on that canvas, times the pass's tile count is
the pass's time, printed as an extrapolation. s/tile is the median time from one tile to the next (the first
tile's own time is not separable from the first pass's VAE decode, upscale and paste-back at full resolution).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

RUN_SCRIPT = r"""
import json, resource, sys, time
start = time.perf_counter()
import torch
from vipcli_model.config import BlendConfig, DetailConfig, ExpansionConfig, GenerationConfig, ModelConfig, PromptConfig
from vipcli_model.outpainting.run import OutpaintJob, outpaint_images

model, photo, out, mode, steps, detail_steps, limit = sys.argv[1:8]
limit = int(limit)
marks = {"tiles": []}

class Stop(Exception):
    pass

def on_step(path, done, total):
    if done == total:
        marks["first_pass_end"] = time.perf_counter()

def on_tile(path, done, total):
    marks["tiles"].append(time.perf_counter())
    marks["total_tiles"] = total
    if limit and done >= limit:
        raise Stop

job = OutpaintJob(
    expansion=ExpansionConfig(ratio="2x"),
    prompts=PromptConfig(center="a woman in a space suit", surrounding="a space station interior"),
    generation=GenerationConfig(steps=int(steps), seed=0),
    detail=DetailConfig(mode=mode, strength=0.5, steps=int(detail_steps), tile_size=512, overlap=64)
    if mode == "on" else DetailConfig(mode="off"),
    model=ModelConfig(model=model), output=out, overwrite=True,
)
detail = None
try:
    run = outpaint_images([photo], job, on_step=on_step, on_tile=on_tile)
    if run.failures:
        raise SystemExit(str(run.failures[0].error))
    detail = run.written[0].metadata.get("detail")
except Stop:
    pass
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
if torch.cuda.is_available():
    peak = torch.cuda.max_memory_allocated() / 1e9
tiles = marks["tiles"]
print(json.dumps({
    "total_s": time.perf_counter() - start, "peak_gb": peak, "detail": detail,
    "tiles_done": len(tiles), "total_tiles": marks.get("total_tiles", 0),
    "tile_s": [b - a for a, b in zip(tiles, tiles[1:])],  # tile to tile: the pass's own cost per tile
    "before_first_tile_s": (tiles[0] - marks["first_pass_end"]) if tiles else 0.0,  # VAE, upscale, paste, 1st tile
}))
"""


def run(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", RUN_SCRIPT, *args], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4032], help="photo widths (4:3)")
    parser.add_argument(
        "--limit",
        nargs="*",
        default=["4032=8"],
        help="SIZE=N: stop the pass after N tiles on that size and extrapolate (0: whole)",
    )
    parser.add_argument("--steps", type=int, default=4, help="first-pass steps (its cost is not what is measured)")
    parser.add_argument("--detail-steps", type=int, default=2, help="detail steps per tile (strength 0.5)")
    parser.add_argument("--workdir", default="/tmp/vip-bench-detail")
    args = parser.parse_args()
    limits = {int(size): int(count) for size, count in (item.split("=") for item in args.limit)}
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    from bench_outpaint import build_model

    build_model(work)
    model = str(work / "model")

    import skimage.data
    from PIL import Image

    source = Image.fromarray(skimage.data.astronaut())
    t0 = time.perf_counter()
    rows = []
    for index, width in enumerate(args.sizes):
        size = (width, width * 3 // 4)
        photo = work / f"photo{width}.png"
        source.resize(size, Image.Resampling.LANCZOS).save(photo)
        limit = limits.get(width, 0)
        configs = {
            "off": (model, str(photo), str(work / f"off{width}.png"), "off", str(args.steps), "1", "0"),
            "on": (
                model,
                str(photo),
                str(work / f"on{width}.png"),
                "on",
                str(args.steps),
                str(args.detail_steps),
                str(limit),
            ),
        }
        order = ["off", "on"] if index % 2 == 0 else ["on", "off"]  # alternate: drift weighs on both alike
        results = {name: run(*configs[name]) for name in order}
        off, on = results["off"], results["on"]
        tiles = on["total_tiles"]
        per_tile = statistics.median(on["tile_s"]) if on["tile_s"] else on["before_first_tile_s"]
        pass_s = on["detail"]["seconds"] if on["detail"] else per_tile * tiles
        generated_mp = 3 * size[0] * size[1] / 1e6  # a 2x canvas has 4x the photo's area
        rows.append((size, tiles, on["tiles_done"], per_tile, pass_s, generated_mp, off, on))
        print(f"  done {size[0]}x{size[1]} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    import torch

    where = f"CUDA ({torch.cuda.get_device_name()}, fp16)" if torch.cuda.is_available() else "CPU (fp32)"
    print(
        f"Detail pass, SD-1.5 inpainting architecture (random weights), {where}: 2x outpaint, first pass "
        f"{args.steps} steps; detail: 512 px tiles, overlap 64, strength 0.5, {args.detail_steps} steps, guidance 7.5"
    )
    print(
        f"  {'photo':>10} {'canvas':>10} {'gen. MP':>8} {'tiles':>6} {'s/tile':>7} {'pass s':>9} {'s/MP':>7}"
        f" {'peak off GB':>12} {'peak on GB':>11} {'on/off':>7}"
    )
    base = rows[0][4] / rows[0][5]
    for size, tiles, done, per_tile, pass_s, generated_mp, off, on in rows:
        measured = "" if done >= tiles else f"  (pass extrapolated: {done} of {tiles} tiles run)"
        print(
            f"  {size[0]:>5}x{size[1]:<4} {2 * size[0]:>5}x{2 * size[1]:<4} {generated_mp:8.2f} {tiles:6d}"
            f" {per_tile:7.2f} {pass_s:9.1f} {pass_s / generated_mp:7.1f} {off['peak_gb']:12.2f}"
            f" {on['peak_gb']:11.2f} {on['peak_gb'] / off['peak_gb']:7.3f}{measured}"
        )
    print(
        "  linear growth: s/MP relative to the first size: "
        + ", ".join(f"{row[4] / row[5] / base:.3f}" for row in rows)
        + "; peak memory goal: on/off <= 1.2"
    )
    print(f"  (benchmark wall time {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
