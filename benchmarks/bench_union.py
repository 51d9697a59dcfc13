"""SDXL + ControlNet Union: real width, reduced depth, random weights; ratios from one run.

    python benchmarks/bench_union.py --part step --repeats 2      # ControlNet + UNet: C-T-S step vs plain step
    python benchmarks/bench_union.py --part e2e --steps 2         # vip outpaint vs a plain diffusers script
    python benchmarks/bench_union.py --part routing               # C-T-S in the ControlNet too: what it changes

- ``step``: a ``ControlNetUnionModel`` with the ProMax's config and an SDXL text-to-image UNet at real width
  (320/640/1280 channels, 2048-wide cross-attention, text_time conditioning) but 2 transformer layers in the
  deepest blocks instead of 10 (the ControlNet likewise), batch 2 (classifier-free guidance): one denoising step is
  the ControlNet's pass then the UNet's with its residuals; plain against C-T-S (zero-shot, strength 0.5, Center /
  Surrounding routed in every cross-attention of the UNet).
- ``e2e``: that UNet and ControlNet with both CLIP text encoders at real width but 2 layers each and the real SDXL
  VAE, saved as diffusers folders; ``vip outpaint --model DIR --controlnet DIR`` against a plain diffusers
  ``StableDiffusionXLControlNetUnionInpaintPipeline`` script doing the same work (2x outpaint of a 256 px photo on
  the model's 512 px working size: the UNet's sample_size is 64 here; the same steps, guidance 5, DPM-Solver++,
  strength 1, the control image with the area to generate black, pixels pasted back); each run in its own
  subprocess, ABBA order.
- ``routing``: the tiny models of ``tests/tiny_models.py`` (seeded random weights), 4 steps: how much routing the
  region prompts in the ControlNet's cross-attention as well as the UNet's changes the image, against what the
  UNet's routing itself changes (the pipeline ships the UNet's only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_families import SDXL_INPAINT_UNET, sdxl_step_inputs  # noqa: E402
from timing import (  # noqa: E402
    CANVAS,
    ONE_PROMPT,
    REGIONS,
    interleaved,
    measure,
    print_e2e,
    print_footer,
    print_steps,
    script,
    vip_script,
    write_photo,
)

DEPTH = (1, 2, 2)  # transformer layers per down block (the real SDXL: 1, 2, 10)
BASE_UNET = {**SDXL_INPAINT_UNET, "in_channels": 4, "transformer_layers_per_block": DEPTH}
# xinsir/controlnet-union-sdxl-1.0 config_promax.json (the architecture part of it), with the reduced depth
PROMAX = dict(
    in_channels=4,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=DEPTH,
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    conditioning_embedding_out_channels=(16, 32, 96, 256),
    num_control_type=8,
    num_trans_channel=320,
    num_trans_head=8,
    num_trans_layer=1,
    num_proj_channel=320,
)

PLAIN_SCRIPT = script(
    r"""
import numpy as np
from diffusers import ControlNetUnionModel, DPMSolverMultistepScheduler, StableDiffusionXLControlNetUnionInpaintPipeline
from PIL import Image
model, controlnet, photo, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
net = ControlNetUnionModel.from_pretrained(controlnet)
pipe = StableDiffusionXLControlNetUnionInpaintPipeline.from_pretrained(model, controlnet=net)
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
pipe.set_progress_bar_config(disable=True)
"""
    + CANVAS
    + r"""
control = np.array(canvas); control[np.array(mask) >= 128] = 0
out = pipe(prompt="a photo", image=canvas, mask_image=mask, control_image=Image.fromarray(control), control_mode=7,
           height=canvas.height, width=canvas.width, num_inference_steps=steps, guidance_scale=5.0, strength=1.0,
           generator=torch.Generator().manual_seed(0)).images[0]
out.paste(image, (left, top))
out.save(sys.argv[5])
_report(total_s=time.perf_counter() - start)
"""
)

VIP_SCRIPT = vip_script(
    r"""
sys.argv = ["vip", "outpaint", sys.argv[3], "--ratio", "2x", "--model", sys.argv[1], "--controlnet", sys.argv[2],
            "--steps", sys.argv[4], "--seed", "0", "-o", sys.argv[5], "--overwrite", "--device", "cpu",
            "--detail", "off", *sys.argv[6:]]
"""
)


def base_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**BASE_UNET)


def promax():
    from diffusers import ControlNetUnionModel

    return ControlNetUnionModel(**PROMAX)


def part_step(args) -> None:
    import torch

    from vipcli_model.cts.attention import CTSController, CTSState, cross_attention_names

    torch.manual_seed(0)
    unet, controlnet = base_unet().eval(), promax().eval()
    latent = args.size // 8
    batch = 2
    sample, texts, added, mask = sdxl_step_inputs(args.size, 4, batch)
    control = torch.rand(batch, 3, args.size, args.size)
    control_type = torch.zeros(batch, 8)
    control_type[:, 7] = 1
    controller = CTSController(unet, region_strength=0.5)

    def step() -> None:
        down, mid = controlnet(
            sample,
            500,
            encoder_hidden_states=texts[0],
            controlnet_cond=[control],
            control_type=control_type,
            control_type_idx=[7],
            added_cond_kwargs=added,
            return_dict=False,
        )
        unet(
            sample,
            500,
            encoder_hidden_states=texts[0],
            added_cond_kwargs=added,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        )

    def cts() -> None:
        with controller.active(CTSState(center=texts[1], surrounding=texts[2], mask=mask)):
            step()

    with torch.inference_mode():
        times = interleaved(
            {"plain step (ControlNet + UNet)": step, "C-T-S step (zero-shot, strength 0.5)": cts}, args.repeats
        )
    unet_params = sum(p.numel() for p in unet.parameters())
    net_params = sum(p.numel() for p in controlnet.parameters())
    print(
        f"SDXL UNet (4 channels, real width, transformer layers {DEPTH}, {unet_params / 1e9:.2f} B parameters, "
        f"{len(cross_attention_names(unet))} cross-attention layers) + ControlNet Union ProMax (same depth, "
        f"{net_params / 1e9:.2f} B), random weights, fp32, {args.size} px = {latent}x{latent} latents, batch 2, "
        f"{torch.get_num_threads()} threads, {args.repeats} timed run(s) each after a warm-up, medians"
    )
    print_steps(times, {"C-T-S step (zero-shot, strength 0.5)": "goal <= 1.06"})


def build(folder: Path) -> tuple[Path, Path]:
    """The reduced-depth SDXL text-to-image pipeline and ProMax, random weights, saved once."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    model, net = folder / "sdxl-base-reduced", folder / "promax-reduced"
    if (model / "model_index.json").exists() and (net / "config.json").exists():
        return model, net
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import write_clip_tokenizer

    torch.manual_seed(0)
    unet = base_unet()
    unet.register_to_config(sample_size=64)  # 512 px working size
    common = dict(vocab_size=49408, max_position_embeddings=77, num_hidden_layers=2, hidden_act="gelu")
    encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, **common))
    encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, projection_dim=1280, **common)
    )
    tokenizer_dir = folder / "tokenizer"
    write_clip_tokenizer(tokenizer_dir)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
        scaling_factor=0.13025,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=encoder,
        text_encoder_2=encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        tokenizer_2=CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=unet,
        scheduler=scheduler,
    )
    pipe.save_pretrained(model, safe_serialization=True)
    promax().save_pretrained(net, safe_serialization=True)
    return model, net


def part_e2e(args) -> None:
    work = Path(args.workdir)
    model, net = build(work)
    photo = write_photo(work / "photo256.png", 256)
    steps = str(args.steps)
    jobs = {
        "plain": (PLAIN_SCRIPT, str(model), str(net), str(photo), steps, str(work / "plain.png")),
        "vip": (VIP_SCRIPT, str(model), str(net), str(photo), steps, str(work / "vip.png"), *ONE_PROMPT),
    }
    if args.with_cts:
        jobs["vipcts"] = (VIP_SCRIPT, str(model), str(net), str(photo), steps, str(work / "vipcts.png"), *REGIONS)
    results = measure(jobs, args.repeats)
    print(
        f"SDXL text-to-image + ControlNet Union ProMax (real width, reduced depth {DEPTH}, 2-layer text encoders, "
        f"real VAE, random weights, fp32 on CPU), {steps} steps, guidance 5, dpm++, 2x outpaint of a 256 px photo "
        f"(512 px canvas); {args.repeats} run(s) each, medians; per step = UNet pass"
    )
    print_e2e(results, "plain diffusers ControlNet Union script", "vip outpaint --controlnet DIR, one prompt")


def part_routing(args) -> None:
    import tempfile

    import numpy as np
    import torch
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import save_tiny_controlnet_union, save_tiny_sdxl_base_model

    from vipcli_model.config import ModelConfig
    from vipcli_model.cts.attention import CTSController
    from vipcli_model.models.loading import load_pipeline

    folder = Path(tempfile.mkdtemp())
    save_tiny_sdxl_base_model(folder / "base")
    save_tiny_controlnet_union(folder / "union")
    pipe = load_pipeline(ModelConfig(model=str(folder / "base"), controlnet=str(folder / "union"), device="cpu"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    generate = np.zeros((64, 64), dtype=bool)
    generate[:, :16] = generate[:, -16:] = True
    mask = Image.fromarray(generate.astype(np.uint8) * 255)

    def run(**regions) -> np.ndarray:
        return pipe(
            prompt="a barn in a field",
            image=image,
            mask_image=mask,
            num_inference_steps=4,
            strength=1.0,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            **regions,
        ).images[0]

    regions = {"center_prompt": "a red barn", "surrounding_prompt": "snowy mountains", "region_strength": 1.0}
    plain, unet_only = run(), run(**regions)
    own, net = pipe.parent_call, CTSController(pipe.controlnet, region_strength=1.0)

    def with_controlnet(call):  # the UNet's C-T-S state, held on the ControlNet too
        state = (call.get("cross_attention_kwargs") or {}).get("cts")
        if state is None:
            return own(call)
        with net.active(state.state):
            return own(call)

    pipe.parent_call = with_controlnet
    both = run(**regions)
    pipe.parent_call = own
    unet_change, extra = np.abs(unet_only - plain), np.abs(both - unet_only)
    print("tiny SDXL + tiny ControlNet Union ProMax (tests/tiny_models.py), 64 px, 4 steps, region strength 1")
    print(f"  UNet routing vs plain: generated area mean |diff| {unet_change[generate].mean():.4f}")
    print(
        f"  UNet + ControlNet routing vs UNet routing: generated area {extra[generate].mean():.4f}, "
        f"known area {extra[~generate].mean():.5f} (before paste-back); vs plain: "
        f"{np.abs(both - plain)[generate].mean():.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("step", "e2e", "routing"), required=True)
    parser.add_argument("--size", type=int, default=512, help="step: canvas side in pixels")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--with-cts", action="store_true", help="e2e: also vip with region prompts")
    parser.add_argument("--workdir", default="/tmp/vip-bench-union")
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    {"step": part_step, "e2e": part_e2e, "routing": part_routing}[args.part](args)
    print_footer(start)


if __name__ == "__main__":
    main()
