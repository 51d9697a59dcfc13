"""Device and dtype choice: CUDA, then MPS, then CPU; a dtype that is safe on each."""

from __future__ import annotations

import torch

from vipcli_model.errors import OptionError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a device, checking it exists."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise OptionError(f"`device` '{spec}' is not a device: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"`device` '{spec}': CUDA is not available on this machine (try `device` auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(f"`device` '{spec}': only {torch.cuda.device_count()} CUDA device(s) (cuda:0..)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise OptionError(f"`device` '{spec}': MPS is not available on this machine (try `device` auto)")
    elif device.type != "cpu":
        raise OptionError(f"`device` '{spec}' is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device


def pick_dtype(device: torch.device, spec: str = "auto") -> torch.dtype:
    """A dtype that is fast and safe on ``device``.

    auto: fp16 on CUDA; fp32 on MPS (fp16 there gives black or NaN images with SD-1.x VAEs,
    diffusers#11229) and on CPU (bf16 is emulated and slow on CPUs without AVX-512).
    """
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if spec not in DTYPES:
        raise OptionError(f"`dtype` '{spec}' is not one of auto, fp32, fp16, bf16")
    dtype = DTYPES[spec]
    if device.type == "cpu" and dtype == torch.float16:
        raise OptionError("`dtype` fp16 is not supported on CPU: use fp32 (or bf16 on CPUs with AVX-512)")
    return dtype


def describe() -> dict[str, str]:
    """Device facts for ``vip env`` and bug reports."""
    info = {
        "torch": torch.__version__,
        "cuda_available": str(torch.cuda.is_available()),
        "mps_available": str(torch.backends.mps.is_available()),
        "cpu_threads": str(torch.get_num_threads()),
        "auto_device": str(pick_device("auto")),
    }
    if torch.cuda.is_available():
        info["cuda_devices"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return info
