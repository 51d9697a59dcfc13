"""The SDXL family: a tiny SDXL inpainting model built in code, loaded through the same code a user's model goes through.

The family is chosen from the model's configs; C-T-S routes region prompts in every attn2 (cross_attention_dim =
the two encoders' widths concatenated); region strength 0 equals diffusers' plain StableDiffusionXLInpaintPipeline;
`vip outpaint --model DIR` runs end to end and keeps the known pixels; `vip train` trains a C-T-S adapter on it
(adapter mode); `--fast` says in one line that SDXL has no fast preset yet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLInpaintPipeline
from PIL import Image
from tiny_models import save_tiny_sdxl_inpaint_model

from conftest import pixels
from vipcli_model.config import ModelConfig
from vipcli_model.cts import CTSAttnProcessor, CTSController, CTSState, cross_attention_names
from vipcli_model.errors import ModelLoadError
from vipcli_model.families import family_from_configs, family_of_folder, family_of_pipeline
from vipcli_model.families.sdxl_pipeline import VipOutpaintXLPipeline
from vipcli_model.image_io import read_metadata
from vipcli_model.loading import load_pipeline

TOTAL = "Center: a red barn; Surrounding: a green field"


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory) -> Path:
    return save_tiny_sdxl_inpaint_model(tmp_path_factory.mktemp("tiny-sdxl-inpaint"))


@pytest.fixture(scope="module")
def sdxl_pipe(sdxl_dir) -> VipOutpaintXLPipeline:
    return load_pipeline(ModelConfig(model=str(sdxl_dir), device="cpu", dtype="fp32"))


def _inputs(size: int = 64) -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, : size // 4] = 255
    mask[:, -size // 4 :] = 255  # left and right quarters: generate
    return image, Image.fromarray(mask)


def _run(pipe, **kwargs) -> np.ndarray:
    image, mask = _inputs()
    output = pipe(prompt=TOTAL, image=image, mask_image=mask, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0), output_type="np", **kwargs)
    images = output.images if hasattr(output, "images") else output[0]
    return np.asarray(images[0])


# ------------------------------------------------------------------ the family, from the configs


def test_family_is_read_from_the_configs_not_the_name(sdxl_dir, tiny_model_dir, tmp_path):
    assert family_of_folder(sdxl_dir).name == "sdxl"
    assert family_of_folder(tiny_model_dir).name == "sd"
    renamed = tmp_path / "stable-diffusion-v1-5-inpainting"  # an SDXL model whose name says SD-1.5
    renamed.symlink_to(sdxl_dir, target_is_directory=True)
    assert family_of_folder(renamed).name == "sdxl"
    with pytest.raises(ModelLoadError, match="FluxFillPipeline.*SDXL, SD-1.x/2.x"):
        family_from_configs({"_class_name": "FluxFillPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}, {})


def test_loaded_through_the_user_path_as_the_sdxl_pipeline(sdxl_pipe):
    assert isinstance(sdxl_pipe, VipOutpaintXLPipeline)
    assert family_of_pipeline(sdxl_pipe).name == "sdxl"
    assert sdxl_pipe.working_resolution == 64  # sample_size 32 x VAE factor 2 (the real model: 128 x 8 = 1024)
    assert sdxl_pipe.unet.config.cross_attention_dim == 64  # 32 + 32: both encoders' states concatenated


# ------------------------------------------------------------------ C-T-S on SDXL


def test_every_attn2_routes_center_and_surrounding_tokens(sdxl_pipe):
    """Recorded on the attention inputs: known tokens attend to the Center text, tokens to generate to the Surrounding."""
    calls: list[tuple[int, str, torch.Tensor | None, int]] = []  # (block, branch, token subset, grid size)
    original = CTSAttnProcessor._attend

    def spy(self, attn, query, context, attention_mask, deltas, tokens=None, skip=False):
        state = self.controller.state
        branch = "center" if context is state.center or torch.equal(context, state.center) else (
            "surrounding" if torch.equal(context, state.surrounding) else "total")
        if not (skip and branch == "total"):
            calls.append((self.index, branch, tokens, query.shape[2]))
        return original(self, attn, query, context, attention_mask, deltas, tokens, skip)

    names = cross_attention_names(sdxl_pipe.unet)
    CTSAttnProcessor._attend = spy
    try:
        controller = CTSController(sdxl_pipe.unet, region_strength=1.0)
        _run(sdxl_pipe, center_prompt="a red barn", surrounding_prompt="snowy mountains", cts=controller)
    finally:
        CTSAttnProcessor._attend = original
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
    expected = _run(plain, strength=1.0)  # vip's default strength: every step runs, the new area starts from noise
    zero = _run(sdxl_pipe, center_prompt="a cat", surrounding_prompt="snowy mountains", region_strength=0.0)
    np.testing.assert_array_equal(zero, expected)
    np.testing.assert_array_equal(_run(sdxl_pipe), expected)  # no region prompt: plain inpainting


def test_region_prompts_change_the_generated_area(sdxl_pipe):
    total_only = _run(sdxl_pipe)
    regions = _run(sdxl_pipe, center_prompt="a red barn", surrounding_prompt="snowy mountains", region_strength=1.0)
    assert np.abs(regions - total_only).max() > 1e-3
    # with the center prompt equal to the Total and only the Surrounding changed, C-T-S acts where tokens generate
    surround_only = _run(sdxl_pipe, surrounding_prompt="snowy mountains", region_strength=1.0)
    assert np.abs(surround_only - total_only).max() > 1e-3


def test_pooled_embedding_and_time_ids_come_from_the_total_prompt(sdxl_pipe):
    image, mask = _inputs()
    seen = {}
    original = StableDiffusionXLInpaintPipeline.__call__

    def spy(self, **kwargs):
        seen.update(kwargs)
        return original(self, **kwargs)

    StableDiffusionXLInpaintPipeline.__call__ = spy
    try:
        sdxl_pipe(prompt=TOTAL, image=image, mask_image=mask, center_prompt="a cat", surrounding_prompt="the sea",
                  num_inference_steps=1, output_type="np")
    finally:
        StableDiffusionXLInpaintPipeline.__call__ = original
    _, _, pooled, _ = sdxl_pipe.encode_prompt(prompt=TOTAL, device="cpu", num_images_per_prompt=1)
    torch.testing.assert_close(seen["pooled_prompt_embeds"], pooled)
    assert "add_time_ids" not in seen  # computed by diffusers from the sizes, once, for every token


def test_batch_of_region_embeddings_must_match(sdxl_pipe):
    controller = CTSController(sdxl_pipe.unet, region_strength=0.5)
    state = CTSState(center=torch.zeros(1, 77, 64), surrounding=torch.zeros(1, 77, 64), mask=torch.ones(1, 1, 32, 32))
    image, mask = _inputs()
    with controller.active(state), pytest.raises(ValueError, match="region embeddings have batch 1"):
        StableDiffusionXLInpaintPipeline.__call__(sdxl_pipe, prompt=TOTAL, image=image, mask_image=mask,
                                                  num_inference_steps=1, strength=1.0, output_type="np")


# ------------------------------------------------------------------ the CLI


def test_vip_outpaint_runs_sdxl_end_to_end_and_keeps_known_pixels(vip_main, sdxl_dir, tmp_path):
    source = tmp_path / "photo.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(source)
    out = tmp_path / "out.png"
    result = vip_main("outpaint", source, "--model", sdxl_dir, "--ratio", "1.5x", "--steps", "2", "--feather", "0",
                      "--center", "a red barn", "--surrounding", "snowy mountains", "--seed", "1", "-o", out)
    assert result.returncode == 0, result.stderr[-3000:]
    written, original = pixels(out), pixels(source)
    assert written.shape == (72, 96, 3)
    np.testing.assert_array_equal(written[12:60, 16:80], original)  # the known center, exactly
    meta = read_metadata(out)["vip"]
    meta = json.loads(meta) if isinstance(meta, str) else meta
    assert meta["family"] == "sdxl" and meta["cts"]["enabled"] and meta["model"] == str(sdxl_dir)


def test_vip_train_adapter_on_sdxl_then_outpaint_with_it(vip_main, sdxl_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for index in range(2):
        Image.new("RGB", (64, 64), (40 * index, 90, 160)).save(data / f"img{index}.png")
    run = tmp_path / "run"
    args = ["train", data, "--model", sdxl_dir, "--max-steps", "2", "--resolution", "64", "--batch-size", "1",
            "--rank", "4", "--validate-every", "0"]
    lora = vip_main(*args, "--out", tmp_path / "lora-run", "--mode", "lora")
    assert lora.returncode != 0 and "SDXL trains in adapter mode only" in lora.stderr and "Traceback" not in lora.stderr
    result = vip_main(*args, "--out", run)
    assert result.returncode == 0, result.stderr[-3000:]
    adapters = list(run.rglob("cts_adapter.safetensors"))
    assert adapters
    out = tmp_path / "out.png"
    used = vip_main("outpaint", data / "img0.png", "--model", sdxl_dir, "--adapter", adapters[0], "--ratio", "1.5x",
                    "--steps", "2", "--center", "a barn", "--surrounding", "snow", "-o", out)
    assert used.returncode == 0, used.stderr[-3000:]
    meta = read_metadata(out)["vip"]
    meta = json.loads(meta) if isinstance(meta, str) else meta
    assert meta["family"] == "sdxl" and meta["cts"]["mode"] == "trainable"


def test_fast_without_an_sdxl_lora_says_so(vip_main, sdxl_dir, astronaut_png, tmp_path):
    result = vip_main("outpaint", astronaut_png, "--model", sdxl_dir, "--ratio", "1.5x", "--fast", "-o", tmp_path / "f.png")
    assert result.returncode != 0
    assert "SDXL has no fast preset yet" in result.stderr and "Traceback" not in result.stderr
