"""End-to-end speed and memory of `vip outpaint` on the full-size SD-1.5 inpainting architecture.

    python benchmarks/bench_outpaint.py --goals --repeats 2   # the goals: plain scripts, default, --fast (~20 min here)
    python benchmarks/bench_outpaint.py --repeats 2    # also C-T-S prompts and a 2048 px photo, ABBA order
    python benchmarks/bench_outpaint.py --steps 3      # a quick look (start-up dominates)

Random weights (speed and memory do not depend on weight values), built once and saved as the default preset's
files are published (fp16 safetensors, variant "fp16") in a hub cache of their own, read offline. Every run loads
them as users do on a CPU, upcast to fp32 at load: vip through `--model sd15-inpaint`, the plain scripts with
`from_pretrained(variant="fp16", dtype=torch.float32)`. Each measurement runs in its own subprocess, so peak
memory (max RSS, or peak CUDA memory on a GPU) is per run. Every script times each UNet pass the same way (a
wrapper on `UNet2DConditionModel.forward`) and the parts of the run (imports, load, LoRA load, fuse, text
encoder, autoencoder, saving: wrappers on the diffusers, transformers and PIL calls), so the figures compare
like with like. Printed side by side from one run, 2x outpaint of a 512 px photo:

  1. a plain diffusers StableDiffusionInpaintPipeline script (1024 px canvas generated at 512 px, DPM-Solver++,
     25 steps guided at 7.5) against `vip outpaint` with its default preset and one prompt;
  2. a plain diffusers script doing `--fast`'s work as LCM-LoRA's model card shows it (`load_lora_weights` +
     `fuse_lora`, LCMScheduler, 4 steps, guidance off, TAESD as the autoencoder) against `vip outpaint --fast`
     (the same LoRA: a random one of LCM-LoRA-SD1.5's shape, rank 64, 67.3 M parameters, convolutions included;
     TAESD's architecture with random weights);
  3. without `--goals`: `vip outpaint` with Center / Surrounding prompts (C-T-S attention active), and the same 2x
     outpaint of a 2048 px photo (the diffusion stays at 512 px; only the image buffers grow).

Then the speed goals, as ratios of end to end times from the same run: `--fast` <= 0.85x of the LCM-LoRA script
and <= 0.11x of the 25-step script, the default preset <= 0.60x of the 25-step script, each printed as met or
not, and where each run's time goes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
from timing import CANVAS, ONE_PROMPT, REGIONS, measure, row, script, split, vip_script  # noqa: E402
from tiny_models import LCM_LORA_TARGETS  # noqa: E402 - the modules of LCM-LoRA, shared with the tests

# The plain diffusers scripts load the model as the default preset ships it, exactly as vip does: the fp16 files
# (variant "fp16"), in fp32 on a CPU.
PLAIN_SCRIPT = script(
    r"""
from diffusers import StableDiffusionInpaintPipeline, DPMSolverMultistepScheduler
from PIL import Image
_time_parts()
_parts["imports"] = time.perf_counter() - start
model, photo, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.float32
pipe = StableDiffusionInpaintPipeline.from_pretrained(model, variant="fp16", dtype=dtype, safety_checker=None,
                                                      requires_safety_checker=False).to(device)
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
pipe.set_progress_bar_config(disable=True)
"""
    + CANVAS
    + r"""
work = (512, 512)
out = pipe(prompt="a photo", image=canvas.resize(work), mask_image=mask.resize(work), height=512, width=512,
           num_inference_steps=steps, guidance_scale=7.5, generator=torch.Generator().manual_seed(0)).images[0]
result = out.resize(canvas.size); result.paste(image, (left, top))
result.save(sys.argv[4])
_report(total_s=time.perf_counter() - start)
"""
)

# The same work with LCM-LoRA as its model card shows it: the LoRA loaded and fused, LCMScheduler, 4 steps,
# guidance off, and the tiny autoencoder (TAESD) in place of the model's VAE.
LCM_SCRIPT = script(
    r"""
from diffusers import AutoencoderTiny, LCMScheduler, StableDiffusionInpaintPipeline
from PIL import Image
_time_parts()
_parts["imports"] = time.perf_counter() - start
model, photo, lora, taesd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.float32
vae = AutoencoderTiny.from_pretrained(taesd, dtype=dtype)
pipe = StableDiffusionInpaintPipeline.from_pretrained(model, variant="fp16", dtype=dtype, vae=vae, safety_checker=None,
                                                      requires_safety_checker=False).to(device)
pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
pipe.load_lora_weights(lora, weight_name="pytorch_lora_weights.safetensors")
pipe.fuse_lora()
pipe.set_progress_bar_config(disable=True)
"""
    + CANVAS
    + r"""
work = (512, 512)
out = pipe(prompt="a photo", image=canvas.resize(work), mask_image=mask.resize(work), height=512, width=512,
           num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(0)).images[0]
result = out.resize(canvas.size); result.paste(image, (left, top))
result.save(sys.argv[5])
_report(total_s=time.perf_counter() - start)
"""
)

# vip's fuse is timed where vip calls it (vipcli_model.models.loading: fuse_lora_state_dict, the plain case, added
# straight into the weights; fuse_lora, through diffusers' LoRA layers)
# `vip outpaint` with the arguments MODEL PHOTO STEPS ("preset": the preset's) OUTPUT [OPTIONS...]
VIP_ARGV = r"""
steps = ["--steps", sys.argv[3]] if sys.argv[3] != "preset" else []
sys.argv = ["vip", "outpaint", sys.argv[2], "--ratio", "2x", "--model", sys.argv[1], *steps,
            "--seed", "0", "-o", sys.argv[4], "--overwrite", *sys.argv[5:]]
"""
VIP_SCRIPT = vip_script(
    VIP_ARGV,
    setup="""import vipcli_model.models.loading
_time_parts(vipcli_model.models.loading, "fuse_lora")
_time_part(vipcli_model.models.loading, "fuse_lora_state_dict", "fuse")
_parts["imports"] = time.perf_counter() - start
""",
)


def build_model(folder: Path) -> None:
    """Full-size SD-1.5 inpainting architecture with random weights, saved as a diffusers folder."""
    if (folder / "model_index.json").exists():
        return
    import torch
    from bench_cts import sd15_inpaint_unet, sd15_text_encoder, sd15_vae
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline
    from tiny_models import write_clip_tokenizer
    from transformers import CLIPTokenizer

    torch.manual_seed(0)
    unet = sd15_inpaint_unet()
    vae = sd15_vae()
    text_encoder = sd15_text_encoder()
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "_tokenizer_src"))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionInpaintPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "model")
    (folder / "model_index.json").write_text("{}")


def build_lora(folder: Path, model: Path) -> None:
    """A random LoRA with LCM-LoRA-SD1.5's shape (rank 64 on LCM_LORA_TARGETS), saved in fp16 like the hub file."""
    if (folder / "pytorch_lora_weights.safetensors").exists():
        return
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=64, lora_alpha=64, target_modules=LCM_LORA_TARGETS, init_lora_weights="gaussian"))
    layers = {f"unet.{name}": value for name, value in get_peft_model_state_dict(unet).items()}
    # webui-style keys with alphas, as the SDXL benchmark's LoRA: every layer loads (diffusers' own old format,
    # from convert_state_dict_to_diffusers, left a quarter of the attention layers out when loaded back)
    layers = {name: value.to(torch.float16) for name, value in convert_state_dict_to_kohya(layers).items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(layers, str(folder / "pytorch_lora_weights.safetensors"))


def build_tiny_vae(folder: Path) -> None:
    """TAESD's architecture (diffusers' AutoencoderTiny defaults: 2.4 M parameters) with random weights."""
    if (folder / "config.json").exists():
        return
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny().save_pretrained(folder)


def default_layout_snapshot(cache: Path) -> Path:
    """The folder of the default preset's files in the hub cache ``build_default_layout`` made."""
    sys.path.insert(0, str(REPO))
    from vipcli_model.config import DEFAULT_INPAINT_MODEL

    return cache / ("models--" + DEFAULT_INPAINT_MODEL.replace("/", "--")) / "snapshots" / ("0" * 40)


def build_default_layout(work: Path, model: Path) -> Path:
    """``model`` saved as the default preset's files (fp16 safetensors, variant "fp16") in a hub cache of its own
    under ``work``; returns the cache. vip finds it there by the preset's name, offline."""
    sys.path.insert(0, str(REPO))
    from vipcli_model.config import DEFAULT_INPAINT_MODEL
    from vipcli_model.models.catalog import MODEL_FILES

    cache = work / "hf-cache"
    repo = cache / ("models--" + DEFAULT_INPAINT_MODEL.replace("/", "--"))
    commit = "0" * 40
    snapshot = default_layout_snapshot(cache)
    if not (snapshot / "model_index.json").exists():
        import torch
        from diffusers import StableDiffusionInpaintPipeline

        pipe = StableDiffusionInpaintPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
        pipe.to(torch.float16).save_pretrained(snapshot, variant="fp16")
        # a hub cache names its snapshot in refs/main; this one is built here, not downloaded
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    missing = [
        name
        for name in MODEL_FILES[DEFAULT_INPAINT_MODEL].files
        if name.endswith(".safetensors") and not (snapshot / name).exists()
    ]
    if missing:
        raise SystemExit(f"the default preset's layout lacks {missing}: delete {cache} and run again")
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: vip's preset, 16)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration, in ABBA order (medians)")
    parser.add_argument("--workdir", default="/tmp/vip-bench")
    parser.add_argument(
        "--goals",
        action="store_true",
        help="only what the goals need: the plain scripts (25 steps, LCM-LoRA), the default preset and --fast",
    )
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    build_model(work)
    build_lora(work / "lcm-lora-sd15-shape", work / "model")  # a new name: older runs had a smaller LoRA
    build_tiny_vae(work / "taesd")
    cache = build_default_layout(work, work / "model")
    # every run reads the default preset's files (fp16, run in fp32 on a CPU) from a hub cache, offline
    default_layout = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "VIP_CACHE_DIR": ""}
    files = str(default_layout_snapshot(cache))
    lora, taesd = str(work / "lcm-lora-sd15-shape"), str(work / "taesd")

    import skimage.data
    from PIL import Image

    photo = Image.fromarray(skimage.data.astronaut())
    photo.save(work / "photo512.png")
    photo.resize((2048, 2048), Image.Resampling.LANCZOS).save(work / "photo2048.png")

    steps = "preset" if args.steps is None else str(args.steps)
    t0 = time.perf_counter()
    photo512 = str(work / "photo512.png")
    jobs = {
        "plain": (PLAIN_SCRIPT, files, photo512, "25" if steps == "preset" else steps, str(work / "plain.png")),
        "lcm": (LCM_SCRIPT, files, photo512, lora, taesd, str(work / "lcm.png")),
        "vip512": (VIP_SCRIPT, "sd15-inpaint", photo512, steps, str(work / "vip512.png"), *ONE_PROMPT),
        "vipcts": (VIP_SCRIPT, "sd15-inpaint", photo512, steps, str(work / "vipcts.png"), *REGIONS),
        "vip2048": (
            VIP_SCRIPT,
            "sd15-inpaint",
            str(work / "photo2048.png"),
            steps,
            str(work / "vip2048.png"),
            *ONE_PROMPT,
        ),
        "fast": (
            VIP_SCRIPT,
            "sd15-inpaint",
            photo512,
            "preset",
            str(work / "fast.png"),
            *ONE_PROMPT,
            "--fast",
            "--fast-lora",
            lora,
            "--vae",
            taesd,
        ),
    }
    if args.goals:
        jobs = {name: jobs[name] for name in ("plain", "lcm", "vip512", "fast")}
    combined = measure(jobs, args.repeats, env=default_layout, progress=True)
    plain, lcm, vip512, fast = (combined[name] for name in ("plain", "lcm", "vip512", "fast"))
    import torch

    where = f"CUDA ({torch.cuda.get_device_name()}, fp16)" if torch.cuda.is_available() else "CPU (fp32)"
    shown = "vip's preset (16)" if steps == "preset" else steps
    print(
        f"SD-1.5 inpainting architecture (random weights) in the default preset's files (fp16), {where},"
        f" {shown} steps, 2x outpaint of a 512 px photo; {args.repeats} run(s) each, medians"
    )
    print(row("plain diffusers script, 25 steps guided", plain))
    print(row("plain diffusers script, LCM-LoRA, 4 steps, TAESD", lcm, plain))
    print(row("vip outpaint, one prompt", vip512, plain))
    if "vipcts" in combined:
        print(row("vip outpaint, Center/Surrounding (C-T-S)", combined["vipcts"], plain))
        print(
            row(
                "vip outpaint, one prompt, 2048 px photo",
                combined["vip2048"],
                vip512,
                "vs 512 px; goal <= 1.3, peak <= 8 GB",
            )
        )
    print(row("vip outpaint --fast (LCM-LoRA, 4 steps, TAESD)", fast, plain))
    if steps == "preset":
        # the speed goals: ratios of end to end times from this run
        for label, result, reference, name, goal in (
            ("--fast", fast, lcm, "the plain LCM-LoRA script", 0.85),
            ("--fast", fast, plain, "the plain 25-step script", 0.11),
            ("default preset", vip512, plain, "the plain 25-step script", 0.60),
        ):
            ratio = result["total_s"] / reference["total_s"]
            verdict = "met" if ratio <= goal else "NOT met"
            print(
                f"  goal: {label} <= {goal:.2f}x of {name}: x{ratio:.3f}"
                f" ({result['total_s']:.1f} s vs {reference['total_s']:.1f} s): {verdict}"
            )
    print("  where the time goes (seconds, and x of the plain 25-step script's end to end):")
    for label, name in (("plain 25 steps", "plain"), ("plain LCM-LoRA", "lcm"), ("vip default", "vip512")):
        print(split(label, combined[name], plain))
    print(split("vip --fast", fast, plain))
    print(
        f"  (benchmark wall time {time.perf_counter() - t0:.0f} s; end to end = process start, imports, model load,"
        " VAE, steps, writing the file)"
    )


if __name__ == "__main__":
    main()
