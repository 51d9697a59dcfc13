"""Speed levers on the full-size SD-1.5 inpainting UNet (random weights: speed does not depend on values).

    python benchmarks/bench_levers.py [--size 512] [--repeats 3] [--compile]
    python benchmarks/bench_levers.py --step-levers     # the per-pass levers only (a few minutes)

Prints, from one run, the UNet step time (batch 2: one image with classifier-free guidance) of:

* ``default``: what vip runs (PyTorch SDPA attention, contiguous memory format, torch's thread count);
* ``channels-last``: the UNet converted with ``memory_format=torch.channels_last``;
* ``classic attention``: diffusers' pre-SDPA ``AttnProcessor`` (what SDPA replaced);
* ``threads=1``: a single intra-op thread (what an oversubscribed machine gets);
* ``torch.compile`` (with ``--compile``): compile time and the step after it;

and the SD-1.5 VAE's encode and decode at the same size, contiguous (torch's default) against channels-last.

With ``--step-levers``, instead, the per-pass levers, per UNet pass and per VAE call:

* ``batch 1`` against ``batch 2``: a step outside the guidance interval runs the conditional branch only;
* ``DeepCache`` (``--deep-cache 3``): the mean pass over one full step and the two cached steps after it;
* TAESD (``AutoencoderTiny``'s default architecture, TAESD's) against the SD-1.5 VAE, encode and decode.

Runs are interleaved so background load hits every variant alike. A lever is kept in vip only if
it is faster here (or, for CUDA-only levers, where it is documented to be).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_cts import sd15_inpaint_unet, sd15_vae
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0


def vae_times(size: int, repeats: int) -> dict[str, list[float]]:
    """Encode and decode, contiguous against channels-last weights (inputs as the pipeline passes them)."""
    torch.manual_seed(0)
    vae = sd15_vae().eval()
    image = torch.randn(1, 3, size, size)
    latents = torch.randn(1, 4, size // 8, size // 8)
    times: dict[str, list[float]] = {}
    with torch.inference_mode():
        for run in range(repeats + 1):  # the first round warms up
            for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels-last", torch.channels_last)):
                vae.to(memory_format=fmt)
                for what, call in (("encode", lambda: vae.encode(image)), ("decode", lambda: vae.decode(latents))):
                    start = time.perf_counter()
                    call()
                    if run:
                        times.setdefault(f"VAE {what}, {fmt_name}", []).append(time.perf_counter() - start)
    return times


def step_levers(size: int, repeats: int) -> None:
    """The per-pass levers, interleaved, medians (see the module docstring)."""
    from diffusers import AutoencoderTiny

    from vipcli_model.speed.feature_cache import feature_cache

    torch.manual_seed(0)
    unet = sd15_inpaint_unet().eval()
    vae = sd15_vae().eval().to(memory_format=torch.channels_last)  # as vip runs it on CPU
    tiny = AutoencoderTiny().eval()
    latent = size // 8
    sample, text = torch.randn(2, 9, latent, latent), torch.randn(2, 77, 768)
    image, latents = torch.randn(1, 3, size, size), torch.randn(1, 4, latent, latent)

    def deep_cache() -> None:  # one full pass and two cached ones: the mean is what --deep-cache 3 costs a step
        with feature_cache(unet, every=3):
            for _ in range(3):
                unet(sample, 500, encoder_hidden_states=text)

    variants = {
        "UNet batch 2 (guided step)": (lambda: unet(sample, 500, encoder_hidden_states=text), 1),
        "UNet batch 1 (unguided step)": (lambda: unet(sample[:1], 500, encoder_hidden_states=text[:1]), 1),
        "UNet batch 2, --deep-cache 3": (deep_cache, 3),
        "SD VAE encode": (lambda: vae.encode(image), 1),
        "TAESD encode": (lambda: tiny.encode(image), 1),
        "SD VAE decode": (lambda: vae.decode(latents), 1),
        "TAESD decode": (lambda: tiny.decode(latents), 1),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for run, _ in variants.values():  # warm-up
            run()
        for _ in range(repeats):
            for name, (run, passes) in variants.items():
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) / passes)
    print(f"per-pass levers, {size}px, {torch.get_num_threads()} threads, {repeats} repeats (median per pass)")
    against = {
        "UNet batch 1 (unguided step)": "UNet batch 2 (guided step)",
        "UNet batch 2, --deep-cache 3": "UNet batch 2 (guided step)",
        "TAESD encode": "SD VAE encode",
        "TAESD decode": "SD VAE decode",
    }
    for name, values in times.items():
        median = statistics.median(values)
        base = against.get(name)
        ratio = f"   x{median / statistics.median(times[base]):.3f} of {base}" if base else ""
        print(f"  {name:<30} {median:7.2f} s{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image size in pixels (latent = size / 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--compile", action="store_true", help="also measure torch.compile (minutes of compilation on CPU)"
    )
    parser.add_argument(
        "--step-levers", action="store_true", help="only the per-pass levers (batch 1, DeepCache, TAESD)"
    )
    args = parser.parse_args()
    if args.step_levers:
        step_levers(args.size, args.repeats)
        return

    torch.manual_seed(0)
    unet = sd15_inpaint_unet().eval()
    latent = args.size // 8
    sample = torch.randn(2, 9, latent, latent)
    text = torch.randn(2, 77, 768)
    threads = torch.get_num_threads()

    def step(model=unet, memory_format=torch.contiguous_format) -> None:
        model(sample.contiguous(memory_format=memory_format), 500, encoder_hidden_states=text)

    def channels_last() -> None:
        unet.to(memory_format=torch.channels_last)
        try:
            step(memory_format=torch.channels_last)
        finally:
            unet.to(memory_format=torch.contiguous_format)

    def classic() -> None:
        unet.set_attn_processor(AttnProcessor())
        try:
            step()
        finally:
            unet.set_attn_processor(AttnProcessor2_0())

    def one_thread() -> None:
        torch.set_num_threads(1)
        try:
            step()
        finally:
            torch.set_num_threads(threads)

    variants = {"default": step, "channels-last": channels_last, "classic attention": classic, "threads=1": one_thread}
    compiled_note = ""
    with torch.inference_mode():
        if args.compile:  # compiled first, then timed interleaved with the others like any lever
            compiled = torch.compile(unet)
            start = time.perf_counter()
            step(compiled)
            compiled_note = f" (first call, compiling: {time.perf_counter() - start:.1f} s)"
            variants["torch.compile"] = lambda: step(compiled)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for run in variants.values():  # warm-up
            run()
        for _ in range(args.repeats):
            for name, run in variants.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)

    vae = vae_times(args.size, args.repeats)

    print(f"SD-1.5 inpainting UNet, {args.size}px, batch 2, {threads} threads, {args.repeats} repeats (median)")
    base = statistics.median(times["default"])
    for name, values in times.items():
        median = statistics.median(values)
        note = compiled_note if name == "torch.compile" else ""
        print(f"  {name:<18} {median:7.2f} s/step   x{median / base:.3f}{note}")
    print(f"SD-1.5 VAE, {args.size}px, batch 1")
    for what in ("encode", "decode"):
        base = statistics.median(vae[f"VAE {what}, contiguous"])
        for fmt_name in ("contiguous", "channels-last"):
            median = statistics.median(vae[f"VAE {what}, {fmt_name}"])
            print(f"  {what}, {fmt_name:<14} {median:7.2f} s        x{median / base:.3f}")


if __name__ == "__main__":
    main()
