"""The SDXL family: a tiny SDXL inpainting model built in code, loaded through the same code a user's model goes
through.

The family is chosen from the model's configs; C-T-S routes region prompts in every attn2 (cross_attention_dim =
the two encoders' widths concatenated); region strength 0 equals diffusers' plain StableDiffusionXLInpaintPipeline;
`vip outpaint --model DIR` runs end to end and keeps the known pixels; `vip train` trains a C-T-S adapter on it
(adapter mode); `--fast` fuses the family's LCM-LoRA (served by the stand-in hub) and runs its preset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pixels
from diffusers import StableDiffusionXLInpaintPipeline
from family_runs import outpaint_regions, quarters_to_generate, random_photo, run_two_steps, train_photos, vip_metadata
from PIL import Image
from tiny_models import save_tiny_sdxl_inpaint_model

from vipcli_model.config import ModelConfig
from vipcli_model.cts.attention import CTSAttnProcessor, CTSController, CTSState, cross_attention_names
from vipcli_model.errors import ModelLoadError
from vipcli_model.images.io import read_metadata
from vipcli_model.models.families import family_from_configs, family_of_folder, family_of_pipeline
from vipcli_model.models.loading import load_pipeline
from vipcli_model.pipelines.sdxl import VipOutpaintXLPipeline

TOTAL = "Center: a red barn; Surrounding: a green field"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory) -> Path:
    return save_tiny_sdxl_inpaint_model(tmp_path_factory.mktemp("tiny-sdxl-inpaint"))


@pytest.fixture(scope="module")
def sdxl_pipe(sdxl_dir) -> VipOutpaintXLPipeline:
    return load_pipeline(ModelConfig(model=str(sdxl_dir), device="cpu", dtype="fp32"))


def _run(pipe, **kwargs) -> np.ndarray:
    return run_two_steps(pipe, 64, TOTAL, **kwargs)


# ------------------------------------------------------------------ the family, from the configs


def test_family_is_read_from_the_configs_not_the_name(sdxl_dir, tiny_model_dir, tmp_path):
    assert family_of_folder(sdxl_dir).name == "sdxl"
    assert family_of_folder(tiny_model_dir).name == "sd"
    renamed = tmp_path / "stable-diffusion-v1-5-inpainting"  # an SDXL model whose name says SD-1.5
    renamed.symlink_to(sdxl_dir, target_is_directory=True)
    assert family_of_folder(renamed).name == "sdxl"
    with pytest.raises(ModelLoadError, match="FluxFillPipeline.*SDXL, SD-1.x/2.x"):
        family_from_configs(
            {"_class_name": "FluxFillPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}, {}
        )


def test_loaded_through_the_user_path_as_the_sdxl_pipeline(sdxl_pipe):
    assert isinstance(sdxl_pipe, VipOutpaintXLPipeline)
    assert family_of_pipeline(sdxl_pipe).name == "sdxl"
    assert sdxl_pipe.working_resolution == 64  # sample_size 32 x VAE factor 2 (the real model: 128 x 8 = 1024)
    assert sdxl_pipe.unet.config.cross_attention_dim == 64  # 32 + 32: both encoders' states concatenated


# ------------------------------------------------------------------ C-T-S on SDXL


def test_every_attn2_routes_center_and_surrounding_tokens(sdxl_pipe):
    """Recorded on the attention inputs: known tokens attend to the Center text, tokens to generate to the
    Surrounding."""
    calls: list[tuple[int, str, torch.Tensor | None, int]] = []  # (block, branch, token subset, grid size)
    original, original_call = CTSAttnProcessor._attend, CTSAttnProcessor.__call__
    current = {}  # the C-T-S state of the attention running now, from its keywords

    def call_spy(self, attn, hidden_states, encoder_hidden_states=None, *args, cts=None, **kwargs):
        current["state"] = cts.state if cts is not None else None
        return original_call(self, attn, hidden_states, encoder_hidden_states, *args, cts=cts, **kwargs)

    def spy(self, attn, query, context, attention_mask, deltas, tokens=None, skip=False):
        state = current["state"]
        branch = (
            "center"
            if context is state.center or torch.equal(context, state.center)
            else ("surrounding" if torch.equal(context, state.surrounding) else "total")
        )
        if not (skip and branch == "total"):
            calls.append((self.index, branch, tokens, query.shape[2]))
        return original(self, attn, query, context, attention_mask, deltas, tokens, skip)

    names = cross_attention_names(sdxl_pipe.unet)
    CTSAttnProcessor._attend, CTSAttnProcessor.__call__ = spy, call_spy
    try:
        controller = CTSController(sdxl_pipe.unet, region_strength=1.0)
        _run(sdxl_pipe, center_prompt="a red barn", surrounding_prompt="snowy mountains", cts=controller)
    finally:
        CTSAttnProcessor._attend, CTSAttnProcessor.__call__ = original, original_call
    assert all(".attn2." in name for name in names)
    assert {index for index, _, _, _ in calls} == set(range(len(names)))  # C-T-S in every cross-attention
    # the tiny model's cross-attention runs on a 16x16 grid (64 px, VAE factor 2, one downsampling) and 8x8 below;
    # the left and right quarters are to generate: columns 0-3 and 12-15 of the 16x16 grid
    columns = torch.arange(256) % 16
    known = torch.nonzero((columns >= 4) & (columns < 12))[:, 0]
    to_generate = torch.nonzero((columns < 4) | (columns >= 12))[:, 0]
    on_grid = [(branch, tokens) for _, branch, tokens, size in calls if size == 256]
    assert on_grid and {branch for branch, _ in on_grid} == {"center", "surrounding"}
    for branch, tokens in on_grid:
        torch.testing.assert_close(tokens.cpu(), known if branch == "center" else to_generate)


def test_region_strength_0_equals_the_plain_sdxl_pipeline(sdxl_pipe):
    plain = StableDiffusionXLInpaintPipeline(**sdxl_pipe.components)
    plain.set_progress_bar_config(disable=True)
    expected = _run(plain)  # the parent's default strength (0.9999) is the pipeline's too
    zero = _run(sdxl_pipe, center_prompt="a cat", surrounding_prompt="snowy mountains", region_strength=0.0)
    np.testing.assert_array_equal(zero, expected)
    np.testing.assert_array_equal(_run(sdxl_pipe), expected)  # no region prompt: plain inpainting
    # the outpainter's strength: every step runs, the new area starts from noise
    zero = _run(
        sdxl_pipe, center_prompt="a cat", surrounding_prompt="snowy mountains", region_strength=0.0, strength=1.0
    )
    np.testing.assert_array_equal(zero, _run(plain, strength=1.0))


def test_region_prompts_change_the_generated_area(sdxl_pipe):
    total_only = _run(sdxl_pipe)
    regions = _run(sdxl_pipe, center_prompt="a red barn", surrounding_prompt="snowy mountains", region_strength=1.0)
    assert np.abs(regions - total_only).max() > 1e-3
    # with the center prompt equal to the Total and only the Surrounding changed, C-T-S acts where tokens generate
    surround_only = _run(sdxl_pipe, surrounding_prompt="snowy mountains", region_strength=1.0)
    assert np.abs(surround_only - total_only).max() > 1e-3


def test_pooled_embedding_and_time_ids_come_from_the_total_prompt(sdxl_pipe):
    image, mask = quarters_to_generate(64)
    seen = {}
    original = StableDiffusionXLInpaintPipeline.__call__

    def spy(self, **kwargs):
        seen.update(kwargs)
        return original(self, **kwargs)

    StableDiffusionXLInpaintPipeline.__call__ = spy
    try:
        sdxl_pipe(
            prompt=TOTAL,
            image=image,
            mask_image=mask,
            center_prompt="a cat",
            surrounding_prompt="the sea",
            num_inference_steps=1,
            strength=1.0,
            output_type="np",
        )
    finally:
        StableDiffusionXLInpaintPipeline.__call__ = original
    _, _, pooled, _ = sdxl_pipe.encode_prompt(prompt=TOTAL, device="cpu", num_images_per_prompt=1)
    torch.testing.assert_close(seen["pooled_prompt_embeds"], pooled)
    assert "add_time_ids" not in seen  # computed by diffusers from the sizes, once, for every token


def test_batch_of_region_embeddings_must_match(sdxl_pipe):
    controller = CTSController(sdxl_pipe.unet, region_strength=0.5)
    state = CTSState(center=torch.zeros(1, 77, 64), surrounding=torch.zeros(1, 77, 64), mask=torch.ones(1, 1, 32, 32))
    image, mask = quarters_to_generate(64)
    with controller.active(state), pytest.raises(ValueError, match="region embeddings have batch 1"):
        StableDiffusionXLInpaintPipeline.__call__(
            sdxl_pipe, prompt=TOTAL, image=image, mask_image=mask, num_inference_steps=1, strength=1.0, output_type="np"
        )


# ------------------------------------------------------------------ the CLI


def test_vip_outpaint_runs_sdxl_end_to_end_and_keeps_known_pixels(vip_main, sdxl_dir, tmp_path):
    source = random_photo(tmp_path / "photo.png")
    out = tmp_path / "out.png"
    result = outpaint_regions(vip_main, source, sdxl_dir, out)
    assert result.returncode == 0, result.stderr[-3000:]
    written, original = pixels(out), pixels(source)
    assert written.shape == (72, 96, 3)
    np.testing.assert_array_equal(written[12:60, 16:80], original)  # the known center, exactly
    meta = vip_metadata(out)
    assert meta["family"] == "sdxl" and meta["cts"]["enabled"] and meta["model"] == str(sdxl_dir)


def test_vip_train_adapter_on_sdxl_then_outpaint_with_it(vip_main, sdxl_dir, tmp_path):
    data = train_photos(tmp_path / "data")
    run = tmp_path / "run"
    args = [
        "train",
        data,
        "--model",
        sdxl_dir,
        "--max-steps",
        "2",
        "--resolution",
        "64",
        "--batch-size",
        "1",
        "--rank",
        "4",
        "--validate-every",
        "0",
    ]
    lora = vip_main(*args, "--out", tmp_path / "lora-run", "--mode", "lora")
    assert lora.returncode != 0 and "SDXL trains in adapter mode only" in lora.stderr and "Traceback" not in lora.stderr
    result = vip_main(*args, "--out", run)
    assert result.returncode == 0, result.stderr[-3000:]
    adapters = list(run.rglob("cts_adapter.safetensors"))
    assert adapters
    out = tmp_path / "out.png"
    used = vip_main(
        "outpaint",
        data / "img0.png",
        "--model",
        sdxl_dir,
        "--adapter",
        adapters[0],
        "--ratio",
        "1.5x",
        "--steps",
        "2",
        "--center",
        "a barn",
        "--surrounding",
        "snow",
        "-o",
        out,
    )
    assert used.returncode == 0, used.stderr[-3000:]
    meta = vip_metadata(out)
    assert meta["family"] == "sdxl" and meta["cts"]["mode"] == "adapter"


@pytest.fixture(scope="module")
def sdxl_lora_repo(sdxl_dir, tmp_path_factory) -> Path:
    """A LoRA for the tiny SDXL UNet in the layout of the published LCM-LoRAs (webui-compatible ``lora_unet_*`` keys
    with ``alpha``, UNet only, in one pytorch_lora_weights.safetensors) on attention, projections and feed-forwards
    (random, non-zero)."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(sdxl_dir / "unet")
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS, init_lora_weights=False))
    layers = {f"unet.{name}": value for name, value in get_peft_model_state_dict(unet).items()}
    folder = tmp_path_factory.mktemp("tiny-lcm-lora-sdxl")
    save_file(convert_state_dict_to_kohya(layers), str(folder / "pytorch_lora_weights.safetensors"))
    return folder


def test_fast_lora_is_fused_into_every_targeted_layer(sdxl_dir, sdxl_lora_repo):
    from vipcli_model.models.loading import load_fast_lora

    pipe = load_pipeline(ModelConfig(model=str(sdxl_dir), device="cpu", dtype="fp32"))
    layers = [
        name
        for name, module in pipe.unet.named_modules()
        if isinstance(module, torch.nn.Linear) and name.endswith(tuple(LORA_TARGETS))
    ]
    before = {name: pipe.unet.get_submodule(name).weight.clone() for name in layers}
    with pytest.MonkeyPatch.context() as patch:  # LCM-LoRA's layout is the plain case: no PEFT layer is made
        patch.setattr(type(pipe), "load_lora_weights", lambda *args, **kwargs: pytest.fail("PEFT layers made"))
        load_fast_lora(pipe, str(sdxl_lora_repo))
    unchanged = [name for name in layers if torch.equal(pipe.unet.get_submodule(name).weight, before[name])]
    assert layers and not unchanged  # attention (attn1, attn2), proj_in / proj_out and feed-forwards alike
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())  # fused, the LoRA layers gone
    # the weights diffusers' own load_lora_weights + fuse_lora give (SDXL's read maps webui blocks by the config)
    reference = load_pipeline(ModelConfig(model=str(sdxl_dir), device="cpu", dtype="fp32"))
    reference.load_lora_weights(str(sdxl_lora_repo), weight_name="pytorch_lora_weights.safetensors")
    reference.fuse_lora(lora_scale=1.0)
    reference.unload_lora_weights()
    expected, fused = reference.unet.state_dict(), pipe.unet.state_dict()
    assert expected.keys() == fused.keys() and all(torch.equal(expected[name], fused[name]) for name in expected)


def test_fast_fetches_the_sdxl_lcm_lora_fuses_it_and_records_it(sdxl_dir, sdxl_lora_repo, astronaut_png, tmp_path):
    """`--fast` on an SDXL model picks the family's LoRA (latent-consistency/lcm-lora-sdxl), downloads it from the
    stand-in hub (the real repository's file tree, only the weights fetched), fuses it and runs its preset."""
    from conftest import run_vip
    from fake_hub import FakeHub, repo_from_listing
    from hub_content import save_tiny_taesd_repo

    lcm_sdxl, taesdxl = "latent-consistency/lcm-lora-sdxl", "madebyollin/taesdxl"
    hub = FakeHub()
    hub.add(repo_from_listing(lcm_sdxl, sdxl_lora_repo))
    hub.add(repo_from_listing(taesdxl, save_tiny_taesd_repo(tmp_path / "taesdxl")))
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "", "VIP_HUB_TIMEOUT": "3", "HF_TOKEN": ""}
    common = [
        "outpaint",
        str(astronaut_png),
        "--model",
        str(sdxl_dir),
        "--ratio",
        "1.25x",
        "--seed",
        "3",
        "--feather",
        "0",
        "--prompt",
        "a photo",
    ]
    try:
        fast = run_vip(*common, "--fast", "-o", str(tmp_path / "fast.png"), env=env)
    finally:
        hub.close()
    assert fast.returncode == 0, fast.stderr[-3000:]
    assert hub.fetched(lcm_sdxl) == {"pytorch_lora_weights.safetensors"}  # not the PDF, not the README
    meta = read_metadata(tmp_path / "fast.png")["vip"]
    assert meta["family"] == "sdxl" and meta["fast_lora"] == lcm_sdxl
    assert (meta["scheduler"], meta["steps"], meta["guidance"]) == ("lcm", 4, 1.0)  # the family's fast preset
    assert meta["vae"] == taesdxl and hub.fetched(taesdxl)  # --fast decodes with the family's tiny autoencoder
    # the same schedule and autoencoder without the LoRA (offline: both cached now): another image, so it was fused
    plain = run_vip(
        *common,
        "--scheduler",
        "lcm",
        "--steps",
        "4",
        "--guidance",
        "1",
        "--vae",
        "tiny",
        "-o",
        str(tmp_path / "plain.png"),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert read_metadata(tmp_path / "plain.png")["vip"]["fast_lora"] is None
    assert np.abs(pixels(tmp_path / "fast.png").astype(int) - pixels(tmp_path / "plain.png")).max() > 0


def test_fast_lora_from_a_folder_on_sdxl_and_another_familys_lora_refused(
    vip_main, sdxl_dir, sdxl_lora_repo, astronaut_png, tmp_path
):
    out = tmp_path / "folder.png"
    local = vip_main(
        "outpaint",
        astronaut_png,
        "--model",
        sdxl_dir,
        "--ratio",
        "1.25x",
        "--fast",
        "--fast-lora",
        sdxl_lora_repo,
        "--steps",
        "2",
        "--vae",
        "full",
        "--prompt",
        "a photo",
        "-o",
        out,
    )
    assert local.returncode == 0, local.stderr[-3000:]
    meta = read_metadata(out)["vip"]
    assert meta["fast_lora"] == str(sdxl_lora_repo) and (meta["scheduler"], meta["steps"]) == ("lcm", 2)
    wrong = vip_main(
        "outpaint",
        astronaut_png,
        "--model",
        sdxl_dir,
        "--ratio",
        "1.5x",
        "--fast",
        "--fast-lora",
        "lcm-lora-sd15",
        "-o",
        tmp_path / "f.png",
    )
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "lcm-lora-sdv1-5 is made for SD-1.x/2.x, not SDXL: use latent-consistency/lcm-lora-sdxl" in wrong.stderr
    assert not (tmp_path / "f.png").exists()


# ------------------------------------------------------------------ vip eval through the family


def run_family_eval(model_dir: Path, root: Path):
    """`vip eval` (generate and score, the standard protocol) on two photos with Center / Surrounding prompts, in a
    subprocess as a user runs it; the metric networks have random weights in the layout of the real files."""
    import skimage.data
    from conftest import run_vip
    from tiny_models import save_random_inception

    from vipcli_model.evaluation.perceptual import ALEXNET_FILE, AlexNetFeatures

    data, caches = root / "data", root / "caches"
    data.mkdir(parents=True)
    names = ("astronaut", "coffee")
    for name in names:
        Image.fromarray(getattr(skimage.data, name)()).save(data / f"{name}.png")
    prompts = root / "described.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"image": f"{name}.png", "center": f"a {name}", "surrounding": "a garden"}) + "\n"
            for name in names
        )
    )
    torch.manual_seed(0)
    backbone = caches / "vip" / "metrics" / ALEXNET_FILE  # LPIPS: found in the metrics cache
    backbone.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in AlexNetFeatures().features.state_dict().items()}, backbone)
    env = {
        "HF_HOME": str(caches / "hf"),
        "HF_HUB_CACHE": str(caches / "hf" / "hub"),
        "VIP_CACHE_DIR": str(caches / "vip"),
        "TORCH_HOME": str(caches / "torch"),
        "HF_HUB_OFFLINE": "1",
    }
    run = root / "run"
    result = run_vip(
        "eval",
        str(data),
        "--model",
        str(model_dir),
        "--feature-weights",
        str(save_random_inception(root / "inception.pth")),
        "--out",
        str(run),
        "--steps",
        "2",
        "--seed",
        "1",
        "--prompts",
        str(prompts),
        env=env,
    )
    return result, run


def check_family_eval(result, run: Path, family: str) -> dict:
    """The run scored both images, pasted every known pixel back, and its outputs name the family."""
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "results.json").read_text())["settings"]["described"]
    assert (
        summary["images"] == 2 and np.isfinite(summary["fid"]) and summary["lpips_known"] == pytest.approx(0, abs=1e-6)
    )
    for name in ("astronaut", "coffee"):
        output, truth = pixels(run / "pred" / "described" / f"{name}.png"), pixels(run / "gt" / f"{name}.png")
        assert np.array_equal(output[32:160, 32:160], truth[32:160, 32:160])  # the known center, exactly
        assert not np.array_equal(output, truth)
    meta = read_metadata(run / "pred" / "described" / "astronaut.png")["vip"]
    assert meta["family"] == family and meta["cts"]["enabled"] and meta["prompts"]["surrounding"] == "a garden"
    return meta


def test_vip_eval_runs_on_sdxl_end_to_end(sdxl_dir, tmp_path):
    meta = check_family_eval(*run_family_eval(sdxl_dir, tmp_path), "sdxl")
    assert (meta["guidance"], meta["scheduler"], meta["steps"]) == (7.5, "dpm++", 2)
