"""Fusing LCM-LoRA-SD1.5's shape into the full-size SD-1.5 inpainting UNet on CPU: time and memory, three ways.

    python benchmarks/bench_lora_fuse.py                 # each way twice, ABBA order (~3 min here)
    python benchmarks/bench_lora_fuse.py --repeats 1

The model and LoRA are bench_outpaint.py's (random weights, built once into --workdir): the UNet is a 3.4 GB fp32
safetensors file that diffusers memory-maps; the LoRA has LCM-LoRA-SD1.5's modules and rank (67.3 M parameters,
3.4 GB of UNet weights touched). Each way runs in its own process, after the same `from_pretrained` and
`load_lora_weights`, and reports the seconds of the fuse alone and the process's memory after it:

  1. diffusers' `pipe.fuse_lora()` (PEFT's merge);
  2. vip's merge with every sum added in place: the mapped file's pages are copied one 4 KB page fault at a time
     on first write;
  3. vip's merge (`vipcli_model.speed.lora_fuse`, which `fuse_lora` picks for weights mapped from a file): sums into
     a new huge-page buffer, replaced pages released.

Memory: RssAnon is memory the process owns (it must stay the same between 2 and 3: the fused weights, once);
RssFile is file cache mapped into the process (reclaimable, but counted in its RSS); peak is ru_maxrss.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_outpaint import build_lora, build_model  # noqa: E402

SCRIPT = r"""
import json, resource, sys, time
import torch
from diffusers import StableDiffusionInpaintPipeline
from vipcli_model.speed import lora_fuse

model, lora, how = sys.argv[1], sys.argv[2], sys.argv[3]
pipe = StableDiffusionInpaintPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
pipe.load_lora_weights(lora, weight_name="pytorch_lora_weights.safetensors", adapter_name="fast")
if how == "in-place":
    lora_fuse._file_mapped = lambda tensors: [False] * len(tensors)  # every sum in place
start = time.perf_counter()
if how == "diffusers":
    pipe.fuse_lora(lora_scale=1.0)
else:
    lora_fuse.fuse_lora_weights(pipe, "fast")
seconds = time.perf_counter() - start
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("RssAnon", "RssFile")))
print(json.dumps({"fuse_s": seconds, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                  **{key: int(value.split()[0]) / 1e6 for key, value in status.items()}}))
"""

WAYS = {
    "diffusers": "diffusers pipe.fuse_lora() (PEFT merge)",
    "in-place": "vip, sums added in place",
    "vip": "vip fuse_lora_weights (out of place)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each way, in ABBA order (medians)")
    parser.add_argument("--workdir", default="/tmp/vip-bench")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    build_model(work)
    build_lora(work / "lcm-lora-sd15-shape", work / "model")
    runs: dict[str, list[dict]] = {how: [] for how in WAYS}
    for round_index in range(args.repeats):
        for how in list(WAYS) if round_index % 2 == 0 else list(reversed(WAYS)):
            done = subprocess.run(
                [sys.executable, "-c", SCRIPT, str(work / "model"), str(work / "lcm-lora-sd15-shape"), how],
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            if done.returncode != 0:
                raise SystemExit(f"benchmark step failed:\n{done.stderr[-2000:]}")
            runs[how].append(json.loads(done.stdout.strip().splitlines()[-1]))
    median = {how: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for how, rs in runs.items()}
    base = median["in-place"]["fuse_s"]
    print(
        f"LCM-LoRA-SD1.5's shape fused into the SD-1.5 inpainting UNet (random weights), CPU fp32;"
        f" {args.repeats} run(s) each, medians"
    )
    for how, label in WAYS.items():
        m = median[how]
        print(
            f"  {label:<42}{m['fuse_s']:6.1f} s  x{m['fuse_s'] / base:.2f} of in place"
            f"   RssAnon {m['RssAnon']:.2f} GB"
            f"  RssFile {m['RssFile']:.2f} GB  peak {m['peak_gb']:.2f} GB"
        )


if __name__ == "__main__":
    main()
