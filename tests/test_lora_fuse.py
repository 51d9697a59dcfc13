"""The LoRA fuse: vip's own merge on a CPU (in place, or out of place where the weights are mapped from a file),
diffusers' fuse elsewhere, the same weights to the bit either way."""

from __future__ import annotations

import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_lcm_lora

LINUX = sys.platform.startswith("linux")


@pytest.fixture(scope="module")
def tiny_lora(tiny_model_dir, tmp_path_factory) -> Path:
    """A random, non-zero LoRA of the tiny UNet on LCM-LoRA's modules, in fp16 as published LCM-LoRAs are."""
    return save_tiny_lcm_lora(tiny_model_dir, tmp_path_factory.mktemp("tiny-lora"), seed=1)


@pytest.fixture(scope="module")
def fp16_files(tmp_path_factory) -> Path:
    """The tiny model in the default preset's layout: fp16 safetensors under the variant name "fp16"."""
    from diffusers import StableDiffusionInpaintPipeline
    from tiny_models import build_tiny_inpaint_components

    folder = tmp_path_factory.mktemp("tiny-fp16")
    pipe = StableDiffusionInpaintPipeline(**build_tiny_inpaint_components(seed=0), requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    return folder


def _fused_unet(folder: Path, lora: Path, how: str, **load) -> tuple[dict, object]:
    from diffusers import StableDiffusionInpaintPipeline

    from vipcli_model.speed.lora_fuse import fuse_lora

    pipe = StableDiffusionInpaintPipeline.from_pretrained(folder, **load)
    pipe.load_lora_weights(str(lora), weight_name="pytorch_lora_weights.safetensors", adapter_name="fast")
    fused = pipe.fuse_lora(lora_scale=1.0) if how == "diffusers" else fuse_lora(pipe, "fast")
    pipe.unload_lora_weights()
    return pipe.unet.state_dict(), fused


def test_fp16_files_run_as_fp32_take_vips_merge_in_place_to_the_same_bits(fp16_files, tiny_lora):
    """The default preset's layout: fp16 files upcast to fp32 at load lie in ordinary memory; vip merges every
    layer there in place, and the weights are the ones diffusers' fuse gives."""
    from diffusers import StableDiffusionInpaintPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    from vipcli_model.models.loading import DTYPE_KEYWORD
    from vipcli_model.speed.lora_fuse import _file_mapped

    load = {"variant": "fp16", DTYPE_KEYWORD: torch.float32}

    pipe = StableDiffusionInpaintPipeline.from_pretrained(fp16_files, **load)
    assert pipe.unet.dtype == torch.float32
    assert not any(_file_mapped(list(pipe.unet.parameters())))  # upcast at load: nothing left in the file
    unfused = pipe.unet.state_dict()
    pipe.load_lora_weights(str(tiny_lora), weight_name="pytorch_lora_weights.safetensors", adapter_name="fast")
    layers = sum(isinstance(module, BaseTunerLayer) for module in pipe.unet.modules())
    reference, _ = _fused_unet(fp16_files, tiny_lora, "diffusers", **load)
    fused, report = _fused_unet(fp16_files, tiny_lora, "vip", **load)
    assert report.merged == layers > 0 and report.out_of_place == 0
    assert all(torch.equal(reference[name], fused[name]) for name in reference)
    assert any(not torch.equal(reference[name], unfused[name]) for name in reference)  # the LoRA changed them


@pytest.mark.skipif(not LINUX, reason="memory maps are read from /proc/self/maps")
def test_fp32_files_mapped_on_a_cpu_take_vips_merge_to_the_same_bits(tiny_model_dir, tiny_lora):
    from diffusers import StableDiffusionInpaintPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    pipe = StableDiffusionInpaintPipeline.from_pretrained(tiny_model_dir)
    pipe.load_lora_weights(str(tiny_lora), weight_name="pytorch_lora_weights.safetensors", adapter_name="fast")
    layers = sum(isinstance(module, BaseTunerLayer) for module in pipe.unet.modules())
    reference, _ = _fused_unet(tiny_model_dir, tiny_lora, "diffusers")
    fused, report = _fused_unet(tiny_model_dir, tiny_lora, "vip")
    assert report.merged == report.out_of_place == layers > 0
    assert all(torch.equal(reference[name], fused[name]) for name in reference)


def test_the_pipeline_loads_with_the_dtype_keyword_diffusers_wants(tiny_model_dir, monkeypatch):
    """No deprecated keyword reaches diffusers, so there is no warning to filter: `dtype` where diffusers takes
    it, `torch_dtype` before."""
    import diffusers.utils.deprecation_utils as deprecation

    from vipcli_model.config import ModelConfig
    from vipcli_model.models.loading import DTYPE_KEYWORD, load_pipeline

    deprecated: list[tuple] = []
    original = deprecation.deprecate

    def spy(*args, **kwargs):
        deprecated.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(deprecation, "deprecate", spy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = load_pipeline(ModelConfig(model=str(tiny_model_dir), device="cpu"))
    assert pipe.unet.dtype == torch.float32
    assert not [args for args in deprecated if args and args[0] == "torch_dtype"]
    assert not [w for w in caught if "torch_dtype" in str(w.message)]
    major, minor = (int(part) for part in version("diffusers").split(".")[:2])
    assert DTYPE_KEYWORD == ("dtype" if (major, minor) >= (0, 40) else "torch_dtype")
