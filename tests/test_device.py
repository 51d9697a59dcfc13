"""Device and dtype choice: CUDA, then MPS, then CPU; fp16 only where it is fast and safe."""

from __future__ import annotations

import pytest
import torch

from vipcli_model.device import pick_device, pick_dtype
from vipcli_model.errors import OptionError


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    mps_available = {"value": False}
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps_available["value"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    mps_available["value"] = True
    assert pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")


def test_auto_dtype_is_fp16_on_cuda_only():
    assert pick_dtype(torch.device("cuda")) == torch.float16
    assert pick_dtype(torch.device("cuda:1"), "auto") == torch.float16
    assert pick_dtype(torch.device("mps")) == torch.float32  # fp16 gives black images with SD-1.x VAEs there
    assert pick_dtype(torch.device("cpu")) == torch.float32  # bf16 is emulated (slow) on CPUs without AVX-512
    assert pick_dtype(torch.device("cuda"), "bf16") == torch.bfloat16  # an explicit choice wins
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16


@pytest.mark.parametrize(
    ("device", "dtype", "message"),
    [("cpu", "fp16", "fp16 is not supported on CPU"), ("cpu", "half", "not one of auto, fp32, fp16, bf16")],
)
def test_bad_dtype_is_a_clear_error(device, dtype, message):
    with pytest.raises(OptionError, match=message):
        pick_dtype(torch.device(device), dtype)


def test_unavailable_device_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OptionError, match="CUDA is not available"):
        pick_device("cuda")
    with pytest.raises(OptionError, match="is not a device"):
        pick_device("gpu0")
