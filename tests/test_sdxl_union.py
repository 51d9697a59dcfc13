"""SDXL + ControlNet Union: a tiny text-to-image SDXL model and a tiny ControlNetUnionModel (ProMax: 8 control
types) built in code, saved, and loaded through the same code a user's model goes through.

The family is read from the configs (an SDXL UNet with 4 input channels, paired with a ControlNet); the ControlNet
sees the photo with the area to generate blacked out, in its outpaint type; C-T-S routes region prompts in the
UNet's cross-attention; region strength 0 equals diffusers' plain StableDiffusionXLControlNetUnionInpaintPipeline;
`vip outpaint --model DIR --controlnet DIR` keeps the known pixels; what cannot run is refused in one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pixels
from diffusers import StableDiffusionXLControlNetUnionInpaintPipeline
from family_runs import outpaint_regions, quarters_to_generate, run_two_steps, vip_metadata
from PIL import Image
from tiny_models import save_tiny_controlnet_union, save_tiny_sdxl_base_model, save_tiny_sdxl_inpaint_model

from vipcli_model.config import ModelConfig
from vipcli_model.cts.attention import CTSAttnProcessor, CTSController, cross_attention_names
from vipcli_model.errors import OptionError
from vipcli_model.images.io import read_metadata
from vipcli_model.models.families import family_of_folder, family_of_pipeline
from vipcli_model.models.loading import load_pipeline
from vipcli_model.pipelines.sdxl_union import VipOutpaintXLUnionPipeline, outpaint_control_image

TOTAL = "Center: a red barn; Surrounding: a green field"
PROMAX = "OzzyGT/controlnet-union-promax-sdxl-1.0"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_tiny_sdxl_base_model(tmp_path_factory.mktemp("tiny-sdxl-base"))


@pytest.fixture(scope="module")
def union_dir(tmp_path_factory) -> Path:
    return save_tiny_controlnet_union(tmp_path_factory.mktemp("tiny-union-promax"))


@pytest.fixture(scope="module")
def pipe(base_dir, union_dir) -> VipOutpaintXLUnionPipeline:
    return load_pipeline(ModelConfig(model=str(base_dir), controlnet=str(union_dir), device="cpu", dtype="fp32"))


def _run(pipe, **kwargs) -> np.ndarray:
    return run_two_steps(pipe, 64, TOTAL, strength=1.0, **kwargs)


# ------------------------------------------------------------------ the family and the loading path


def test_family_is_read_from_the_configs_and_the_user_path_builds_the_union_pipeline(pipe, base_dir):
    assert family_of_folder(base_dir).name == "sdxl"  # alone: an SDXL model (refused below: not inpainting)
    assert family_of_folder(base_dir, controlnet=True).name == "sdxl-union"
    assert isinstance(pipe, VipOutpaintXLUnionPipeline) and family_of_pipeline(pipe).name == "sdxl-union"
    assert pipe.unet.config.in_channels == 4 and pipe.controlnet.config.num_control_type == 8


def test_xinsir_layout_loads_the_promax_beside_the_first_release(base_dir, union_dir, tmp_path):
    """xinsir's repository: the first release (6 types) under diffusers' names, the ProMax beside it."""
    from vipcli_model.models.controlnet import load_controlnet

    folder = tmp_path / "xinsir"
    first = save_tiny_controlnet_union(tmp_path / "first", seed=1, num_control_type=6)
    shutil.copytree(first, folder)
    shutil.copy(union_dir / "config.json", folder / "config_promax.json")
    shutil.copy(
        union_dir / "diffusion_pytorch_model.safetensors", folder / "diffusion_pytorch_model_promax.safetensors"
    )
    model = load_controlnet(str(folder), torch.float32)
    assert model.config.num_control_type == 8
    # the first release alone has no outpaint type: refused in one line when it would run
    pipe = load_pipeline(ModelConfig(model=str(base_dir), controlnet=str(first), device="cpu", dtype="fp32"))
    with pytest.raises(OptionError, match="6 control types and no inpaint / outpaint type"):
        _run(pipe)


# ------------------------------------------------------------------ C-T-S with the ControlNet


def test_region_strength_0_equals_the_plain_diffusers_union_pipeline(pipe):
    image, mask = quarters_to_generate(64)
    plain = StableDiffusionXLControlNetUnionInpaintPipeline(**pipe.components)
    plain.set_progress_bar_config(disable=True)
    expected = _run(plain, control_image=outpaint_control_image(image, mask), control_mode=7)
    # the control image and mode filled in by vip, the region prompts at gate 0: the plain pipeline's images
    zero = _run(pipe, center_prompt="a cat", surrounding_prompt="snowy mountains", region_strength=0.0)
    np.testing.assert_array_equal(zero, expected)
    # the control image is the photo with the area to generate black, and it reaches the UNet
    control = np.asarray(outpaint_control_image(image, mask))
    assert not control[:, :16].any() and not control[:, -16:].any()
    np.testing.assert_array_equal(control[:, 16:48], np.asarray(image)[:, 16:48])
    other = _run(plain, control_image=image, control_mode=7)
    assert np.abs(other - expected).max() > 1e-4


def test_region_prompts_route_in_every_unet_attn2_and_change_the_generated_area(pipe):
    """Recorded on the attention inputs: known tokens attend to the Center text, tokens to generate to the
    Surrounding, in every cross-attention of the UNet; the ControlNet's cross-attention keeps the Total."""
    calls: list[tuple[int, bool, torch.Tensor | None, int]] = []  # (block, center?, token subset, grid size)
    original, original_call = CTSAttnProcessor._attend, CTSAttnProcessor.__call__
    current = {}

    def call_spy(self, attn, hidden_states, encoder_hidden_states=None, *args, cts=None, **kwargs):
        current["state"] = cts.state if cts is not None else None
        return original_call(self, attn, hidden_states, encoder_hidden_states, *args, cts=cts, **kwargs)

    def spy(self, attn, query, context, attention_mask, deltas, tokens=None, skip=False):
        state = current["state"]
        if state is not None and not skip and tokens is not None:
            calls.append((self.index, torch.equal(context, state.center), tokens, query.shape[2]))
        return original(self, attn, query, context, attention_mask, deltas, tokens, skip)

    CTSAttnProcessor._attend, CTSAttnProcessor.__call__ = spy, call_spy
    try:
        controller = CTSController(pipe.unet, region_strength=1.0)
        regions = _run(pipe, center_prompt="a red barn", surrounding_prompt="snowy mountains", cts=controller)
    finally:
        CTSAttnProcessor._attend, CTSAttnProcessor.__call__ = original, original_call
    names = cross_attention_names(pipe.unet)
    assert {index for index, _, _, _ in calls} == set(range(len(names)))
    assert not any(isinstance(p, CTSAttnProcessor) for p in pipe.controlnet.attn_processors.values())
    columns = torch.arange(256) % 16  # the 16x16 grid of 64 px at VAE factor 2, one downsampling
    known = torch.nonzero((columns >= 4) & (columns < 12))[:, 0]
    to_generate = torch.nonzero((columns < 4) | (columns >= 12))[:, 0]
    on_grid = [(center, tokens) for _, center, tokens, size in calls if size == 256]
    assert {center for center, _ in on_grid} == {True, False}
    for center, tokens in on_grid:
        torch.testing.assert_close(tokens.cpu(), known if center else to_generate)
    assert np.abs(regions - _run(pipe)).max() > 1e-3


def test_levers_that_cannot_follow_the_controlnet_are_refused(pipe):
    with pytest.raises(OptionError, match="`guidance_interval`: not supported with a ControlNet"):
        _run(pipe, guidance_scale=5.0, guidance_interval=(0.3, 5.0))
    with pytest.raises(OptionError, match="`deep_cache`: not supported with a ControlNet"):
        _run(pipe, deep_cache=2)


# ------------------------------------------------------------------ memory plans


def test_the_memory_estimate_counts_the_controlnet_beside_the_unet(pipe, base_dir):
    from vipcli_model.models.loading import folder_parameters, pipeline_parameters
    from vipcli_model.models.memory import plan_memory

    counts = pipeline_parameters(base_dir, components={"controlnet": pipe.controlnet})
    assert counts["controlnet"] == sum(p.numel() for p in pipe.controlnet.parameters()) > 0
    assert {k: v for k, v in counts.items() if k != "controlnet"} == folder_parameters(base_dir)
    # SDXL's parameter counts in fp16, and the ProMax on the GPU with the UNet through the whole loop
    sdxl = {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840, "vae": 83_653_863}
    paired = {**sdxl, "controlnet": 1_250_000_000}  # ~2.5 GB of fp16 weights (its file's size)

    def needed(params: dict, mode: str) -> float:
        plan = plan_memory(
            device_type="cuda", free_bytes=None, params=params, denoiser="unet", itemsize=2, requested=mode
        )
        return plan.needed_gb

    for mode in ("full", "model-offload"):
        assert needed(paired, mode) - needed(sdxl, mode) == pytest.approx(2.5, abs=0.1), mode
    assert needed(paired, "group-offload") == needed(sdxl, "group-offload")  # two blocks of the largest part

    def auto(params: dict, free_gb: float) -> str:
        return plan_memory(
            device_type="cuda", free_bytes=int(free_gb * 1e9), params=params, denoiser="unet", itemsize=2
        ).mode

    assert (auto(sdxl, 11), auto(paired, 11), auto(paired, 10)) == ("full", "model-offload", "group-offload")


@pytest.mark.parametrize("mode", ["model-offload", "group-offload"])
def test_offload_plans_move_the_controlnet_like_the_unet(pipe, base_dir, union_dir, mode, monkeypatch):
    """On the CPU (the hooks run the same there): the ControlNet gets its own offload hook, which runs at every
    step, and the images are the unplaced pipeline's (up to float rounding: model offload on the CPU differs from
    the unplaced run by ~1e-6)."""
    from vipcli_model.models.loading import place_pipeline
    from vipcli_model.models.memory import MemoryPlan

    placed = load_pipeline(ModelConfig(model=str(base_dir), controlnet=str(union_dir), device="cpu", dtype="fp32"))
    place_pipeline(placed, MemoryPlan(mode, None, "test", None, None), torch.device("cpu"))
    controlnet_modules = set(placed.controlnet.modules())
    calls = []  # the ControlNet's offload hook at work: moves of its weights onto the device
    if mode == "model-offload":
        assert any(getattr(entry, "model", None) is placed.controlnet for entry in placed._all_hooks)
        hook = placed.controlnet._hf_hook
        original = hook.pre_forward
        hook.pre_forward = lambda module, *args, **kwargs: (calls.append(module), original(module, *args, **kwargs))[1]
    else:
        from diffusers.hooks.group_offloading import ModuleGroup

        original = ModuleGroup.onload_

        def onload(group):
            calls.extend(module for module in group.modules if module in controlnet_modules)
            return original(group)

        monkeypatch.setattr(ModuleGroup, "onload_", onload)
    np.testing.assert_allclose(_run(placed), _run(pipe), rtol=0, atol=1e-5)  # up to float rounding
    assert calls and set(calls) <= controlnet_modules
    if mode == "model-offload":
        assert len(calls) == 2  # once a step: both guidance branches run as one batch


# ------------------------------------------------------------------ the CLI


def _tiny_tcd_lora(base_dir: Path, folder: Path) -> Path:
    """A LoRA in the TCD-SDXL file's format (kohya keys, ``pytorch_lora_weights.safetensors``), shaped for the tiny
    UNet."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(base_dir / "unet")
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False))
    folder.mkdir()
    layers = {f"unet.{name}": value for name, value in get_peft_model_state_dict(unet).items()}
    save_file(convert_state_dict_to_kohya(layers), str(folder / "pytorch_lora_weights.safetensors"))
    return folder


def test_vip_outpaint_with_controlnet_keeps_known_pixels_in_a_batch(vip_main, base_dir, union_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(photos / f"{name}.png")
    out = tmp_path / "out"
    result = outpaint_regions(vip_main, photos, base_dir, out, "--controlnet", union_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("a", "b"):
        written = pixels(next(out.glob(f"{name}*.png")))
        assert written.shape == (72, 96, 3)
        np.testing.assert_array_equal(written[12:60, 16:80], pixels(photos / f"{name}.png"))  # exactly
    meta = vip_metadata(next(out.glob("a*.png")))
    assert meta["family"] == "sdxl-union" and meta["controlnet"] == str(union_dir) and meta["cts"]["enabled"]
    assert (meta["steps"], meta["guidance"], meta["scheduler"]) == (2, 5.0, "dpm++")


def test_fast_runs_the_tcd_preset_with_a_fused_lora(vip_main, base_dir, union_dir, tmp_path):
    """`--fast` with a ControlNet: a TCD LoRA fused (here one shaped for the tiny UNet), the TCD scheduler, guidance
    off; the LoRA changes the image."""
    lora = _tiny_tcd_lora(base_dir, tmp_path / "tcd-lora")
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(photo)
    common = ["outpaint", photo, "--model", base_dir, "--controlnet", union_dir, "--ratio", "1.5x", "--seed", "2"]
    common += ["--steps", "2", "--vae", "full", "--prompt", "a photo", "--feather", "0"]
    fast = vip_main(*common, "--fast", "--fast-lora", lora, "-o", tmp_path / "fast.png")
    assert fast.returncode == 0, fast.stderr[-3000:]
    meta = read_metadata(tmp_path / "fast.png")["vip"]
    assert (meta["scheduler"], meta["guidance"], meta["fast_lora"]) == ("tcd", 1.0, str(lora))
    plain = vip_main(*common, "--scheduler", "tcd", "--guidance", "1", "-o", tmp_path / "plain.png")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert np.abs(pixels(tmp_path / "fast.png").astype(int) - pixels(tmp_path / "plain.png")).max() > 0


def test_what_cannot_run_is_refused_in_one_line(vip_main, base_dir, union_dir, tiny_model_dir, tmp_path):
    inpaint_xl = save_tiny_sdxl_inpaint_model(tmp_path / "sdxl-inpaint")
    photo = tmp_path / "p.png"
    Image.new("RGB", (32, 32), (90, 120, 40)).save(photo)

    def refused(*args) -> str:
        result = vip_main("outpaint", photo, "--ratio", "1.5x", "--steps", "1", "-o", tmp_path / "x.png", *args)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        return lines[0]

    assert "text-to-image model outpaints with --controlnet union" in refused("--model", base_dir)
    assert "is an SDXL inpainting model" in refused("--model", inpaint_xl, "--controlnet", union_dir)
    assert "runs with text-to-image SDXL models" in refused("--model", tiny_model_dir, "--controlnet", union_dir)
    assert "ControlNet Union" in refused("--model", base_dir, "--controlnet", base_dir / "unet")
    single = tmp_path / "my-sdxl.safetensors"
    single.write_bytes(b"not a checkpoint")
    assert "is not a valid safetensors file" in refused("--model", single, "--controlnet", union_dir)
    # the fast preset's TCD LoRA is made for the real SDXL's layers, not the tiny model's
    assert "h1t/TCD-SDXL-LoRA is made for SDXL (2048-wide) only" in refused(
        "--model", base_dir, "--controlnet", union_dir, "--fast"
    )
    assert not (tmp_path / "x.png").exists()
    evaluated = vip_main("eval", "--pred", tmp_path, "--gt", tmp_path, "--controlnet", "union")
    assert evaluated.returncode != 0 and "--controlnet have no effect with --pred/--gt" in evaluated.stderr
    train = vip_main("train", tmp_path, "--model", base_dir, "--max-steps", "1", "--out", tmp_path / "run")
    assert train.returncode != 0 and "Traceback" not in train.stderr
    assert "--controlnet" in train.stderr


def test_a_single_file_sdxl_checkpoint_outpaints_with_the_controlnet(vip_main, tmp_path, tiny_model_dir):
    """One .safetensors in the original SDXL layout (as model sites give them) with `--controlnet`: loaded by
    ``from_single_file`` of the ControlNet pipeline with the configs of `--model-config`; the images of its diffusers
    folder, byte for byte."""
    from ldm_convert import save_sdxl_checkpoint

    base = save_tiny_sdxl_base_model(tmp_path / "base", width_2=48)  # two encoder widths, as the real model's
    union = save_tiny_controlnet_union(tmp_path / "union", width_2=48)
    checkpoint = save_sdxl_checkpoint(base, tmp_path / "my-sdxl.safetensors")
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(6).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(photo)
    run = ["outpaint", photo, "--controlnet", union, "--ratio", "1.5x", "--steps", "2", "--seed", "1"]
    run += ["--feather", "0", "--prompt", "a photo", "--center", "a red barn", "--surrounding", "snow"]
    from_file = vip_main(*run, "--model", checkpoint, "--model-config", base, "-o", tmp_path / "file.png")
    assert from_file.returncode == 0, from_file.stderr[-3000:]
    from_folder = vip_main(*run, "--model", base, "-o", tmp_path / "folder.png")
    assert from_folder.returncode == 0, from_folder.stderr[-3000:]
    np.testing.assert_array_equal(pixels(tmp_path / "file.png"), pixels(tmp_path / "folder.png"))
    meta = read_metadata(tmp_path / "file.png")["vip"]
    assert meta["family"] == "sdxl-union" and meta["model"] == str(checkpoint)

    def refused(*args) -> str:
        result = vip_main(*run, "--model", checkpoint, *args, "-o", tmp_path / "x.png")
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode != 0 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        return lines[0]

    # the configs of an SD inpainting model do not describe an SDXL checkpoint
    assert "text-to-image SDXL models with --controlnet" in refused("--model-config", tiny_model_dir)
    # without `--model-config`: the pairing preset's configs, not cached here (offline): named with the fix
    line = refused()
    assert "SG161222/RealVisXL_V5.0_Lightning" in line and "vip models download sdxl-union" in line
    assert "--model-config" in line
    assert not (tmp_path / "x.png").exists()


def test_controlnet_preset_downloads_only_the_promax_files(vip_main, union_dir, monkeypatch):
    """`--controlnet union` is the diffusers-layout ProMax; xinsir's repository gives its ProMax pair only."""
    from fake_hub import FakeHub, online_through, repo_from_listing

    from vipcli_model.models.controlnet import load_controlnet

    xinsir = "xinsir/controlnet-union-sdxl-1.0"
    weights = (union_dir / "diffusion_pytorch_model.safetensors").read_bytes()
    config = (union_dir / "config.json").read_bytes()
    server = FakeHub()
    server.add(repo_from_listing(PROMAX, {"config.json": config, "diffusion_pytorch_model.fp16.safetensors": weights}))
    server.add(
        repo_from_listing(xinsir, {"config_promax.json": config, "diffusion_pytorch_model_promax.safetensors": weights})
    )
    with online_through(server, monkeypatch):
        results = [vip_main("models", "download", spec) for spec in ("union", xinsir)]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    assert server.fetched(PROMAX) == {"config.json", "diffusion_pytorch_model.fp16.safetensors"}
    assert server.fetched(xinsir) == {"config_promax.json", "diffusion_pytorch_model_promax.safetensors"}
    for spec in ("union", xinsir):  # offline again: both load from the cache
        assert load_controlnet(spec, torch.float32).config.num_control_type == 8


def test_vip_eval_generates_and_scores_with_the_controlnet(base_dir, union_dir, tmp_path):
    from tiny_models import save_random_inception

    from vipcli_model.config import GenerationConfig
    from vipcli_model.evaluation.runner import EvalConfig, ScoreConfig, run_eval

    data = tmp_path / "test"
    data.mkdir()
    Image.fromarray(np.random.default_rng(4).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / "x.png")
    config = EvalConfig(
        data_dir=data,
        out_dir=tmp_path / "run",
        generation=GenerationConfig(steps=1, seed=0, guidance=1.0),
        model=ModelConfig(model=str(base_dir), controlnet=str(union_dir), device="cpu"),
        scoring=ScoreConfig(
            feature_weights=str(save_random_inception(tmp_path / "inception.pth")), device="cpu", lpips=False
        ),
    )
    report = run_eval(config)
    assert report.results["skipped"] == [] and report.results["settings"]["unconditional"]["images"] == 1
    meta = read_metadata(next((config.out_dir / "pred").rglob("x*.png")))["vip"]
    assert meta["family"] == "sdxl-union" and meta["controlnet"] == str(union_dir)
    assert json.loads((config.out_dir / "run.json").read_text())["controlnet"] == str(union_dir)


def test_union_and_tcd_presets_download_once_then_run_offline(vip_main, base_dir, union_dir, tmp_path, monkeypatch):
    """The presets through the stand-in hub: fetched once, then the same run from the cache with HF_HUB_OFFLINE=1;
    a file gone from the cache is named in one line with what to do."""
    import os

    from fake_hub import FakeHub, online_through, repo_from_listing

    from vipcli_model.errors import ModelNotFoundError
    from vipcli_model.models.loading import load_fast_lora

    tcd = "h1t/TCD-SDXL-LoRA"
    lora = _tiny_tcd_lora(base_dir, tmp_path / "tcd-lora") / "pytorch_lora_weights.safetensors"
    server = FakeHub()
    weights = (union_dir / "diffusion_pytorch_model.safetensors").read_bytes()
    config = (union_dir / "config.json").read_bytes()
    server.add(repo_from_listing(PROMAX, {"config.json": config, "diffusion_pytorch_model.fp16.safetensors": weights}))
    server.add(repo_from_listing(tcd, {"pytorch_lora_weights.safetensors": lora.read_bytes()}))
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(photo)
    run = ["outpaint", photo, "--model", base_dir, "--controlnet", "union", "--ratio", "1.5x", "--steps", "1"]
    run += ["--seed", "0", "--prompt", "a photo", "--feather", "0"]
    with online_through(server, monkeypatch):
        first = vip_main(*run, "-o", tmp_path / "first.png")
        downloaded = vip_main("models", "download", "tcd-lora-sdxl")
    assert first.returncode == 0, first.stderr[-3000:]
    assert downloaded.returncode == 0, downloaded.stderr[-3000:]
    assert server.fetched(PROMAX) == {"config.json", "diffusion_pytorch_model.fp16.safetensors"}
    assert server.fetched(tcd) == {"pytorch_lora_weights.safetensors"}

    # offline, the hub gone: the same run from the cache, the same pixels
    again = vip_main(*run, "-o", tmp_path / "again.png")
    assert again.returncode == 0, again.stderr[-3000:]
    np.testing.assert_array_equal(pixels(tmp_path / "again.png"), pixels(tmp_path / "first.png"))
    # the TCD LoRA of `fast` (refused on the tiny model's 64-wide layers, so fused here through the library)
    pipe = load_pipeline(ModelConfig(model=str(base_dir), controlnet="union", device="cpu", dtype="fp32"))
    before = {name: value.clone() for name, value in pipe.unet.state_dict().items() if "to_q" in name}
    load_fast_lora(pipe, "tcd-lora-sdxl")
    after = pipe.unet.state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)

    # a file gone from the cache: one line naming the model and the fix, for each preset
    caches = Path(os.environ["HF_HOME"]).parent
    next(caches.rglob("models--OzzyGT--*/snapshots/*/diffusion_pytorch_model.fp16.safetensors")).unlink()
    next(caches.rglob("models--h1t--TCD-SDXL-LoRA/snapshots/*/pytorch_lora_weights.safetensors")).unlink()
    missing = vip_main(*run, "-o", tmp_path / "missing.png")
    lines = [line for line in missing.stderr.splitlines() if line.strip()]
    assert missing.returncode != 0 and len(lines) == 1 and "Traceback" not in missing.stderr, missing.stderr
    assert PROMAX in lines[0] and "HF_HUB_OFFLINE=1" in lines[0] and "`vip models download union`" in lines[0]
    assert "--controlnet" in lines[0]
    with pytest.raises(ModelNotFoundError, match="`vip models download tcd-lora-sdxl`") as refused:
        load_fast_lora(pipe, "tcd-lora-sdxl")
    assert tcd in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "missing.png").exists()
