"""C-T-S on FLUX.2 [klein]: the transformer step at real width, and vip against a plain diffusers script end to end.

    python benchmarks/bench_klein.py --part step --size 512 --repeats 2     # a few minutes on a CPU
    python benchmarks/bench_klein.py --part step --size 1024 --repeats 1 --no-zero-mask   # ~15 min on a CPU
    python benchmarks/bench_klein.py --part e2e --steps 2                   # ~10 min on a CPU
    python benchmarks/bench_klein.py --part filler                          # the tiny test model, ~2 min

Random weights (speed does not depend on weight values). Each part prints its ratios side by side from one run; the
configurations alternate (ABBA with --repeats > 1) so background load weighs on all alike.

- ``step``: ``Flux2Transformer2DModel`` with FLUX.2 [klein] 4B's real config (3072 wide: 24 heads of 128, 128 input
  channels, Qwen3 text states 7680 wide, rope over 4 axes) but 1 double- and 2 single-stream blocks (the real
  model: 5 and 20). The sequence is [text | target | reference]: 512 Total tokens, and as many reference tokens as
  target tokens (the canvas, in context). A plain step against vip's step with the masked joint attention over
  [Total | Center | Surrounding | target | reference] (each region stream 64 tokens).
- ``e2e``: a FLUX.2 [klein] pipeline saved as a diffusers folder: the transformer narrower (1024 wide: 8 heads,
  1 + 2 blocks), a Qwen3 encoder of 28 layers at width 256 with a byte-level tokenizer, an autoencoder of the real
  layout at quarter width; ``vip outpaint --model DIR`` (2x outpaint of a 512 px photo: the 1024 px canvas) against
  a plain ``Flux2KleinInpaintPipeline`` script doing the same work (canvas, the same working size, strength 1,
  guidance off, paste-back, save), each run in its own subprocess. A narrow model makes vip's fixed costs (canvas,
  blending, metadata) weigh more than they do on the real one: the ratio is an upper bound.
- ``filler``: on the tests' tiny FLUX.2 [klein] (``tests/tiny_flux2.py``; 4 steps), how far the generated area is
  from the filler, and how much two fillers (black, white) change it, with the reference tokens over the filler
  seen (the model's way) and hidden (``hide_reference_filler``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
from bench_families import token_frame  # noqa: E402
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

# black-forest-labs/FLUX.2-klein-4B transformer/config.json, with fewer blocks
KLEIN_4B_TRANSFORMER = dict(
    patch_size=1,
    in_channels=128,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=7680,
    timestep_guidance_channels=256,
    mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32),
    rope_theta=2000,
    guidance_embeds=False,
)

# The scripts time the transformer's passes (the report's "unet_s" key is the denoiser's passes).
PLAIN_SCRIPT = script(
    r"""
from diffusers import Flux2KleinInpaintPipeline
from PIL import Image
model, photo, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
pipe = Flux2KleinInpaintPipeline.from_pretrained(model)
pipe.set_progress_bar_config(disable=True)
"""
    + CANVAS
    + r"""
work = (1024, 1024)
out = pipe(prompt="a photo", image=canvas.resize(work), mask_image=mask.resize(work), num_inference_steps=steps,
           guidance_scale=1.0, strength=1.0, generator=torch.Generator().manual_seed(0)).images[0]
result = out.resize(canvas.size); result.paste(image, (left, top))
result.save(sys.argv[4])
_report(total_s=time.perf_counter() - start)
""",
    denoiser="Flux2Transformer2DModel",
)

VIP_SCRIPT = vip_script(
    r"""
sys.argv = ["vip", "outpaint", sys.argv[2], "--ratio", "2x", "--model", sys.argv[1], "--steps", sys.argv[3],
            "--seed", "0", "--detail", "off", "-o", sys.argv[4], "--overwrite", *sys.argv[5:]]
""",
    denoiser="Flux2Transformer2DModel",
)


def part_step(args) -> None:
    import torch
    from diffusers import Flux2Transformer2DModel

    from vipcli_model.pipelines.flux import REGION_TEXT_STEP
    from vipcli_model.pipelines.flux2_klein import klein_attention_bias

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        **KLEIN_4B_TRANSFORMER, num_layers=args.double_blocks, num_single_layers=args.single_blocks
    ).eval()
    side = args.size // 16  # VAE factor 8, packed 2x2
    tokens = side * side
    text, short = 512, REGION_TEXT_STEP
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    target_ids = torch.stack([torch.zeros_like(rows), rows, cols, torch.zeros_like(rows)], dim=-1).reshape(-1, 4)
    reference_ids = target_ids.clone()
    reference_ids[:, 0] = 10  # diffusers' time offset of the first reference image
    img_ids = torch.cat([target_ids, reference_ids])
    region = token_frame(side)
    hidden = torch.randn(1, 2 * tokens, 128)

    def text_ids(*lengths: int) -> torch.Tensor:
        return torch.cat(
            [torch.stack([torch.zeros(n), torch.zeros(n), torch.zeros(n), torch.arange(n)], -1) for n in lengths]
        )

    plain_text = torch.randn(1, text, 7680)
    routed_text = torch.randn(1, text + 2 * short, 7680)
    cpu = torch.device("cpu")
    zero_mask = torch.zeros(1, 1, text + 2 * tokens, text + 2 * tokens)
    bias = klein_attention_bias(region, region, text, short, 0.5, torch.float32, cpu)

    def step(text_states, ids, mask=None):
        kwargs = {"joint_attention_kwargs": {"attention_mask": mask}} if mask is not None else {}
        return lambda: transformer(
            hidden_states=hidden,
            encoder_hidden_states=text_states,
            timestep=torch.tensor([0.5]),
            img_ids=img_ids,
            txt_ids=ids,
            return_dict=False,
            **kwargs,
        )

    vip = f"C-T-S step, vip ({text} + 2 x {short} text + 2 x {tokens}, masked)"
    variants = {
        f"plain step ({text} text + {tokens} target + {tokens} reference)": step(plain_text, text_ids(text)),
        "plain step with an all-zero mask": step(plain_text, text_ids(text), zero_mask),
        vip: step(routed_text, text_ids(text, short, short), bias),
    }
    if args.no_zero_mask:  # the mask alone costs nothing measurable at 512 px: a 1024 px run may skip it
        del variants["plain step with an all-zero mask"]
    with torch.inference_mode():
        if args.repeats:
            times = interleaved(variants, args.repeats)
        else:  # one timed run each, no warm-up (a loaded machine), vip's first (any first-call cost is its)
            times = {}
            for name, run_step in reversed(variants.items()):
                start = time.perf_counter()
                run_step()
                times[name] = [time.perf_counter() - start]
                print(f"  {name}: {times[name][0]:.1f} s", flush=True)
            times = {name: times[name] for name in variants}
    params = sum(p.numel() for p in transformer.parameters())
    print(
        f"FLUX.2 [klein] 4B transformer, real width (3072, 24 heads, 128 input channels, 7680-wide text), "
        f"{args.double_blocks} double + {args.single_blocks} single blocks ({params / 1e9:.2f} B parameters; the real "
        f"one: 5 + 20, 3.9 B), random weights, fp32, {args.size} px = {tokens} target + {tokens} reference tokens, "
        f"{torch.get_num_threads()} threads, "
        + (f"{args.repeats} timed run(s) each after a warm-up, medians" if args.repeats else "one run each, no warm-up")
    )
    print_steps(times, {vip: "goal <= 1.10"})


def build_klein(folder: Path) -> Path:
    """The e2e model (module docstring), saved once."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from tiny_flux2 import build_tiny_qwen_tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model = folder / "klein-narrow"
    if (model / "model_index.json").is_file():
        return model
    torch.manual_seed(0)
    tokenizer = build_tiny_qwen_tokenizer()
    transformer = Flux2Transformer2DModel(
        **{**KLEIN_4B_TRANSFORMER, "num_attention_heads": 8, "joint_attention_dim": 768},
        num_layers=1,
        num_single_layers=2,
    )
    encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=28,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
        )
    )
    vae = AutoencoderKLFlux2(block_out_channels=(32, 64, 128, 128), norm_num_groups=32)
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=vae,
        text_encoder=encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=True,
    )
    pipe.save_pretrained(model, safe_serialization=True)
    return model


def part_e2e(args) -> None:
    work = Path(args.workdir)
    model = build_klein(work)
    photo = write_photo(work / "photo512.png")
    steps = str(args.steps)
    one_prompt, regions = [*ONE_PROMPT, "--device", "cpu"], [*REGIONS, "--device", "cpu"]
    jobs = {
        "plain": (PLAIN_SCRIPT, str(model), str(photo), steps, str(work / "plain.png")),
        "vip": (VIP_SCRIPT, str(model), str(photo), steps, str(work / "vip.png"), *one_prompt),
        "vipcts": (VIP_SCRIPT, str(model), str(photo), steps, str(work / "vipcts.png"), *regions),
    }
    results = measure(jobs, args.repeats)
    print(
        f"FLUX.2 [klein] pipeline, narrow (module docstring), random weights, fp32 on CPU, {steps} steps, guidance "
        f"off, strength 1, 2x outpaint of a 512 px photo (1024 px canvas); {args.repeats} run(s) each, medians; "
        "per step = one transformer pass"
    )
    print_e2e(results, "plain diffusers Flux2KleinInpaint script", "vip outpaint --model DIR, one prompt")


def part_filler(args) -> None:
    import numpy as np
    import torch
    from PIL import Image
    from tiny_flux2 import save_tiny_flux2_klein_model

    from vipcli_model.config import ModelConfig
    from vipcli_model.models.loading import load_pipeline
    from vipcli_model.outpainting.blend import prefill

    pipe = load_pipeline(
        ModelConfig(model=str(save_tiny_flux2_klein_model(Path(args.workdir) / "tiny")), device="cpu", dtype="fp32")
    )
    pipe.set_progress_bar_config(disable=True)
    size = 32
    photo = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, : size // 4] = mask[:, -size // 4 :] = 255
    generated = mask > 0
    fillers = {"vip's prefill": np.asarray(prefill(Image.fromarray(photo), Image.fromarray(mask)))}
    for grey in (0, 255):
        filled = photo.copy()
        filled[generated] = grey
        fillers[f"grey {grey}"] = filled

    def outpaint(image: np.ndarray, hide: bool) -> np.ndarray:
        output = pipe(
            prompt="Center: a red barn; Surrounding: a green field",
            image=Image.fromarray(image),
            mask_image=Image.fromarray(mask),
            center_prompt="a red barn",
            surrounding_prompt="a green field",
            region_strength=1.0,
            strength=1.0,
            num_inference_steps=4,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            max_sequence_length=64,
            hide_reference_filler=hide,
        )
        return output.images[0] * 255.0

    print("tiny FLUX.2 [klein] (tests/tiny_flux2.py), 32 px, left and right quarters generated, 4 steps, C-T-S at 1")
    for hide in (False, True):
        outputs = {name: outpaint(image, hide) for name, image in fillers.items()}
        distances = ", ".join(
            f"{name} {np.abs(outputs[name] - fillers[name].astype(float))[generated].mean():.2f}" for name in fillers
        )
        spread = np.abs(outputs["grey 0"] - outputs["grey 255"])[generated].mean()
        label = "hidden" if hide else "seen  "
        print(
            f"  reference filler {label}: mean |generated - filler| /255: {distances}; "
            f"black vs white filler: {spread:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("step", "e2e", "filler"), required=True)
    parser.add_argument("--size", type=int, default=1024, help="canvas in pixels (step)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (e2e)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed runs of each configuration (ABBA order); step: 0 = one, no warm-up",
    )
    parser.add_argument("--no-zero-mask", action="store_true", help="step: leave out the plain step with a zero mask")
    parser.add_argument("--double-blocks", type=int, default=1)
    parser.add_argument("--single-blocks", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/vip-bench-klein")
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    {"step": part_step, "e2e": part_e2e, "filler": part_filler}[args.part](args)
    print_footer(start)


if __name__ == "__main__":
    main()
