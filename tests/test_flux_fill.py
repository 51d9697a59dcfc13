"""The FLUX Fill family: a tiny FluxFill model built in code, loaded through the user's path.

C-T-S on joint attention is an additive mask over [Total | Center | Surrounding | image] tokens, given to every
double- and single-stream block; region strength 0 equals diffusers' plain FluxFillPipeline with the Total
prompt; the pooled CLIP input is the Total's; `vip outpaint --model DIR` runs end to end with the family's
defaults; `vip train` says in one line that FLUX is not trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxFillPipeline
from PIL import Image
from tiny_models import save_tiny_flux_fill_model

from conftest import pixels
from vipcli_model.config import ModelConfig
from vipcli_model.errors import ModelNotFoundError, OptionError
from vipcli_model.families import family_of_folder, family_of_pipeline
from vipcli_model.families.flux_pipeline import VipOutpaintFluxFillPipeline, joint_attention_bias
from vipcli_model.image_io import read_metadata
from vipcli_model.loading import check_inpainting, load_pipeline

TOTAL = "Center: a red barn; Surrounding: a green field"
TEXT = 16  # max_sequence_length in the library-level tests (the CLI runs with FLUX's 512)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> Path:
    return save_tiny_flux_fill_model(tmp_path_factory.mktemp("tiny-flux-fill"))


@pytest.fixture(scope="module")
def flux_pipe(flux_dir) -> VipOutpaintFluxFillPipeline:
    return load_pipeline(ModelConfig(model=str(flux_dir), device="cpu", dtype="fp32"))


def _inputs(size: int = 32) -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, : size // 4] = 255
    mask[:, -size // 4 :] = 255  # left and right quarters: generate
    return image, Image.fromarray(mask)


def _run(pipe, **kwargs) -> np.ndarray:
    image, mask = _inputs()
    output = pipe(prompt=TOTAL, image=image, mask_image=mask, height=32, width=32, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0), output_type="np", max_sequence_length=TEXT, **kwargs)
    return np.asarray(output.images[0])


def test_family_from_the_configs_and_plain_flux_is_refused(flux_dir, flux_pipe):
    assert family_of_folder(flux_dir).name == "flux-fill"
    assert isinstance(flux_pipe, VipOutpaintFluxFillPipeline) and family_of_pipeline(flux_pipe).name == "flux-fill"
    assert flux_pipe.size_multiple == 2  # VAE factor 1, latents packed 2x2 (the real model: 16)
    text_to_image = type("Pipe", (), {"transformer": type("T", (), {"config": type("C", (), {"in_channels": 64, "out_channels": None})})})
    with pytest.raises(ModelNotFoundError, match="not a FLUX Fill model"):
        check_inpainting(text_to_image, "black-forest-labs/FLUX.1-dev")


def test_joint_mask_routes_center_and_surrounding_text_by_region():
    regions = torch.tensor([0.0, 1.0, 0.5])  # known, to generate, on the seam
    bias = joint_attention_bias(regions, text_length=2, strength=0.6, dtype=torch.float32, device=torch.device("cpu"))[0, 0]
    total, center, surrounding, image = slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 9)
    known, generate, seam = 6, 7, 8
    assert torch.all(bias[image, image] == 0)  # image-image attention whole
    assert torch.allclose(bias[known, total], torch.tensor(0.4).log()) and torch.isinf(bias[known, surrounding]).all()
    assert torch.allclose(bias[known, center], torch.tensor(0.6).log())
    assert torch.allclose(bias[generate, surrounding], torch.tensor(0.6).log()) and torch.isinf(bias[generate, center]).all()
    assert torch.allclose(bias[seam, center], torch.tensor(0.3).log()) and torch.allclose(bias[seam, surrounding], torch.tensor(0.3).log())
    for block in (total, center, surrounding):  # each text stream sees itself and the image, not the other texts
        assert torch.all(bias[block, block] == 0) and torch.all(bias[block, image] == 0)
    assert torch.isinf(bias[total, center]).all() and torch.isinf(bias[center, surrounding]).all()
    plain = joint_attention_bias(regions, 2, 0.0, torch.float32, torch.device("cpu"))[0, 0]
    assert torch.isinf(plain[image, 2:6]).all() and torch.all(plain[image, total] == 0)


def test_every_block_gets_the_mask_over_the_three_texts(flux_pipe):
    seen = []
    processors = flux_pipe.transformer.attn_processors

    class Spy:
        def __init__(self, base):
            self.base = base

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
            seen.append((attention_mask, encoder_hidden_states is not None))
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    flux_pipe.transformer.set_attn_processor({name: Spy(base) for name, base in processors.items()})
    try:
        _run(flux_pipe, center_prompt="a red barn", surrounding_prompt="snowy mountains", region_strength=1.0)
    finally:
        flux_pipe.transformer.set_attn_processor(processors)
    assert {double for _, double in seen} == {True, False}  # double- and single-stream blocks
    assert all(mask is not None for mask, _ in seen)
    image_tokens = (32 // 2) ** 2
    assert seen[0][0].shape[-1] == 3 * TEXT + image_tokens


def test_region_strength_0_equals_the_plain_flux_fill_pipeline(flux_pipe):
    plain = FluxFillPipeline(**flux_pipe.components)
    plain.set_progress_bar_config(disable=True)
    expected = _run(plain)
    np.testing.assert_array_equal(_run(flux_pipe, center_prompt="a cat", surrounding_prompt="the sea", region_strength=0.0), expected)
    np.testing.assert_array_equal(_run(flux_pipe), expected)
    # the mask path itself is continuous at 0: a vanishing strength through the mask gives the plain result
    near_zero = _run(flux_pipe, center_prompt="a cat", surrounding_prompt="the sea", region_strength=1e-7)
    np.testing.assert_allclose(near_zero, expected, atol=1e-5)


def test_region_prompts_change_the_result_and_pooled_is_the_totals(flux_pipe, monkeypatch):
    total_only = _run(flux_pipe)
    regions = _run(flux_pipe, center_prompt="a red barn", surrounding_prompt="snowy mountains", region_strength=1.0)
    assert np.abs(regions - total_only).max() > 1e-5
    seen = {}
    original = FluxFillPipeline.__call__

    def spy(self, **kwargs):
        seen.update(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(FluxFillPipeline, "__call__", spy)
    _run(flux_pipe, center_prompt="a cat", surrounding_prompt="the sea", region_strength=1.0)
    _, pooled, _ = flux_pipe.encode_prompt(prompt=TOTAL, prompt_2=None, max_sequence_length=TEXT)
    torch.testing.assert_close(seen["pooled_prompt_embeds"], pooled)
    assert seen["prompt_embeds"].shape[1] == 3 * TEXT


def test_adapters_negative_prompts_and_schedulers_are_refused_clearly(flux_pipe):
    with pytest.raises(OptionError, match="trained for UNet models"):
        flux_pipe.region_controller(adapter=object())
    with pytest.raises(ValueError, match="negative_prompt"):
        _run(flux_pipe, negative_prompt="blurry")
    with pytest.raises(OptionError, match="use flow-match"):
        flux_pipe.set_scheduler("dpm++")


def test_vip_outpaint_runs_flux_fill_end_to_end(vip_main, flux_dir, tmp_path):
    source = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(source)
    out = tmp_path / "out.png"
    result = vip_main("outpaint", source, "--model", flux_dir, "--ratio", "1.5x", "--steps", "2", "--feather", "0",
                      "--center", "a red barn", "--surrounding", "snowy mountains", "--seed", "1", "-o", out)
    assert result.returncode == 0, result.stderr[-3000:]
    written = pixels(out)
    assert written.shape == (72, 96, 3)
    np.testing.assert_array_equal(written[12:60, 16:80], pixels(source))
    meta = read_metadata(out)["vip"]
    meta = json.loads(meta) if isinstance(meta, str) else meta
    assert meta["family"] == "flux-fill" and meta["cts"]["mode"] == "joint-mask"
    assert meta["guidance"] == 30.0 and meta["scheduler"] == "flow-match"  # the family's defaults where none given


def test_vip_train_on_flux_says_not_supported_in_one_line(vip_main, flux_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for index in range(2):
        Image.new("RGB", (64, 64), (40 * index, 90, 160)).save(data / f"img{index}.png")
    result = vip_main("train", data, "--out", tmp_path / "run", "--model", flux_dir, "--max-steps", "2",
                      "--resolution", "64", "--batch-size", "1", "--validate-every", "0")
    assert result.returncode != 0
    assert "FLUX Fill training is not supported yet" in result.stderr and "Traceback" not in result.stderr
