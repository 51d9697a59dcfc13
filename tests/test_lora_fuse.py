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


def _lora_variant(source: Path, folder: Path, change) -> Path:
    """A copy of the LoRA file at ``source`` (webui keys, fp16) with ``change`` applied to its tensors."""
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(source / "pytorch_lora_weights.safetensors"))
    save_file(change(dict(tensors)), str(folder / "pytorch_lora_weights.safetensors"))
    return folder


def _half_alphas(tensors: dict) -> dict:
    """Every alpha halved: each layer's scaling is then 0.5, not 1."""
    return {name: value / 2 if name.endswith(".alpha") else value for name, value in tensors.items()}


def _one_layer_at_rank_2(tensors: dict) -> dict:
    """One layer's factors cut to rank 2, the others at rank 4: ranks differ between layers."""
    down = next(name for name in sorted(tensors) if name.endswith("conv1.lora_down.weight"))
    up = down.replace("lora_down", "lora_up")
    return {**tensors, down: tensors[down][:2].clone(), up: tensors[up][:, :2].clone()}


def _through_diffusers(folder: Path, lora: Path, **load) -> dict:
    """The UNet's weights after diffusers' own way: load_lora_weights, fuse_lora, unload_lora_weights."""
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(folder, **load)
    pipe.load_lora_weights(str(lora), weight_name="pytorch_lora_weights.safetensors", adapter_name="fast")
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()
    return pipe.unet.state_dict()


@pytest.mark.parametrize("files", ["fp16 files run as fp32", "fp32 files mapped on the CPU"])
@pytest.mark.parametrize("alphas", ["alpha = rank", "alpha = rank / 2"])
def test_a_plain_lora_is_added_straight_into_the_weights_to_diffusers_bits(
    files, alphas, fp16_files, tiny_model_dir, tiny_lora, tmp_path, monkeypatch
):
    """`--fast`'s LoRA (LCM-LoRA's layout: UNet only, one rank, one alpha) is read by diffusers and added into the
    weights with no PEFT layer made: the weights diffusers' load_lora_weights + fuse_lora give, to the bit."""
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    from vipcli_model.models.loading import DTYPE_KEYWORD, load_fast_lora

    folder, load = (
        (fp16_files, {"variant": "fp16", DTYPE_KEYWORD: torch.float32})
        if files.startswith("fp16")
        else (tiny_model_dir, {})
    )
    lora = tiny_lora if alphas == "alpha = rank" else _lora_variant(tiny_lora, tmp_path / "half", _half_alphas)
    reference = _through_diffusers(folder, lora, **load)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(folder, **load)
    unfused = {name: value.clone() for name, value in pipe.unet.state_dict().items()}

    def no_layers(*args, **kwargs):
        raise AssertionError("a plain LoRA made PEFT layers")

    monkeypatch.setattr(StableDiffusionLoraLoaderMixin, "load_lora_weights", no_layers)
    load_fast_lora(pipe, str(lora / "pytorch_lora_weights.safetensors"))
    fused = pipe.unet.state_dict()
    assert fused.keys() == reference.keys() and not hasattr(pipe.unet, "peft_config")
    assert all(torch.equal(reference[name], fused[name]) for name in reference)
    changed = [name for name in reference if not torch.equal(fused[name], unfused[name])]
    assert any(name.endswith("conv1.weight") for name in changed) and any("to_q" in name for name in changed)


def test_a_lora_outside_the_plain_case_goes_through_diffusers_layers_to_the_same_bits(fp16_files, tiny_lora, tmp_path):
    """Ranks that differ between layers: nothing is added straight in (the weights untouched), the LoRA goes
    through diffusers' layers, fused then removed, and the weights are diffusers' own."""
    from diffusers import StableDiffusionInpaintPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    from vipcli_model.models.loading import DTYPE_KEYWORD, load_fast_lora
    from vipcli_model.speed.lora_fuse import fuse_lora_state_dict, read_lora

    load = {"variant": "fp16", DTYPE_KEYWORD: torch.float32}
    lora = _lora_variant(tiny_lora, tmp_path / "mixed", _one_layer_at_rank_2)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(fp16_files, **load)
    unfused = {name: value.clone() for name, value in pipe.unet.state_dict().items()}
    assert fuse_lora_state_dict(pipe, *read_lora(pipe, str(lora), "pytorch_lora_weights.safetensors")) is None
    assert all(torch.equal(value, pipe.unet.state_dict()[name]) for name, value in unfused.items())
    load_fast_lora(pipe, str(lora))
    reference = _through_diffusers(fp16_files, lora, **load)
    assert not any(isinstance(module, BaseTunerLayer) for module in pipe.unet.modules())
    assert all(torch.equal(reference[name], pipe.unet.state_dict()[name]) for name in reference)


@pytest.mark.parametrize(
    "why", ["a text encoder layer", "a DoRA magnitude", "an adapter config in the metadata", "a layer the UNet lacks"]
)
def test_only_the_plain_case_is_added_straight_in(why, tiny_model_dir, tiny_lora):
    from diffusers import StableDiffusionInpaintPipeline

    from vipcli_model.speed.lora_fuse import fuse_lora_state_dict, read_lora

    pipe = StableDiffusionInpaintPipeline.from_pretrained(tiny_model_dir)
    state_dict, alphas, metadata = read_lora(pipe, str(tiny_lora), "pytorch_lora_weights.safetensors")
    assert fuse_lora_state_dict(pipe, dict(state_dict), alphas, metadata) is not None  # as read: plain
    first = next(name for name in state_dict if "lora" in name and name.endswith("weight"))
    some = state_dict[first]
    if why == "a text encoder layer":
        state_dict["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora.down.weight"] = some
    elif why == "a DoRA magnitude":
        state_dict[first.rsplit(".lora", 1)[0] + ".lora_magnitude_vector"] = some
    elif why == "an adapter config in the metadata":
        metadata = {"unet.lora_adapter_metadata": '{"r": 4, "use_dora": true}'}
    else:
        state_dict = {name.replace("down_blocks.0", "down_blocks.9"): value for name, value in state_dict.items()}
    before = {name: value.clone() for name, value in pipe.unet.state_dict().items()}
    assert fuse_lora_state_dict(pipe, state_dict, alphas, metadata) is None
    assert all(torch.equal(value, pipe.unet.state_dict()[name]) for name, value in before.items())
