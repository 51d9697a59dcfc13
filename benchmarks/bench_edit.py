"""End-to-end speed of `vip edit` against a plain diffusers InstructPix2Pix script, full-size architecture.

    python benchmarks/bench_edit.py --steps 10                # about 5 min on 2 CPU cores
    python benchmarks/bench_edit.py --steps 10 --repeats 2    # ABBA order, medians

Random weights (speed does not depend on weight values): the SD-1.5 UNet with an 8-channel input (InstructPix2Pix),
SD-1.x's VAE and CLIP text encoder, saved as a diffusers folder and loaded through `--model DIR` as a user's model is.
Each measurement runs in its own subprocess. The plain script does the same work as `vip edit`: load, scale the photo
to 512 px, edit it with the model's own scheduler (same steps, guidance 7, image guidance 1.5), scale the result back
to the photo's size and save it. `vip edit` adds the change mask (one extra VAE decode), the paste-back and the
metadata. Goal: vip <= 1.05x the plain script end to end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from timing import measure, row, script, vip_script, write_photo  # noqa: E402

PLAIN_SCRIPT = script(
    r"""
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image
model, photo, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.float32
pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False,
                                                              torch_dtype=dtype).to(device)
pipe.set_progress_bar_config(disable=True)
image = Image.open(photo).convert("RGB")
scale = min(1.0, 512 / max(image.size))
work = image.resize((round(image.width * scale / 8) * 8, round(image.height * scale / 8) * 8))
out = pipe(prompt="add a red boat", image=work, num_inference_steps=steps, guidance_scale=7.0,
           image_guidance_scale=1.5, generator=torch.Generator().manual_seed(0)).images[0]
out.resize(image.size).save(sys.argv[4])
_report(total_s=time.perf_counter() - start)
"""
)

VIP_SCRIPT = vip_script(
    r"""
sys.argv = ["vip", "edit", sys.argv[2], "add a red boat", "--model", sys.argv[1], "--steps", sys.argv[3],
            "--seed", "0", "-o", sys.argv[4], "--overwrite", *sys.argv[5:]]
"""
)


def build_model(folder: Path) -> Path:
    """Full-size InstructPix2Pix architecture (SD-1.5, 8-channel UNet) with random weights, as a diffusers folder."""
    target = folder / "ip2p"
    if (target / "model_index.json").exists():
        return target
    import torch
    from bench_cts import sd15_text_encoder, sd15_vae
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import write_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, in_channels=8, out_channels=4, cross_attention_dim=768)
    text_encoder = sd15_text_encoder()
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "_tokenizer_src"))
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = StableDiffusionInstructPix2PixPipeline(
        unet=unet,
        vae=sd15_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (vip edit's default is 50)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration, in ABBA order (medians)")
    parser.add_argument("--workdir", default="/tmp/vip-bench-edit")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = str(build_model(work))

    write_photo(work / "photo512.png")
    t0 = time.perf_counter()
    jobs = {
        "plain": (PLAIN_SCRIPT, model, str(work / "photo512.png"), str(args.steps), str(work / "plain.png")),
        "vip": (VIP_SCRIPT, model, str(work / "photo512.png"), str(args.steps), str(work / "vip.png")),
    }
    plain, vip = measure(jobs, args.repeats).values()
    import torch

    where = f"CUDA ({torch.cuda.get_device_name()}, fp16)" if torch.cuda.is_available() else "CPU (fp32)"
    print(
        f"InstructPix2Pix architecture (SD-1.5, random weights), {where}, {args.steps} steps, guidance 7 / image 1.5,"
        f" a 512 px photo; {args.repeats} run(s) each, medians"
    )
    print(row("plain diffusers script", plain))
    print(row("vip edit", vip, plain, "goal <= 1.05"))
    print(
        f"  (benchmark wall time {time.perf_counter() - t0:.0f} s; per step = one UNet pass, the three guidance"
        " branches batched)"
    )


if __name__ == "__main__":
    main()
