"""Training step time and peak memory on the full-size SD-1.5 inpainting UNet: adapter mode vs full-UNet mode.

    python benchmarks/bench_train.py [--size 256] [--batch 1] [--steps 3] [--rounds 2] [--modes adapter,full]
        [--gradient-checkpointing]

Random weights (speed and memory do not depend on values), random latents and text embeddings:
only what differs between the modes is measured, the UNet forward + backward (with C-T-S attention,
through the recipe's ``CTSDenoiser``) and the AdamW step. The VAE and text encoder are frozen in
every mode and cost the same in both, so they are left out. Each mode runs in its own subprocess,
so its peak resident memory (``ru_maxrss``) is its own; the modes alternate over ``--rounds`` and
each reports its best round (the one least disturbed by other load on a shared machine). Prints
one table, modes side by side, with the full/adapter ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(mode: str, size: int, batch: int, steps: int, checkpointing: bool) -> dict:
    import numpy as np
    from diffusers import UNet2DConditionModel

    from vipcli_model.cts.attention import CTSAdapter, CTSController
    from vipcli_model.training.masks import ratio_mask
    from vipcli_model.training.recipe import CTSDenoiser

    torch.manual_seed(0)
    # SD-1.5 inpainting: the SD-1.x UNet defaults with a 9-channel input.
    unet = UNet2DConditionModel(sample_size=64, in_channels=9, out_channels=4, cross_attention_dim=768)
    unet.requires_grad_(mode == "full")
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    adapter = CTSAdapter(unet, rank=16)
    controller = CTSController(unet, adapter=adapter)
    controller.install()
    model = CTSDenoiser(unet, adapter, controller)
    groups = adapter.parameter_groups(1e-4, 1e-3, 1e-2)
    if mode == "full":
        groups.append({"params": [p for p in unet.parameters() if p.requires_grad], "lr": 1e-5, "weight_decay": 1e-2})
    optimizer = torch.optim.AdamW(groups)
    trainable = sum(p.numel() for group in groups for p in group["params"])
    setup_rss = rss_mib()

    latent = size // 8
    sample = torch.randn(batch, 9, latent, latent)
    target = torch.randn(batch, 4, latent, latent)
    texts = [torch.randn(batch, 77, 768) for _ in range(3)]
    pixel_mask = torch.from_numpy(ratio_mask(np.random.default_rng(0), (size, size), centered=True))[None, None]
    region_mask = F.adaptive_avg_pool2d(pixel_mask, (latent, latent)).expand(batch, -1, -1, -1)
    timesteps = torch.randint(0, 1000, (batch,))

    forward_backward, optimizer_times, totals = [], [], []
    for index in range(steps + 1):  # the first step warms up (allocations, AdamW state) and is not timed
        start = time.perf_counter()
        prediction = model(sample, timesteps, texts[0], texts[1], texts[2], region_mask)
        loss = F.mse_loss(prediction, target)
        loss.backward()
        middle = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        if index:
            forward_backward.append(middle - start)
            optimizer_times.append(end - middle)
            totals.append(end - start)
    return {
        "mode": mode + (" +ckpt" if checkpointing else ""),
        "trainable_params": trainable,
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "step_s": statistics.median(totals),
        "forward_backward_s": statistics.median(forward_backward),
        "optimizer_s": statistics.median(optimizer_times),
        "setup_rss_mib": setup_rss,
        "peak_rss_mib": peak_rss_mib(),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, default=256, help="training image size in pixels (latent = size / 8); paper: 256"
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode (after one warm-up step)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating rounds; the fastest round of each mode is kept"
    )
    parser.add_argument("--modes", default="adapter,full")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="also measure each mode with it")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        mode, _, ckpt = args.worker.partition(":")
        print(json.dumps(worker(mode, args.size, args.batch, args.steps, ckpt == "ckpt")))
        return

    runs = []
    for mode in args.modes.split(","):
        runs.append(mode)
        if args.gradient_checkpointing:
            runs.append(f"{mode}:ckpt")
    best: dict[str, dict] = {}
    for _round in range(args.rounds):
        for run in runs:
            command = [
                sys.executable,
                __file__,
                "--worker",
                run,
                "--size",
                str(args.size),
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
            ]
            done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
            if done.returncode != 0:
                print(f"{run}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"  round {_round + 1} {result['mode']}: {result['step_s']:.2f} s/step, peak "
                f"{result['peak_rss_mib'] / 1024:.2f} GiB",
                file=sys.stderr,
            )
            previous = best.get(run)
            if previous is None or result["step_s"] < previous["step_s"]:
                best[run] = result
    results = [best[run] for run in runs if run in best]

    print(
        f"SD-1.5 inpainting UNet (random weights), {args.size} px, batch {args.batch}, CPU, "
        f"{results[0]['threads'] if results else '?'} threads, median of {args.steps} steps, best of {args.rounds} "
        "rounds"
    )
    rows = [
        ("trainable parameters", lambda r: f"{r['trainable_params'] / 1e6:,.2f} M"),
        ("step (fwd+bwd+AdamW)", lambda r: f"{r['step_s']:.2f} s"),
        ("  forward + backward", lambda r: f"{r['forward_backward_s']:.2f} s"),
        ("  AdamW step", lambda r: f"{r['optimizer_s']:.3f} s"),
        ("RSS after setup", lambda r: f"{r['setup_rss_mib'] / 1024:.2f} GiB"),
        ("peak RSS", lambda r: f"{r['peak_rss_mib'] / 1024:.2f} GiB"),
    ]
    width = 24
    print(f"{'':{width}}" + "".join(f"{r['mode']:>16}" for r in results))
    for label, cell in rows:
        print(f"{label:{width}}" + "".join(f"{cell(r):>16}" for r in results))
    by_mode = {r["mode"]: r for r in results}
    if "adapter" in by_mode and "full" in by_mode:
        adapter, full = by_mode["adapter"], by_mode["full"]
        print(
            f"full / adapter: step time x{full['step_s'] / adapter['step_s']:.2f}, "
            f"peak memory x{full['peak_rss_mib'] / adapter['peak_rss_mib']:.2f}, "
            f"trainable parameters x{full['trainable_params'] / adapter['trainable_params']:.0f}"
        )


if __name__ == "__main__":
    main()
