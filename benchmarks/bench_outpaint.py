"""End-to-end speed and memory of `vip outpaint` on the full-size SD-1.5 inpainting architecture.

    python benchmarks/bench_outpaint.py [--steps 4] [--workdir /tmp/vip-bench]

Random weights (speed and memory do not depend on weight values), built once and saved as a
diffusers folder, then loaded through `--model DIR` exactly as a user's model is. Each measurement
runs in its own subprocess, so peak memory (max RSS) is per run. Printed side by side from one run:

  1. `vip outpaint` (2x of a 512 px photo) against a plain diffusers StableDiffusionInpaintPipeline
     script doing the same work (same 1024 px canvas generated at 512 px, steps, guidance);
  2. the same 2x outpaint of a 512 px photo against a 2048 px photo (working resolution keeps the
     diffusion at 512 px; only the image buffers grow).

With ``--presets``: instead, the default preset (25 steps, guidance 7.5) against ``--fast`` (a rank-64 LoRA
of LCM-LoRA's shape, random, fused; LCM scheduler, 6 steps, guidance off), end to end, 2x of a 512 px photo.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PLAIN_SCRIPT = r"""
import json, resource, sys, time
import torch
from diffusers import StableDiffusionInpaintPipeline, DPMSolverMultistepScheduler
from PIL import Image
model, photo, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
pipe = StableDiffusionInpaintPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
pipe.set_progress_bar_config(disable=True)
loaded = time.perf_counter()
image = Image.open(photo).convert("RGB")
canvas = Image.new("RGB", (image.width * 2, image.height * 2)); canvas.paste(image, (image.width // 2, image.height // 2))
mask = Image.new("L", canvas.size, 255); mask.paste(0, (image.width // 2, image.height // 2, image.width // 2 + image.width, image.height // 2 + image.height))
work = (512, 512)
out = pipe(prompt="a photo", image=canvas.resize(work), mask_image=mask.resize(work), height=512, width=512,
           num_inference_steps=steps, guidance_scale=7.5, generator=torch.Generator().manual_seed(0)).images[0]
result = out.resize(canvas.size); result.paste(image, (image.width // 2, image.height // 2))
result.save(sys.argv[4])
done = time.perf_counter()
print(json.dumps({"load_s": loaded - start, "run_s": done - loaded, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""

VIP_SCRIPT = r"""
import json, resource, sys, time
start = time.perf_counter()
from vipcli.main import main
steps = ["--steps", sys.argv[3]] if sys.argv[3] != "preset" else []
sys.argv = ["vip", "outpaint", sys.argv[2], "--ratio", "2x", "--model", sys.argv[1], *steps,
            "--prompt", "a photo", "--seed", "0", "-o", sys.argv[4], "--overwrite", *sys.argv[5:]]
try:
    main()
except SystemExit as exc:
    if exc.code:
        raise
done = time.perf_counter()
print(json.dumps({"total_s": done - start, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""


def build_model(folder: Path) -> None:
    """Full-size SD-1.5 inpainting architecture with random weights, saved as a diffusers folder."""
    if (folder / "model_index.json").exists():
        return
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import write_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, in_channels=9, out_channels=4, cross_attention_dim=768)
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                       vocab_size=49408, max_position_embeddings=77, projection_dim=768)
    )
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "_tokenizer_src"))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionInpaintPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(folder / "model")
    (folder / "model_index.json").write_text("{}")


def build_lora(folder: Path, model: Path) -> None:
    """A random LoRA with LCM-LoRA-SD1.5's shape (rank 64 on attention and projections), saved like it."""
    if (folder / "pytorch_lora_weights.safetensors").exists():
        return
    import torch
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    torch.manual_seed(0)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
    unet.add_adapter(LoraConfig(r=64, lora_alpha=64, target_modules=targets, init_lora_weights="gaussian"))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionInpaintPipeline.save_lora_weights(folder, unet_lora_layers=layers)


def run(script: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--workdir", default="/tmp/vip-bench")
    parser.add_argument("--presets", action="store_true", help="default preset against --fast instead")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    build_model(work)
    model = str(work / "model")

    import numpy as np
    import skimage.data
    from PIL import Image

    photo = Image.fromarray(skimage.data.astronaut())
    photo.save(work / "photo512.png")
    photo.resize((2048, 2048), Image.Resampling.LANCZOS).save(work / "photo2048.png")
    _ = np

    if args.presets:
        build_lora(work / "lora", work / "model")
        default = run(VIP_SCRIPT, model, str(work / "photo512.png"), "preset", str(work / "default.png"))
        fast = run(VIP_SCRIPT, model, str(work / "photo512.png"), "preset", str(work / "fast.png"),
                   "--fast", "--fast-lora", str(work / "lora"))
        print("SD-1.5 inpainting architecture (random weights), CPU, 2x outpaint of a 512 px photo, end to end")
        print(f"  default preset (25 steps, guidance 7.5) : {default['total_s']:7.1f} s   peak {default['peak_rss_gb']:.2f} GB"
              "   (goal <= 360 s)")
        print(f"  --fast (LCM-LoRA fused, 6 steps, no CFG): {fast['total_s']:7.1f} s   peak {fast['peak_rss_gb']:.2f} GB"
              f"   x{default['total_s'] / fast['total_s']:.2f} faster (goal <= 90 s)")
        return

    steps = str(args.steps)
    t0 = time.perf_counter()
    plain = run(PLAIN_SCRIPT, model, str(work / "photo512.png"), steps, str(work / "plain.png"))
    vip512 = run(VIP_SCRIPT, model, str(work / "photo512.png"), steps, str(work / "vip512.png"))
    vip2048 = run(VIP_SCRIPT, model, str(work / "photo2048.png"), steps, str(work / "vip2048.png"))
    plain_total = plain["load_s"] + plain["run_s"]
    print(f"SD-1.5 inpainting architecture (random weights), CPU, {args.steps} steps, guidance 7.5, 2x outpaint")
    print(f"  plain diffusers script, 512 px photo : {plain_total:7.1f} s   peak {plain['peak_rss_gb']:.2f} GB")
    print(f"  vip outpaint,           512 px photo : {vip512['total_s']:7.1f} s   peak {vip512['peak_rss_gb']:.2f} GB"
          f"   x{vip512['total_s'] / plain_total:.3f} of plain (goal <= 1.05)")
    print(f"  vip outpaint,          2048 px photo : {vip2048['total_s']:7.1f} s   peak {vip2048['peak_rss_gb']:.2f} GB"
          f"   x{vip2048['total_s'] / vip512['total_s']:.3f} of 512 px (goal <= 1.3, peak <= 8 GB)")
    print(f"  (benchmark wall time {time.perf_counter() - t0:.0f} s; times include process start and model load)")


if __name__ == "__main__":
    main()
