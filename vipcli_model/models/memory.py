"""Where the model's weights live while it runs, chosen from free GPU memory: full, offloaded, or quantized.

The decision is one pure function, :func:`plan_memory` (free memory, the parameter count of each part of the
pipeline, the device) -> :class:`MemoryPlan`; ``loading.py`` measures the inputs (``torch.cuda.mem_get_info``,
the safetensors headers of the model folder) and applies the plan. The plans, cheapest first:

- ``full``: every part on the GPU (the fastest).
- ``model-offload``: diffusers' ``enable_model_cpu_offload``: each part moves to the GPU while it runs, so the
  GPU holds the largest part (the denoiser) plus activations. Little slower than ``full`` (one move per part per
  image).
- ``8bit`` / ``4bit``: the denoiser quantized at load through diffusers' ``PipelineQuantizationConfig`` with
  bitsandbytes (LLM.int8 / NF4), then ``full`` or ``model-offload`` as what is left fits. Only for the FLUX
  transformers (FLUX Fill, FLUX.2 [klein]: no LoRA or adapter is fused into them) and only where ``bitsandbytes``
  is installed; it changes the results slightly (the weights are rounded). With model offload an 8-bit
  transformer leaves the GPU while the text encoders run only with bitsandbytes >= 0.48 (diffusers keeps it there
  with older versions: ~22 GB together with FLUX Fill's T5 encoder).
- ``group-offload``: diffusers' ``enable_group_offload`` (block level, one block at a time, prefetched on a CUDA
  stream): the GPU holds about two blocks. Lossless, slower (every block crosses PCIe every step), and pins the
  whole model in CPU memory.
- ``sequential-offload``: ``enable_sequential_cpu_offload``, one submodule at a time: the least GPU memory, the
  slowest; only when asked for.

``auto`` takes the first that fits, in the order full, model-offload, 8bit, 4bit (where allowed and installed),
group-offload, sequential-offload. The figures for FLUX.1 Fill [dev] in bf16 (transformer 11.9 B parameters =
23.8 GB, T5-XXL encoder 4.76 B = 9.5 GB, CLIP-L 0.12 B, VAE 0.08 B) with the reserves below:

- 80 GB free: ``full`` (34 GB of weights + 3 GiB);
- 24 GB card (~23 GB free): ``8bit`` with model offload (12.5 GB transformer + 3 GiB), or ``group-offload``
  without bitsandbytes (the bf16 transformer alone + activations does not fit);
- 12 GB card (~11 GB free): ``4bit`` with model offload (6.5 GB transformer + 3 GiB; the bf16 T5 encoder alone
  fits in 10 GB), or ``group-offload`` without bitsandbytes.

FLUX.2 [klein] 4B in bf16 (transformer 3.9 B = 7.75 GB, Qwen3-4B encoder 4.0 B = 8.04 GB, VAE 0.08 B): ``full``
needs ~19 GB (a 24 GB card), ``model-offload`` ~11 GB (the encoder and the transformer each alone: a 12 or 16 GB
card), ``group-offload`` below that. The encoder is the largest part, so a quantized transformer saves little with
model offload (8-bit: ~8.6 GB, bound by the encoder).

SDXL + ControlNet Union ProMax in fp16 (UNet 2.57 B = 5.1 GB, ControlNet 1.25 B = 2.5 GB, both text encoders
0.82 B, VAE 0.08 B): the ControlNet runs beside the UNet at every step, and diffusers' model offload keeps it on
the GPU through the denoising loop, so it counts with the denoiser: ``full`` ~12.7 GB, ``model-offload`` ~10.9 GB.

On a CPU (or Apple MPS, whose memory is shared) the plan is always ``full``: nothing changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vipcli_model.errors import OptionError

GIB = 1024**3
MEMORY_MODES = ("auto", "full", "model-offload", "8bit", "4bit", "group-offload", "sequential-offload")
QUANTIZED = {"8bit": 1.05, "4bit": 0.55}  # bytes per parameter, with bitsandbytes' scales and skipped layers
QUANTIZER = "bitsandbytes"  # the library the quantized plans need (`pip install bitsandbytes`)
DENOISER_RESERVE = 3 * GIB  # activations of a 1024 px step (attention, C-T-S masks, the VAE decode after it)
PART_RESERVE = GIB // 2  # activations of a text encoder or the VAE encode while the part runs alone
GROUP_OFFLOAD_BYTES = 2 * GIB  # two blocks of the largest part on the GPU (one running, the next arriving)


@dataclass(frozen=True)
class MemoryPlan:
    """How the pipeline is placed, and why (recorded in the output metadata)."""

    mode: str  # full | model-offload | group-offload | sequential-offload
    quantize: str | None  # None, "8bit" or "4bit": the denoiser's weights
    reason: str  # one sentence with the figures the choice was made from
    free_gb: float | None  # free GPU memory at load time (None: not a CUDA device)
    needed_gb: float | None  # the plan's estimated peak GPU memory

    def to_dict(self) -> dict:
        return asdict(self)


def _gb(value: float) -> float:
    return round(value / 1e9, 1)


def plan_memory(
    *,
    device_type: str,
    free_bytes: int | None,
    params: dict[str, int],
    denoiser: str,
    itemsize: int,
    requested: str = "auto",
    quantizable: bool = False,
    installed: frozenset[str] = frozenset(),
    with_denoiser: tuple[str, ...] = ("controlnet",),
) -> MemoryPlan:
    """The placement for a pipeline whose parts have ``params`` parameters each, run in ``itemsize``-byte weights.

    ``denoiser``: the key of the UNet / transformer in ``params``. ``quantizable``: the family allows a quantized
    denoiser (FLUX Fill, FLUX.2 [klein]). ``installed``: importable libraries (``QUANTIZER`` enables the quantized
    plans).
    Raises ``OptionError`` for a requested plan that cannot run here (a GPU plan off CUDA, quantization where it
    is not supported or its library is missing).
    ``with_denoiser``: parts of ``params`` on the GPU whenever the denoiser is (a ControlNet, called beside the UNet
    at every step); never quantized.
    """
    requested = (requested or "auto").strip().lower()
    if requested not in MEMORY_MODES:
        raise OptionError(f"`memory` '{requested}' is not one of: {', '.join(MEMORY_MODES)}")
    quantize = requested if requested in QUANTIZED else None
    if quantize and not quantizable:
        raise OptionError(
            f"`memory` {requested}: vip quantizes the FLUX transformers only (FLUX Fill, FLUX.2 [klein]); "
            "use model-offload or group-offload"
        )
    if quantize and QUANTIZER not in installed:
        raise OptionError(f"`memory` {requested} needs {QUANTIZER}: pip install {QUANTIZER}")
    if device_type != "cuda":
        if requested not in ("auto", "full"):
            raise OptionError(f"`memory` {requested} needs a CUDA device (it places the model's parts on the GPU)")
        return MemoryPlan("full", None, f"{device_type}: the model stays in the machine's memory", None, None)

    denoiser_params = params.get(denoiser, 0)
    beside = sum(count for name, count in params.items() if name in with_denoiser and name != denoiser) * itemsize
    others = [count * itemsize for name, count in params.items() if name != denoiser and name not in with_denoiser]
    largest_other = max(others, default=0) + PART_RESERVE

    def needs(mode: str, bits: str | None) -> int:
        weights = denoiser_params * (QUANTIZED[bits] if bits else itemsize) + beside
        if mode == "full":
            return int(weights + sum(others) + DENOISER_RESERVE)
        if mode == "model-offload":
            return int(max(weights + DENOISER_RESERVE, largest_other))
        if mode == "group-offload":
            return int(GROUP_OFFLOAD_BYTES + DENOISER_RESERVE)
        return int(DENOISER_RESERVE)  # sequential-offload

    def plan(mode: str, bits: str | None, reason: str) -> MemoryPlan:
        needed = needs(mode, bits)
        free = _gb(free_bytes) if free_bytes is not None else None
        return MemoryPlan(mode, bits, reason, free, _gb(needed))

    free_text = f"{_gb(free_bytes)} GB free" if free_bytes is not None else "free memory unknown"
    if requested != "auto":
        if quantize:
            placement = "full" if free_bytes is None or needs("full", quantize) <= free_bytes else "model-offload"
            return plan(placement, quantize, f"asked for {requested}; {placement} fits {free_text}")
        return plan(requested, None, f"asked for {requested} ({free_text})")
    if free_bytes is None:
        return plan("full", None, "free GPU memory unknown: everything on the GPU")
    for mode in ("full", "model-offload"):
        if needs(mode, None) <= free_bytes:
            return plan(mode, None, f"{mode} needs ~{_gb(needs(mode, None))} GB, {free_text}")
    missing_quantizer = False
    if quantizable:
        for bits in QUANTIZED:
            for mode in ("full", "model-offload"):
                if needs(mode, bits) <= free_bytes:
                    if QUANTIZER in installed:
                        needed = _gb(needs(mode, bits))
                        return plan(mode, bits, f"the {bits} transformer with {mode} needs ~{needed} GB, {free_text}")
                    missing_quantizer = True
                    break
            if missing_quantizer:
                break
    hint = f" (pip install {QUANTIZER}: a quantized transformer would fit whole)" if missing_quantizer else ""
    if needs("group-offload", None) <= free_bytes:
        return plan("group-offload", None, f"the weights do not fit {free_text}: one block at a time{hint}")
    return plan("sequential-offload", None, f"even one block does not fit {free_text}: one layer at a time{hint}")


__all__ = ["MEMORY_MODES", "MemoryPlan", "plan_memory"]
