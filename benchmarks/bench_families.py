"""C-T-S on the models users pick today: SDXL inpainting and FLUX.1 Fill, full-width architectures, random weights.

    python benchmarks/bench_families.py --part build           # the SDXL folder (14 GB) and LoRA, once (~5 min)
    python benchmarks/bench_families.py --part unet            # SDXL UNet, 1024 px: C-T-S step vs plain (~10 min here)
    python benchmarks/bench_families.py --part e2e --steps 2   # vip outpaint vs a plain diffusers SDXL script (~20 min)
    python benchmarks/bench_families.py --part flux            # FLUX Fill, reduced depth, real width (~10 min)
    python benchmarks/bench_families.py --part fast --steps 2  # SDXL --fast vs the default, per step

Random weights (speed and memory do not depend on weight values). Each part prints its ratios side by side from
one run; A and B alternate (ABBA with --repeats > 1) so background load weighs on both alike. Memory: the SDXL
UNet is 2.57 B parameters (10.3 GB in fp32) and the full SDXL pipeline 3.5 B (14 GB), so run one part at a time.

- ``unet``: ``UNet2DConditionModel`` with the real SDXL inpainting config (9 input channels, 2048-wide cross-attention,
  text_time added conditioning), 1024 px canvas (128x128 latents), batch 2 (one image with classifier-free
  guidance): a plain step against a C-T-S step (Center / Surrounding routed in all 70 cross-attention layers).
- ``e2e``: the full SDXL inpainting pipeline (that UNet, both text encoders at real size, the SDXL VAE) saved as a
  diffusers folder and loaded through ``vip outpaint --model DIR``, against a plain diffusers
  ``StableDiffusionXLInpaintPipeline`` script doing the same work (2x outpaint of a 512 px photo: 1024 px canvas,
  same steps, guidance 7.5, DPM-Solver++, strength 1); each run in its own subprocess, peak RSS reported.
- ``flux``: ``FluxTransformer2DModel`` with FLUX.1 Fill's real config (3072 wide, 24 heads, 384 input channels) but
  2 double- and 4 single-stream blocks (the real model: 19 and 38, the same 1:2 mix), 1024 px = 4096 image tokens
  + 512 T5 tokens: a plain step against vip's masked joint attention over [Total | Center | Surrounding | image]
  (Total 512 tokens, each region stream 64: short prompts), and against three full 512-token streams.
- ``fast``: ``vip outpaint --fast`` with a random LoRA of LCM-LoRA-SDXL's shape (rank 64) fused, guidance off, and a
  random tiny autoencoder of TAESD-XL's shape, against the default preset at the same step count: end to end and per
  step (the denoising gain is then also the step count: 4 fast steps against 25).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_outpaint import VIP_ARGV, build_tiny_vae  # noqa: E402
from timing import (  # noqa: E402
    CANVAS,
    ONE_PROMPT,
    REGIONS,
    interleaved,
    measure,
    print_e2e,
    print_footer,
    print_steps,
    row,
    script,
    vip_script,
    write_photo,
)

# diffusers/stable-diffusion-xl-1.0-inpainting-0.1 unet/config.json (the architecture part of it)
SDXL_INPAINT_UNET = dict(
    sample_size=128,
    in_channels=9,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
)

# black-forest-labs/FLUX.1-Fill-dev transformer/config.json, with fewer blocks
FLUX_FILL_TRANSFORMER = dict(
    patch_size=1,
    in_channels=384,
    out_channels=64,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)

PLAIN_XL_SCRIPT = script(
    r"""
from diffusers import StableDiffusionXLInpaintPipeline, DPMSolverMultistepScheduler
from PIL import Image
model, photo, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.float32
pipe = StableDiffusionXLInpaintPipeline.from_pretrained(model, torch_dtype=dtype).to(device)
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
pipe.set_progress_bar_config(disable=True)
"""
    + CANVAS
    + r"""
work = (1024, 1024)
out = pipe(prompt="a photo", image=canvas.resize(work), mask_image=mask.resize(work), height=1024, width=1024,
           num_inference_steps=steps, guidance_scale=7.5, strength=1.0,
           generator=torch.Generator().manual_seed(0)).images[0]
result = out.resize(canvas.size); result.paste(image, (left, top))
result.save(sys.argv[4])
_report(total_s=time.perf_counter() - start)
"""
)

VIP_SCRIPT = vip_script(VIP_ARGV)  # outpaint's, without the parts of the run


def sdxl_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**SDXL_INPAINT_UNET)


def sdxl_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=True,
    )


def build_sdxl(folder: Path) -> Path:
    """The full SDXL inpainting pipeline, random weights, saved as a diffusers folder (once)."""
    model = folder / "sdxl"
    if (model / "model_index.json").exists():
        return model
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import write_clip_tokenizer

    torch.manual_seed(0)
    clip = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(  # CLIP ViT-L/14's text tower
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            projection_dim=768,
            hidden_act="quick_gelu",
            **clip,
        )
    )
    text_encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(  # OpenCLIP ViT-bigG/14's text tower
            hidden_size=1280,
            intermediate_size=5120,
            num_attention_heads=20,
            num_hidden_layers=32,
            projection_dim=1280,
            hidden_act="gelu",
            **clip,
        )
    )
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "_tokenizer_src"))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLInpaintPipeline(
        vae=sdxl_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=sdxl_unet(),
        scheduler=scheduler,
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(model, safe_serialization=True)
    return model


def build_sdxl_lora(folder: Path, model: Path) -> Path:
    """A random LoRA with LCM-LoRA-SDXL's shape, saved like it: rank 64 on tests/tiny_models.py's LCM_LORA_TARGETS
    (convolutions included), fp16, webui-style keys. On SDXL's inpainting UNet that is 788 modules, 196.8 M
    parameters, 393.5 MB: the hub file is 394 MB (tests/hub_listings). Without the convolutions (170.2 M parameters) it
    would understate the fuse."""
    lora = folder / "lcm-lora-sdxl-shape"  # a new name: older builds had the smaller LoRA
    if (lora / "pytorch_lora_weights.safetensors").exists():
        return lora
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from tiny_models import LCM_LORA_TARGETS

    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=64, lora_alpha=64, target_modules=LCM_LORA_TARGETS, init_lora_weights="gaussian"))
    layers = {f"unet.{name}": value for name, value in get_peft_model_state_dict(unet).items()}
    layers = {name: value.to(torch.float16) for name, value in convert_state_dict_to_kohya(layers).items()}
    lora.mkdir(parents=True, exist_ok=True)  # webui-style keys, as tests/test_sdxl.py's LoRA (every layer loads)
    save_file(layers, str(lora / "pytorch_lora_weights.safetensors"))
    return lora


def sdxl_step_inputs(size: int, channels: int, batch: int = 2) -> tuple:
    """Random inputs of one SDXL UNet pass at ``size`` px (batch 2: classifier-free guidance, the negative and
    positive branches in one pass): the latents, three text states (Total, Center, Surrounding), the added
    conditioning, and the 2x outpaint's region mask (a frame around the known center)."""
    import torch

    latent = size // 8
    sample = torch.randn(batch, channels, latent, latent)
    texts = [torch.randn(batch, 77, 2048) for _ in range(3)]
    added = {
        "text_embeds": torch.randn(batch, 1280),
        "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch, dtype=torch.float32),
    }
    mask = torch.zeros(1, 1, latent, latent)
    mask[..., :, : latent // 4] = 1.0
    mask[..., :, -latent // 4 :] = 1.0
    mask[..., : latent // 4, :] = 1.0
    mask[..., -latent // 4 :, :] = 1.0
    return sample, texts, added, mask


def part_unet(args) -> None:
    import torch

    from vipcli_model.cts.attention import CTSController, CTSState, cross_attention_names

    torch.manual_seed(0)
    unet = sdxl_unet().eval()
    latent = args.size // 8
    sample, texts, added, mask = sdxl_step_inputs(args.size, 9)
    controller = CTSController(unet, region_strength=0.5)

    def plain() -> None:
        unet(sample, 500, encoder_hidden_states=texts[0], added_cond_kwargs=added)

    def cts() -> None:
        with controller.active(CTSState(center=texts[1], surrounding=texts[2], mask=mask)):
            unet(sample, 500, encoder_hidden_states=texts[0], added_cond_kwargs=added)

    with torch.inference_mode():
        times = interleaved({"plain step": plain, "C-T-S step (zero-shot, strength 0.5)": cts}, args.repeats)
    params = sum(p.numel() for p in unet.parameters())
    print(
        f"SDXL inpainting UNet (real config, random weights, fp32, {params / 1e9:.2f} B parameters, "
        f"{len(cross_attention_names(unet))} cross-attention layers), {args.size} px = {latent}x{latent} latents, "
        f"batch 2, {torch.get_num_threads()} threads, {args.repeats} timed run(s) each after a warm-up, medians"
    )
    print_steps(times, {"C-T-S step (zero-shot, strength 0.5)": "goal <= 1.06"})


def part_e2e(args) -> None:
    work = Path(args.workdir)
    model = build_sdxl(work)
    photo = write_photo(work / "photo512.png")
    steps = str(args.steps)
    one_prompt, regions = [*ONE_PROMPT, "--device", "cpu"], [*REGIONS, "--device", "cpu"]
    jobs = {
        "plain": (PLAIN_XL_SCRIPT, str(model), str(photo), steps, str(work / "plain.png")),
        "vip": (VIP_SCRIPT, str(model), str(photo), steps, str(work / "vip.png"), *one_prompt),
    }
    if args.with_cts:
        jobs["vipcts"] = (VIP_SCRIPT, str(model), str(photo), steps, str(work / "vipcts.png"), *regions)
    results = measure(jobs, args.repeats)
    print(
        f"SDXL inpainting pipeline (real sizes, random weights, fp32 on CPU), {steps} steps, guidance 7.5, dpm++,"
        f" 2x outpaint of a 512 px photo (1024 px canvas); {args.repeats} run(s) each, medians; per step = UNet pass"
    )
    print_e2e(results, "plain diffusers SDXL script, one prompt", "vip outpaint --model DIR, one prompt")


def build_tiny_autoencoder(folder: Path) -> Path:
    """A random ``AutoencoderTiny`` of TAESD-XL's shape (diffusers' default config), as --fast loads it."""
    build_tiny_vae(folder / "taesdxl")
    return folder / "taesdxl"


def part_fast(args) -> None:
    work = Path(args.workdir)
    model = build_sdxl(work)
    lora = build_sdxl_lora(work, model)
    photo = write_photo(work / "photo512.png")
    steps = str(args.steps)
    common = [*ONE_PROMPT, "--device", "cpu"]
    taesdxl = build_tiny_autoencoder(work)
    jobs = {
        "default": (VIP_SCRIPT, str(model), str(photo), steps, str(work / "default.png"), *common),
        "fast": (
            VIP_SCRIPT,
            str(model),
            str(photo),
            steps,
            str(work / "fast.png"),
            *common,
            "--fast",
            "--fast-lora",
            str(lora),
            "--vae",
            str(taesdxl),
        ),
    }
    default, fast = measure(jobs, args.repeats).values()
    print(
        f"SDXL vip outpaint --fast (random rank-64 LoRA of LCM-LoRA-SDXL's shape, fused; lcm, guidance off) against the"
        f" default preset (dpm++, guidance 7.5), both at {steps} steps; {args.repeats} run(s) each, medians"
    )
    print(row("vip outpaint, default preset", default))
    print(row("vip outpaint --fast", fast, default))
    fast_step, default_step = statistics.median(fast["unet_s"]), statistics.median(default["unet_s"])
    print(
        f"  steps at the presets' counts: 4 x {fast_step:.1f} s (fast) against 25 x {default_step:.1f} s (default):"
        f" x{4 * fast_step / (25 * default_step):.3f} of the denoising time (computed from the per-step medians)"
    )


def token_frame(side: int):
    """The 2x outpaint's area to generate on a ``side`` x ``side`` grid of image tokens, flattened: 1 in a frame a
    quarter of the side wide around the known center."""
    import torch

    region = torch.zeros(side, side)
    quarter = side // 4
    region[:quarter], region[-quarter:], region[:, :quarter], region[:, -quarter:] = 1.0, 1.0, 1.0, 1.0
    return region.flatten()


def part_flux(args) -> None:
    import torch
    from diffusers import FluxTransformer2DModel

    from vipcli_model.pipelines.flux import REGION_TEXT_STEP, joint_attention_bias

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        **FLUX_FILL_TRANSFORMER, num_layers=args.double_blocks, num_single_layers=args.single_blocks
    ).eval()
    side = args.size // 16  # VAE factor 8, packed 2x2
    image_tokens = side * side
    text = 512
    hidden = torch.randn(1, image_tokens, 384)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
    region = token_frame(side)
    common = dict(
        hidden_states=hidden,
        pooled_projections=torch.randn(1, 768),
        timestep=torch.tensor([0.5]),
        guidance=torch.tensor([30.0]),
        img_ids=img_ids,
        return_dict=False,
    )
    plain_text = torch.randn(1, text, 4096)
    triple_text = torch.randn(1, 3 * text, 4096)
    short = REGION_TEXT_STEP  # vip's region streams for prompts of up to 64 T5 tokens (a caption fits)
    short_text = torch.randn(1, text + 2 * short, 4096)
    zero_mask = torch.zeros(1, 1, text + image_tokens, text + image_tokens)
    bias = joint_attention_bias(region, text, 0.5, torch.float32, torch.device("cpu"))
    short_bias = joint_attention_bias(region, text, 0.5, torch.float32, torch.device("cpu"), region_length=short)

    def step(text_states, mask=None):
        kwargs = {"joint_attention_kwargs": {"attention_mask": mask}} if mask is not None else {}
        return lambda: transformer(
            encoder_hidden_states=text_states, txt_ids=torch.zeros(text_states.shape[1], 3), **common, **kwargs
        )

    variants = {
        f"plain step ({text} + {image_tokens} tokens)": step(plain_text),
        "plain step with an all-zero mask": step(plain_text, zero_mask),
        f"C-T-S step, vip ({text} + 2 x {short} text + {image_tokens}, masked)": step(short_text, short_bias),
        f"C-T-S step, 3 x {text} text + {image_tokens} (masked)": step(triple_text, bias),
    }
    with torch.inference_mode():
        times = interleaved(variants, args.repeats)
    params = sum(p.numel() for p in transformer.parameters())
    print(
        f"FLUX.1 Fill transformer, real width (3072, 24 heads, 384 input channels), {args.double_blocks} double + "
        f"{args.single_blocks} single blocks ({params / 1e9:.2f} B parameters; the real one: 19 + 38, 11.9 B), random "
        f"weights, fp32, {args.size} px = {image_tokens} image tokens, {torch.get_num_threads()} threads, "
        f"{args.repeats} timed run(s) each after a warm-up, medians"
    )
    print_steps(times, {f"C-T-S step, vip ({text} + 2 x {short} text + {image_tokens}, masked)": "goal <= 1.10"})


def part_build(args) -> None:
    """Build the SDXL folder and the LoRA once (minutes), so the timed parts start from files on disk."""
    work = Path(args.workdir)
    build_sdxl_lora(work, build_sdxl(work))
    print(f"  built {work / 'sdxl'} and {work / 'lcm-lora-sdxl-shape'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("unet", "e2e", "flux", "fast", "build"), required=True)
    parser.add_argument("--size", type=int, default=1024, help="canvas in pixels (unet, flux)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps (e2e, fast)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each configuration (ABBA order)")
    parser.add_argument("--with-cts", action="store_true", help="e2e: also vip with Center/Surrounding prompts")
    parser.add_argument("--double-blocks", type=int, default=2)
    parser.add_argument("--single-blocks", type=int, default=4)
    parser.add_argument("--workdir", default="/tmp/vip-bench-families")
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    {"unet": part_unet, "e2e": part_e2e, "flux": part_flux, "fast": part_fast, "build": part_build}[args.part](args)
    print_footer(start)


if __name__ == "__main__":
    main()
