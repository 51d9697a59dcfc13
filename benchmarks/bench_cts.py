"""C-T-S cost on the full-size SD-1.5 inpainting UNet (random weights: speed does not depend on values).

    python benchmarks/bench_cts.py [--size 512] [--repeats 3] [--batch 2]

Prints, from one run, the UNet step time of plain attention, C-T-S zero-shot and C-T-S trainable
(rank-16 adapter with K/V deltas, and with to_out deltas too), and their ratios; and the adapter's parameter count
against the UNet's (and what full attn2 copies would add). Runs are interleaved so background load hits all three alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from vipcli_model.cts.attention import CTSAdapter, CTSController, CTSState, cross_attention_names


def sd15_inpaint_unet() -> UNet2DConditionModel:
    # SD-1.5 inpainting: the SD-1.x UNet defaults with a 9-channel input, 64x64 latents.
    return UNet2DConditionModel(sample_size=64, in_channels=9, out_channels=4, cross_attention_dim=768)


def sd15_vae() -> AutoencoderKL:
    # SD-1.x's VAE: 512 px images to 64x64x4 latents.
    return AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )


def sd15_text_encoder():
    # SD-1.x's text encoder: CLIP ViT-L/14's text tower.
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=768,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image size in pixels (latent = size / 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one image with classifier-free guidance)")
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()

    torch.manual_seed(0)
    unet = sd15_inpaint_unet().eval()
    latent = args.size // 8
    sample = torch.randn(args.batch, 9, latent, latent)
    texts = [torch.randn(args.batch, 77, 768) for _ in range(3)]
    mask = torch.zeros(1, 1, latent, latent)
    mask[..., :, : latent // 4] = 1.0
    mask[..., :, -latent // 4 :] = 1.0  # 2x-wide outpaint: both sides generated
    adapter = CTSAdapter(unet, rank=args.rank).eval()
    adapter_out = CTSAdapter(unet, rank=args.rank, out_delta=True).eval()

    def plain() -> None:
        unet(sample, 500, encoder_hidden_states=texts[0])

    def with_cts(controller: CTSController) -> None:
        state = CTSState(center=texts[1], surrounding=texts[2], mask=mask)
        with controller.active(state):
            unet(sample, 500, encoder_hidden_states=texts[0])

    variants = {
        "plain": plain,
        "cts zero-shot": lambda: with_cts(CTSController(unet)),
        "cts trainable": lambda: with_cts(CTSController(unet, adapter=adapter)),
        "cts train+out": lambda: with_cts(CTSController(unet, adapter=adapter_out)),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for run in variants.values():  # warm-up
            run()
        for _ in range(args.repeats):
            for name, run in variants.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)

    unet_params = sum(p.numel() for p in unet.parameters())
    adapter_params = sum(p.numel() for p in adapter.parameters())
    adapter_out_params = sum(p.numel() for p in adapter_out.parameters())
    attn2_params = 0
    for name in cross_attention_names(unet):
        attn = unet.get_submodule(name[: -len(".processor")])
        attn2_params += sum(p.numel() for p in attn.parameters())
    print(
        f"SD-1.5 inpainting UNet, {args.size}px, batch {args.batch}, {torch.get_num_threads()} threads, {args.repeats} "
        "repeats (median)"
    )
    base = statistics.median(times["plain"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<15} {median:7.3f} s/step   x{median / base:.3f}")
    print(f"  UNet parameters        {unet_params / 1e6:8.1f} M")
    print(
        f"  adapter (rank {args.rank:>2})      {adapter_params / 1e6:8.2f} M   "
        f"{100 * adapter_params / unet_params:.2f}% of the UNet"
    )
    print(f"  with to_out deltas     {adapter_out_params / 1e6:8.2f} M   {100 * adapter_out_params / unet_params:.2f}%")
    print(
        f"  full attn2 copies x2   {2 * attn2_params / 1e6:8.1f} M   {100 * 2 * attn2_params / unet_params:.2f}% (the "
        "alternative)"
    )
    print("  official VIP code      +534 M   (triplicated transformer blocks)")


if __name__ == "__main__":
    main()
