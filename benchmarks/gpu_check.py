"""The GPU figures in one run: vip against plain diffusers, every memory plan that fits, the detail pass.

    python benchmarks/gpu_check.py                       # one CUDA GPU, no network: under 8 minutes on an H100
    python benchmarks/gpu_check.py --families sd15,sdxl  # a part of it
    python benchmarks/gpu_check.py --device cpu --tiny   # the same steps on tiny models: seconds (the tests run it)

The models are the full-size SD-1.5 inpainting, SDXL inpainting and FLUX.1 Fill architectures with random weights
(speed and memory do not depend on weight values), built on the device from their recorded configs
(``bench_outpaint.py``, ``bench_cts.py``, ``bench_families.py``; FLUX at its full 19 + 38 blocks) in half precision
(fp16; FLUX bf16, as vip runs it) and saved as diffusers folders under ``--workdir``, with a random LoRA of
LCM-LoRA's shape and TAESD's architecture for ``--fast``. Nothing is downloaded. Then, one family at a time:

1. ``default`` and ``fast``: vip (the library's ``outpaint_images``, the model loaded once by ``Outpainter``) and
   the plain diffusers pipeline doing the same work side by side: a 2x outpaint of a 512 px photo, one prompt,
   vip's preset against the plain pipeline's usual settings (SD and SDXL: 25 DPM-Solver++ steps guided at 7.5;
   FLUX Fill: 28 steps at guidance 30) and ``--fast`` against LCM-LoRA loaded and fused in diffusers (LCMScheduler,
   4 steps, guidance off, TAESD). Load and generation are timed apart; peak GPU memory per run.
2. ``memory``: every memory plan that fits the free memory (``full``, ``model-offload``, ``group-offload``; ``8bit``
   and ``4bit`` for FLUX Fill where bitsandbytes is installed), loaded through ``ModelConfig(memory=...)``, one
   image at ``--plan-steps`` steps: its peak GPU memory against the plan's own estimate (``models/memory.py``).
3. ``detail``: the detail pass on a 12 MP photo (4000x3000) at 2x with SD-1.5 (the goal: under 60 s).

It prints one table and writes it as JSON (``--json``). ``--budget`` seconds (default 450) stop it early: what is
left is listed as skipped, so a lent GPU always gives a table. ``--tiny`` builds the tests' tiny models instead
(``tests/tiny_models.py``), with a 48 px photo and a 96 px one for the detail pass.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

FAMILIES = ("sd15", "sdxl", "flux")
PLANS = ("full", "model-offload", "group-offload", "8bit", "4bit")
# the plain diffusers pipeline of each family
PIPELINES = {
    "sd15": "StableDiffusionInpaintPipeline",
    "sdxl": "StableDiffusionXLInpaintPipeline",
    "flux": "FluxFillPipeline",
}
# the plain pipeline's usual settings, as its documentation shows them: (steps, guidance)
PLAIN_SETTINGS = {"sd15": (25, 7.5), "sdxl": (25, 7.5), "flux": (28, 30.0)}
# FLUX.1-Fill-dev's text encoders: CLIP ViT-L/14's text tower and T5 v1.1 XXL's encoder
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, is_encoder_decoder=False)  # fmt: skip


def flux_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(  # FLUX.1's autoencoder: 16 latent channels, no quant convolutions
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=16,
        layers_per_block=2,
        sample_size=1024,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )


def build_flux(folder: Path) -> Path:
    """FLUX.1 Fill at full size (11.9 B parameters in the transformer, T5-XXL's encoder), random weights."""
    if (folder / "model_index.json").exists():
        return folder
    from bench_families import FLUX_FILL_TRANSFORMER
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxTransformer2DModel
    from tiny_models import write_clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    tokenizer_source = write_clip_tokenizer(folder.parent / "_tokenizer_src")
    pipe = FluxFillPipeline(
        transformer=FluxTransformer2DModel(**FLUX_FILL_TRANSFORMER, num_layers=19, num_single_layers=38),
        text_encoder=CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_attention_heads=12,
                num_hidden_layers=12,
                projection_dim=768,
                vocab_size=49408,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
            )
        ),  # fmt: skip
        text_encoder_2=T5EncoderModel(T5Config(**T5_XXL)),
        # any tokenizer that pads to the sequence length serves random weights (T5 has relative positions)
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_source),
        tokenizer_2=CLIPTokenizer.from_pretrained(tokenizer_source, model_max_length=512),
        vae=flux_vae(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
    )
    pipe.save_pretrained(folder)  # made in bf16 on the GPU (``made_on``)
    return folder


def build_sd15(folder: Path) -> Path:
    from bench_outpaint import build_model

    build_model(folder)  # the folder's model/ subfolder
    return folder / "model"


def build_sdxl(folder: Path) -> Path:
    from bench_families import build_sdxl as build

    return build(folder)  # the folder's sdxl/ subfolder


@contextlib.contextmanager
def made_on(device: str, dtype):
    """New modules' weights made on ``device`` in ``dtype`` (random init of 12 B parameters: seconds on a GPU)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_lora(folder: Path, model: Path, rank: int) -> Path:
    """A random LoRA of LCM-LoRA's shape (tests/tiny_models.py's LCM_LORA_TARGETS), fp16, webui-style keys."""
    if (folder / "pytorch_lora_weights.safetensors").exists():
        return folder
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from tiny_models import LCM_LORA_TARGETS

    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LCM_LORA_TARGETS, init_lora_weights="gaussian"))
    layers = {f"unet.{name}": value for name, value in get_peft_model_state_dict(unet).items()}
    folder.mkdir(parents=True, exist_ok=True)
    layers = {name: value.to(torch.float16) for name, value in convert_state_dict_to_kohya(layers).items()}
    save_file(layers, str(folder / "pytorch_lora_weights.safetensors"))
    return folder


def build(work: Path, families: list[str], tiny: bool, device: str) -> dict[str, dict]:
    """Each family's folder, and for SD / SDXL the LoRA and tiny autoencoder of ``--fast``."""
    built: dict[str, dict] = {}
    for family in families:
        folder = work / (f"tiny-{family}" if tiny else family)
        if tiny:
            from tiny_models import save_tiny_flux_fill_model, save_tiny_inpaint_model, save_tiny_sdxl_inpaint_model

            save = {"sd15": save_tiny_inpaint_model, "sdxl": save_tiny_sdxl_inpaint_model}
            if not (folder / "model_index.json").exists():
                save.get(family, save_tiny_flux_fill_model)(folder)
        else:
            import torch

            half = torch.bfloat16 if family == "flux" else torch.float16
            with made_on(device, half if device.startswith("cuda") else torch.float32):
                folder = {"sd15": build_sd15, "sdxl": build_sdxl, "flux": build_flux}[family](folder)
        entry = {"model": folder}
        if family != "flux":
            entry["lora"] = build_lora(folder.parent / f"{folder.name}-lora", folder, rank=4 if tiny else 64)
            taesd = folder.parent / f"{folder.name}-taesd"
            if not (taesd / "config.json").exists():
                if tiny:
                    from tiny_models import save_tiny_autoencoder_tiny

                    save_tiny_autoencoder_tiny(taesd)
                else:
                    from diffusers import AutoencoderTiny

                    AutoencoderTiny().save_pretrained(taesd)  # TAESD's (and TAESD-XL's) architecture
            entry["taesd"] = taesd
        built[family] = entry
    return built


class Meter:
    """Seconds and peak GPU memory (GB, None off CUDA) of a block."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.peak_gb = torch.cuda.max_memory_allocated() / 1e9 if self.cuda else None


def vip_run(entry: dict, photo: Path, out: Path, device: str, preset: str, *, memory="auto", steps=None, detail=None):
    """vip through its library: load once (``Outpainter``), then ``outpaint_images``. Returns the figures."""
    from vipcli_model.config import DetailConfig, ExpansionConfig, GenerationConfig, ModelConfig, PromptConfig
    from vipcli_model.outpainting.outpainter import Outpainter
    from vipcli_model.outpainting.run import OutpaintJob, outpaint_images

    fast = preset == "fast"
    model = ModelConfig(
        model=str(entry["model"]),
        device=device,
        memory=memory,
        fast=fast,
        fast_lora=str(entry["lora"]) if fast else None,
        vae=str(entry["taesd"]) if fast else None,
    )
    job = OutpaintJob(
        expansion=ExpansionConfig(ratio="2x"),
        prompts=PromptConfig(center="a photo", surrounding="a room"),
        generation=GenerationConfig(seed=0, steps=steps),
        detail=detail or DetailConfig(mode="off"),
        model=model,
        output=out,
        overwrite=True,
    )
    meter = Meter(device)
    with Meter(device) as load:
        outpainter = Outpainter(model)
    with meter:
        run = outpaint_images([photo], job, outpainter=outpainter)
    if run.failures:
        raise RuntimeError(str(run.failures[0].error))
    plan = outpainter.pipe.vip_memory_plan
    del outpainter
    return {
        "load_s": load.seconds,
        "run_s": meter.seconds,
        "peak_gb": max(value for value in (load.peak_gb, meter.peak_gb) if value is not None)
        if meter.peak_gb is not None
        else None,
        "plan": plan.mode + (f" {plan.quantize}" if plan.quantize else ""),
        "estimate_gb": plan.needed_gb,
    }


def plain_run(family: str, entry: dict, photo: Path, out: Path, device: str, preset: str, steps=None) -> dict:
    """The plain diffusers pipeline doing the same work: its usual settings, or LCM-LoRA for ``fast``."""
    import diffusers
    import torch
    from diffusers import AutoencoderTiny, DPMSolverMultistepScheduler, LCMScheduler
    from PIL import Image

    from vipcli_model.models.loading import DTYPE_KEYWORD

    dtype = torch.float32 if device == "cpu" else (torch.bfloat16 if family == "flux" else torch.float16)
    extra = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    with Meter(device) as load:
        if preset == "fast":
            extra["vae"] = AutoencoderTiny.from_pretrained(entry["taesd"], **{DTYPE_KEYWORD: dtype})
        pipeline = getattr(diffusers, PIPELINES[family])
        pipe = pipeline.from_pretrained(entry["model"], **{DTYPE_KEYWORD: dtype}, **extra).to(device)
        if preset == "fast":
            pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
            pipe.load_lora_weights(str(entry["lora"]), weight_name="pytorch_lora_weights.safetensors")
            pipe.fuse_lora()
        elif family != "flux":
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(
                pipe.scheduler.config, algorithm_type="dpmsolver++"
            )
    pipe.set_progress_bar_config(disable=True)
    usual, guidance = (4, 1.0) if preset == "fast" else PLAIN_SETTINGS[family]
    steps = steps or usual
    with Meter(device) as meter:
        image = Image.open(photo).convert("RGB")
        canvas = Image.new("RGB", (image.width * 2, image.height * 2))
        canvas.paste(image, (image.width // 2, image.height // 2))
        mask = Image.new("L", canvas.size, 255)
        mask.paste(0, (image.width // 2, image.height // 2, image.width * 3 // 2, image.height * 3 // 2))
        size = pipe.vae_scale_factor * (64 if family == "sd15" else 128) if image.width >= 256 else canvas.width
        result = pipe(
            prompt="a photo",
            image=canvas.resize((size, size)),
            mask_image=mask.resize((size, size)),
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=guidance,
            strength=1.0,  # as vip runs them (SDXL's pipeline defaults to 0.9999: one step fewer)
            generator=torch.Generator().manual_seed(0),
        ).images[0]
        result = result.resize(canvas.size)
        result.paste(image, (image.width // 2, image.height // 2))
        result.save(out)
    del pipe
    return {"load_s": load.seconds, "run_s": meter.seconds, "peak_gb": meter.peak_gb}


def plan_run(entry: dict, photo: Path, out: Path, device: str, plan: str, steps: int) -> dict:
    """One image under a memory plan: its peak GPU memory against the plan's estimate."""
    result = vip_run(entry, photo, out, device, "default", memory=plan, steps=steps)
    unknown = result["estimate_gb"] is None or result["peak_gb"] is None
    result["within_estimate"] = None if unknown else result["peak_gb"] <= result["estimate_gb"]
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny: the tests' check)")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny models instead of the full-size ones")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"some of {','.join(FAMILIES)}")
    parser.add_argument("--steps", type=int, default=None, help="steps of every side-by-side run (default: each's own)")
    parser.add_argument("--plan-steps", type=int, default=2, help="steps of each memory plan's image")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds; what is left after them is skipped")
    parser.add_argument("--workdir", default="/tmp/vip-gpu-check")
    parser.add_argument("--json", default=None, help="where the table goes as JSON (default: WORKDIR/gpu_check.json)")
    args = parser.parse_args(argv)
    families = [name.strip() for name in args.families.split(",") if name.strip()]
    if unknown := sorted(set(families) - set(FAMILIES)):
        parser.error(f"--families: {', '.join(unknown)} not among {', '.join(FAMILIES)}")
    import importlib.util

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU here (use --device cpu --tiny to check the script itself)")
    if args.tiny and args.device == "cpu":
        torch.set_num_threads(1)  # tiny models: thread start-up costs more than it gives, on a busy machine much more
    start = time.perf_counter()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    built = build(work, families, args.tiny, args.device)
    import skimage.data
    from PIL import Image

    side = 48 if args.tiny else 512
    astronaut = Image.fromarray(skimage.data.astronaut())
    photo = work / f"photo{side}.png"
    astronaut.resize((side, side)).save(photo)
    rows: list[dict] = []
    build_s = time.perf_counter() - start

    def record(check: str, family: str, what: str, measure, *arguments, **keywords) -> None:
        row = {"check": check, "family": family, "what": what}
        if time.perf_counter() - start > args.budget:
            row["skipped"] = f"over the {args.budget:.0f} s budget"
        else:
            try:
                row.update(measure(*arguments, **keywords))
            except Exception as exc:  # noqa: BLE001 - every check reports, the next one still runs
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        rows.append(row)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    out = work / "out.png"
    for family, entry in built.items():
        for preset in ("default", "fast") if family != "flux" else ("default",):
            record(preset, family, "vip", vip_run, entry, photo, out, args.device, preset, steps=args.steps)
            record(
                preset, family, "plain diffusers", plain_run, family, entry, photo, out, args.device, preset, args.steps
            )
        bitsandbytes = importlib.util.find_spec("bitsandbytes") is not None
        for plan in PLANS:
            if plan in ("8bit", "4bit") and (family != "flux" or not bitsandbytes):
                continue  # vip quantizes FLUX Fill's transformer only, with bitsandbytes
            if not args.device.startswith("cuda") and plan != "full":
                rows.append({"check": "memory", "family": family, "what": plan, "skipped": "needs a CUDA GPU"})
                continue

            record("memory", family, plan, plan_run, entry, photo, out, args.device, plan, args.plan_steps)
    if "sd15" in built:
        from vipcli_model.config import DetailConfig

        big = work / ("detail96.png" if args.tiny else "detail12mp.png")
        astronaut.resize((96, 72) if args.tiny else (4000, 3000)).save(big)

        def detail():
            detail_on = DetailConfig("on")
            result = vip_run(
                built["sd15"], big, work / "detail.png", args.device, "default", steps=args.steps, detail=detail_on
            )
            result["goal"] = "run under 60 s"
            return result

        record("detail", "sd15", "12 MP at 2x" if not args.tiny else "96x72 at 2x", detail)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "CPU"
    report = {
        "device": device,
        "tiny": args.tiny,
        "torch": torch.__version__,
        "build_s": build_s,
        "total_s": time.perf_counter() - start,
        "rows": rows,
    }
    print_table(report)
    target = Path(args.json) if args.json else work / "gpu_check.json"
    target.write_text(json.dumps(report, indent=2))
    print(f"written: {target}")
    return report


def print_table(report: dict) -> None:
    def number(value, unit: str) -> str:
        return f"{value:.2f}{unit}" if isinstance(value, float) else "-"

    print(f"{report['device']}{' (tiny models)' if report['tiny'] else ''}: built in {report['build_s']:.0f} s,"
          f" checked in {report['total_s']:.0f} s")  # fmt: skip
    print(f"{'check':<8} {'family':<6} {'what':<16} {'load':>8} {'run':>8} {'peak':>9} {'estimate':>9}  note")
    for row in report["rows"]:
        note = row.get("skipped") or row.get("error") or row.get("plan", "")
        if row.get("within_estimate") is not None:
            note += " within the estimate" if row["within_estimate"] else " OVER the estimate"
        print(
            f"{row['check']:<8} {row['family']:<6} {row['what']:<16} {number(row.get('load_s'), ' s'):>8}"
            f" {number(row.get('run_s'), ' s'):>8} {number(row.get('peak_gb'), ' GB'):>9}"
            f" {number(row.get('estimate_gb'), ' GB'):>9}  {note}"
        )


if __name__ == "__main__":
    main()
