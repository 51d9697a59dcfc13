"""The --fast preset: a distilled LoRA fused into the UNet, LCM scheduler, few steps, guidance off."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import outpaint_args, pixels
from tiny_models import save_tiny_lcm_lora

from vipcli_model.images.io import read_metadata


@pytest.fixture(scope="module")
def tiny_lora_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA for the tiny UNet, random but non-zero, saved like published LCM-LoRAs."""
    return save_tiny_lcm_lora(tiny_model_dir, tmp_path_factory.mktemp("tiny-lcm-lora"), seed=0)


def test_fast_preset_fuses_the_lora_and_records_it(tiny_model_dir, tiny_lora_dir, astronaut_png, tmp_path, vip_main):
    common = ["outpaint", astronaut_png, "--ratio", "1.25x", "--model", tiny_model_dir, "--seed", "4", "--feather", "0"]
    fast = vip_main(*common, "--fast", "--fast-lora", tiny_lora_dir, "--vae", "full", "-o", tmp_path / "fast.png")
    assert fast.returncode == 0, fast.stderr
    meta = read_metadata(tmp_path / "fast.png")["vip"]
    assert meta["fast_lora"] == str(tiny_lora_dir)
    assert (meta["scheduler"], meta["steps"], meta["guidance"], meta["vae"]) == ("lcm", 4, 1.0, "full")
    # same schedule without the LoRA: a different image, so the LoRA was really applied
    plain = vip_main(*common, "--scheduler", "lcm", "--steps", "4", "--guidance", "1", "-o", tmp_path / "plain.png")
    assert plain.returncode == 0, plain.stderr
    assert read_metadata(tmp_path / "plain.png")["vip"]["fast_lora"] is None
    assert (pixels(tmp_path / "fast.png") != pixels(tmp_path / "plain.png")).any()
    # explicit values win over the preset's
    steps = vip_main(
        *common, "--fast", "--fast-lora", tiny_lora_dir, "--vae", "full", "--steps", "2", "-o", tmp_path / "two.png"
    )
    assert steps.returncode == 0 and read_metadata(tmp_path / "two.png")["vip"]["steps"] == 2


def test_fast_lora_unavailable_offline_is_one_clear_line(tiny_model_dir, astronaut_png, tmp_path, vip_main):
    result = vip_main(
        *outpaint_args(
            astronaut_png, tiny_model_dir, tmp_path / "x.png", "--fast", "--vae", "full", "--no-caption", ratio="2x"
        )
    )
    assert result.returncode == 4
    assert "latent-consistency/lcm-lora-sdv1-5" in result.stderr and "Traceback" not in result.stderr
    assert "file as --fast-lora" in result.stderr  # the option that takes a local copy, not --model
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def sd2_like_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with an SD-2.x UNet config (text attention 1024 wide): only its configs are read."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("tiny-sd2") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["cross_attention_dim"] = 1024
    config_path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("where", ["folder", "hub"])
def test_fast_on_sd2_is_refused_in_one_line_before_anything_is_fetched(
    where, sd2_like_dir, astronaut_png, tmp_path, vip_main, monkeypatch
):
    """The SD family's preset LoRA (LCM-LoRA SD-1.5) fits SD-1.x layers only: on an SD-2.x model `--fast` says so
    from the model's configs, before any weights (the model's, the LoRA's, the tiny autoencoder's) are fetched."""
    from types import SimpleNamespace

    from vipcli_model.models import hub

    fetched = []

    def ensure_model(spec, kind=None, *, configs_only=False, **kwargs):
        if configs_only:  # the hub's small config files, here the stand-in's
            return SimpleNamespace(folder=sd2_like_dir)
        fetched.append(spec)
        raise AssertionError(f"fetched {spec}")

    monkeypatch.setattr(hub, "ensure_model", ensure_model)
    monkeypatch.setattr(hub, "download", lambda spec, *args, **kwargs: fetched.append(spec))
    model = str(sd2_like_dir) if where == "folder" else "sd2-inpaint"
    result = vip_main(*outpaint_args(astronaut_png, model, tmp_path / "x.png", "--fast", "--no-caption", ratio="1.5x"))
    assert fetched == [] and result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert hub.resolve_spec(model) in line and "latent-consistency/lcm-lora-sdv1-5" in line and "SD-1.x" in line
    assert "--fast-lora" in line and "without --fast" in line


def test_the_sd_preset_fits_sd1_unets_only():
    from vipcli_model.config import ModelConfig
    from vipcli_model.errors import OptionError
    from vipcli_model.models.families import resolve_model
    from vipcli_model.models.families.sd import FAMILY

    sd1 = resolve_model(ModelConfig(fast=True), FAMILY, {"cross_attention_dim": 768})
    assert (sd1.fast_lora, sd1.vae) == ("latent-consistency/lcm-lora-sdv1-5", "tiny")
    with pytest.raises(OptionError, match="`fast`: .* is not SD-1.x"):
        resolve_model(ModelConfig(fast=True), FAMILY, {"cross_attention_dim": 1024})
    with pytest.raises(OptionError, match="`fast_lora`: .* is not SD-1.x"):
        resolve_model(
            ModelConfig(fast=True, fast_lora="latent-consistency/lcm-lora-sdv1-5"),
            FAMILY,
            {"cross_attention_dim": 1024},
        )
    own = resolve_model(
        ModelConfig(fast=True, fast_lora="my/sd2-lcm-lora", vae="full"), FAMILY, {"cross_attention_dim": 1024}
    )
    assert (own.fast_lora, own.vae) == ("my/sd2-lcm-lora", "full")  # a LoRA made for it runs


def test_fast_lora_without_fast_is_an_option_error(astronaut_png, vip_main):
    alone = vip_main("outpaint", astronaut_png, "--ratio", "2x", "--fast-lora", "x", "--model", "/nonexistent")
    assert alone.returncode == 2 and "--fast" in alone.stderr


def test_memory_switches_change_the_pipeline_and_are_recorded(tiny_model_dir, astronaut_png, tmp_path, vip_main):
    from vipcli_model.config import ModelConfig
    from vipcli_model.outpainting.outpainter import Outpainter

    assert Outpainter(ModelConfig(model=str(tiny_model_dir), vae_tiling=True)).pipe.vae.use_tiling
    assert not Outpainter(ModelConfig(model=str(tiny_model_dir))).pipe.vae.use_tiling
    result = vip_main(
        *outpaint_args(
            astronaut_png, tiny_model_dir, tmp_path / "t.png", "--steps", "1", "--no-caption", "--vae-tiling"
        )
    )
    assert result.returncode == 0, result.stderr
    meta = read_metadata(tmp_path / "t.png")["vip"]
    assert meta["vae_tiling"] is True and meta["cpu_offload"] is False


def test_cpu_offload_without_cuda_is_refused_up_front(astronaut_png, vip_main, monkeypatch):
    """Offload moves submodels to the GPU while they run: with no CUDA device it is an option error
    (CUDA hidden here, so that GPU machines run this case too)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    offload = vip_main("outpaint", astronaut_png, "--ratio", "2x", "--cpu-offload", "--model", "/nonexistent")
    assert offload.returncode == 2 and "--cpu-offload needs a CUDA device" in offload.stderr


def test_default_levers_configure_the_pipeline_and_are_recorded(tiny_model_dir, astronaut_png, tmp_path, vip_main):
    """Each speed lever's effect on the loaded pipeline, and its trace in the output metadata."""
    from diffusers import DPMSolverMultistepScheduler, LCMScheduler
    from diffusers.models.attention_processor import AttnProcessor2_0

    from vipcli_model.config import ModelConfig
    from vipcli_model.outpainting.outpainter import Outpainter

    pipe = Outpainter(ModelConfig(model=str(tiny_model_dir))).pipe
    # SDPA attention everywhere the C-T-S processor is not installed (it is installed for one call only)
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"  # fp32 on CPU (bf16 is emulated, slow)
    # channels-last where measured faster: the VAE on CPU; the UNet (slower that way) stays contiguous
    vae_weight, unet_weight = pipe.vae.decoder.conv_in.weight, pipe.unet.conv_in.weight
    assert vae_weight.is_contiguous(memory_format=torch.channels_last) and not vae_weight.is_contiguous()
    assert unet_weight.is_contiguous()
    pipe.set_scheduler("dpm++")
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    pipe.set_scheduler("lcm")
    assert isinstance(pipe.scheduler, LCMScheduler)
    # the noise schedule is the model's whatever the sampler
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.num_train_timesteps == 1000

    result = vip_main(
        *outpaint_args(astronaut_png, tiny_model_dir, tmp_path / "d.png", "--steps", "2", "--no-caption", "--seed", "1")
    )
    assert result.returncode == 0, result.stderr
    meta = read_metadata(tmp_path / "d.png")["vip"]
    assert (meta["scheduler"], meta["steps"], meta["guidance"]) == ("dpm++", 2, 7.5)  # the default sampler, as run
    assert (meta["device"], meta["dtype"], meta["fast_lora"]) == ("cpu", "float32", None)
    assert meta["vae_tiling"] is False and meta["cpu_offload"] is False and meta["vae_channels_last"] is True
    # C-T-S only where it matters: no prompts, nothing to route, so the plain path ran and says so
    assert "skipped" in meta["cts"].get("note", "")


def test_compile_keeps_results_in_one_graph_compiled_once(
    tiny_model_dir, astronaut_png, tmp_path, vip_main, monkeypatch
):
    """--compile: the same picture, C-T-S routed inside a single compiled graph, and a batch compiles once.

    A counting backend stands in for inductor: the same tracing, guards and graph breaks, without
    minutes of code generation on a CPU.
    """
    import numpy as np
    import skimage.data
    import torch._dynamo
    from PIL import Image

    from vipcli_model.config import ExpansionConfig, GenerationConfig, ModelConfig
    from vipcli_model.outpainting import outpainter as outpaint_module
    from vipcli_model.prompts import RegionPrompts

    graphs: list[int] = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(len(graph_module.graph.nodes))
        return graph_module.forward

    monkeypatch.setitem(outpaint_module.COMPILE_OPTIONS, "backend", "eager")
    torch._dynamo.reset()
    try:
        common = [
            "outpaint",
            astronaut_png,
            "--ratio",
            "1.25x",
            "--model",
            tiny_model_dir,
            "--steps",
            "2",
            "--seed",
            "3",
            "--center",
            "a person",
            "--surrounding",
            "a red brick wall",
            "--feather",
            "0",
        ]
        plain = vip_main(*common, "-o", tmp_path / "plain.png")
        compiled = vip_main(*common, "--compile", "-o", tmp_path / "compiled.png")
        assert plain.returncode == 0 and compiled.returncode == 0, compiled.stderr
        assert read_metadata(tmp_path / "plain.png")["vip"]["compile"] is False
        meta = read_metadata(tmp_path / "compiled.png")["vip"]
        assert meta["compile"] is True and meta["cts"]["enabled"] and "note" not in meta["cts"]  # C-T-S ran
        np.testing.assert_allclose(pixels(tmp_path / "compiled.png"), pixels(tmp_path / "plain.png"), atol=1)

        torch._dynamo.reset()
        monkeypatch.setitem(outpaint_module.COMPILE_OPTIONS, "backend", counting_backend)
        outpainter = outpaint_module.Outpainter(ModelConfig(model=str(tiny_model_dir), compile=True))
        # every step guided (batch 2): one graph; the guidance interval's unguided steps (batch 1) add one more
        generation = GenerationConfig(steps=2, seed=0, guidance_interval=(0.0, float("inf")))
        expansion = ExpansionConfig(ratio="1.5x")
        photos = [Image.fromarray(photo()).resize((64, 64)) for photo in (skimage.data.chelsea, skimage.data.coffee)]
        outpainter.outpaint(
            photos[0],
            RegionPrompts(center="a cat", surrounding="a sofa", total="a cat on a sofa"),
            expansion=expansion,
            generation=generation,
        )
        # the whole UNet with its C-T-S routing is one graph: no data-dependent breaks
        assert len(graphs) == 1, f"{len(graphs)} graphs: C-T-S breaks the compiled UNet"
        # the next image of a batch (other prompts, other mask values) reuses it
        outpainter.outpaint(
            photos[1],
            RegionPrompts(center="a cup", surrounding="a table", total="a cup"),
            expansion=expansion,
            generation=generation,
        )
        assert len(graphs) == 1, "the second image recompiled the UNet"
        # the SD default guidance interval: unguided steps run batch 1, a few more graphs (dynamo's automatic
        # dynamic shapes may add one), compiled for the first image only
        interval = GenerationConfig(steps=2, seed=0)
        outpainter.outpaint(
            photos[1],
            RegionPrompts(center="a cup", surrounding="a table", total="a cup"),
            expansion=expansion,
            generation=interval,
        )
        compiled_graphs = len(graphs)
        assert compiled_graphs <= 3, f"{compiled_graphs} graphs with the guidance interval"
        outpainter.outpaint(
            photos[0],
            RegionPrompts(center="a cat", surrounding="a rug", total="a cat"),
            expansion=expansion,
            generation=interval,
        )
        assert len(graphs) == compiled_graphs, "the guidance interval recompiles the UNet for every image"
    finally:
        torch._dynamo.reset()


def test_compile_failure_is_one_clear_line(tiny_model_dir, astronaut_png, tmp_path, vip_main, monkeypatch):
    """A compiler that fails (no C++ compiler, unsupported device) is the user's one-line error, not a vip bug."""
    import torch._dynamo

    from vipcli_model.outpainting import outpainter as outpaint_module

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nsecond line")

    monkeypatch.setitem(outpaint_module.COMPILE_OPTIONS, "backend", broken_backend)
    torch._dynamo.reset()
    try:
        result = vip_main(
            *outpaint_args(
                astronaut_png, tiny_model_dir, tmp_path / "c.png", "--steps", "1", "--no-caption", "--compile"
            )
        )
    finally:
        torch._dynamo.reset()
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "--compile" in lines[0] and "no working C++ compiler" in lines[0] and "run without --compile" in lines[0]
    assert not (tmp_path / "c.png").exists()


def test_fast_lora_fuses_to_the_same_bits_as_diffusers(tiny_model_dir, tiny_lora_dir):
    """vip's fuse gives exactly the weights of diffusers' fuse_lora, and leaves no LoRA layer behind after the
    unload. The model's safetensors are memory-mapped, so on Linux the sums go into new memory and the replaced
    weights' pages are released: the released originals must not be what the model reads afterwards."""
    from diffusers import StableDiffusionInpaintPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    from vipcli_model.speed.lora_fuse import fuse_lora_weights

    fused = {}
    for how in ("diffusers", "vip", "vip, weights in ordinary memory"):
        pipe = StableDiffusionInpaintPipeline.from_pretrained(tiny_model_dir)
        if how == "vip, weights in ordinary memory":
            for parameter in pipe.unet.parameters():
                parameter.data = parameter.data.clone()  # out of the mapped file: the fuse adds in place
        before = {name: value.clone() for name, value in pipe.unet.state_dict().items()}
        pipe.load_lora_weights(str(tiny_lora_dir), weight_name="pytorch_lora_weights.safetensors", adapter_name="fast")
        if how == "diffusers":
            pipe.fuse_lora(lora_scale=1.0)
        else:
            layers = [module for module in pipe.unet.modules() if isinstance(module, BaseTunerLayer)]
            fused_here = fuse_lora_weights(pipe, "fast")
            assert layers and fused_here.merged == len(layers)  # every layer on vip's own path
            if how == "vip, weights in ordinary memory":
                assert fused_here.out_of_place == 0
            elif sys.platform.startswith("linux"):
                assert fused_here.out_of_place == len(layers)  # all in the mapped file: sums into new memory
            kernels = {tuple(layer.get_base_layer().weight.shape[2:]) for layer in layers}
            assert {(3, 3), (1, 1), ()} <= kernels  # 3x3 and 1x1 convolutions and linear layers, as in LCM-LoRA
        pipe.unload_lora_weights()
        assert not any(isinstance(module, BaseTunerLayer) for module in pipe.unet.modules())
        fused[how] = pipe.unet.state_dict()
    for how in ("vip", "vip, weights in ordinary memory"):
        assert fused["diffusers"].keys() == fused[how].keys() == before.keys()
        assert all(torch.equal(fused["diffusers"][name], fused[how][name]) for name in before), how
    assert any(not torch.equal(fused["vip"][name], before[name]) for name in before)  # the LoRA changed something


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memory maps are read from /proc/self/maps")
def test_fuse_tells_mapped_weights_from_ordinary_memory_and_releases_only_whole_pages(tmp_path):
    """The fuse adds out of place only for weights inside a mapped file; releasing a replaced weight's pages keeps
    what a read of those addresses sees (the file's bytes) and never touches a neighbour's partial page."""
    from safetensors.torch import load_file, save_file

    from vipcli_model.speed.lora_fuse import _file_mapped, _release_pages

    values = {"a": torch.arange(3000, dtype=torch.float32), "b": torch.arange(5000, dtype=torch.float32) * -1.0}
    save_file(values, str(tmp_path / "w.safetensors"))
    mapped = load_file(str(tmp_path / "w.safetensors"))
    ordinary = torch.arange(3000, dtype=torch.float32)
    assert _file_mapped([ordinary, mapped["a"], mapped["b"], mapped["a"][::2]]) == [False, True, True, False]
    mapped["b"] += 1  # b's pages now hold private copies; its first page also holds a's last bytes
    assert mapped["b"].data_ptr() % os.sysconf("SC_PAGE_SIZE") != 0  # (a 3000-value tensor ends mid-page)
    _release_pages(mapped["a"])
    assert torch.equal(mapped["a"], values["a"])  # released: read back from the file
    assert torch.equal(mapped["b"], values["b"] + 1)  # the shared edge page was not released
