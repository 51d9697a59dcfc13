"""Speed levers: the guidance interval, the tiny autoencoder, the 4-step --fast preset."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import pixels, run_vip_on_two_processes
from tiny_models import save_tiny_autoencoder_tiny

from vipcli_model.images.io import read_metadata

REGIONS = ["--center", "a red barn", "--surrounding", "snowy field", "--prompt", "a barn in the snow"]


def _common(model: Path, photo: Path) -> list:
    return ["outpaint", photo, "--ratio", "1.5x", "--model", model, "--seed", "3", "--feather", "0", "--steps", "4"]


@pytest.fixture(scope="module")
def small_photo(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "small.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_taesd(tmp_path_factory) -> Path:
    return save_tiny_autoencoder_tiny(tmp_path_factory.mktemp("taesd") / "taesd")


def test_guidance_interval_nowhere_is_guidance_off(tiny_model_dir, small_photo, tmp_path, vip_main):
    """Outside the interval a step is the conditional prediction alone: an interval no step falls in gives exactly
    the image of guidance 1 (C-T-S active). The SD family's default interval is recorded; 'full' guides every step."""
    common = [*_common(tiny_model_dir, small_photo), *REGIONS]
    runs = {
        "nowhere": ["--guidance-interval", "100,200"],
        "off": ["--guidance", "1"],
        "full": ["--guidance-interval", "full"],
        "default": [],
    }
    for name, extra in runs.items():
        result = vip_main(*common, *extra, "-o", tmp_path / f"{name}.png")
        assert result.returncode == 0, result.stderr
    assert np.array_equal(pixels(tmp_path / "nowhere.png"), pixels(tmp_path / "off.png"))
    assert not np.array_equal(pixels(tmp_path / "default.png"), pixels(tmp_path / "full.png"))
    meta = read_metadata(tmp_path / "default.png")
    # 4 DPM++ steps of SD's schedule (timesteps 801, 601, 401, 201): sigma 5.13, 2.29, 1.17, 0.57
    assert meta["vip"]["guidance_interval"] == [1.0, 5.42]
    assert meta["vip"]["guided_steps"] == {"guided": 3, "unguided": 1}
    assert 'Guidance interval: "1.0,5.42"' in meta["parameters"]
    full = read_metadata(tmp_path / "full.png")["vip"]
    assert full["guidance_interval"] is None and full["guided_steps"] is None


@pytest.mark.parametrize("value", ["5,1", "abc", "1,2,3", "-1,2"])
def test_guidance_interval_bad_values_are_one_line(value, small_photo, vip_main):
    result = vip_main("outpaint", small_photo, "--ratio", "2x", "--guidance-interval", value, "--model", "/nonexistent")
    assert result.returncode == 2, result.stderr
    assert "--guidance-interval" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_parse_guidance_interval():
    from vipcli_model.config import parse_guidance_interval

    assert parse_guidance_interval("0.28,5.42") == (0.28, 5.42)
    assert parse_guidance_interval("1,inf")[1] == math.inf
    assert parse_guidance_interval("full") == (0.0, math.inf)


def test_tiny_autoencoder_runs_through_the_same_pipeline(tiny_model_dir, tiny_taesd, small_photo, tmp_path, vip_main):
    common = [*_common(tiny_model_dir, small_photo), "--prompt", "a barn"]
    tiny = vip_main(*common, "--vae", tiny_taesd, "-o", tmp_path / "tiny.png")
    assert tiny.returncode == 0, tiny.stderr
    full = vip_main(*common, "-o", tmp_path / "full.png")
    assert full.returncode == 0, full.stderr
    meta = read_metadata(tmp_path / "tiny.png")
    assert meta["vip"]["vae"] == str(tiny_taesd) and f"VAE: {tiny_taesd}" in meta["parameters"]
    assert read_metadata(tmp_path / "full.png")["vip"]["vae"] == "full"
    tiny_pixels, full_pixels = pixels(tmp_path / "tiny.png"), pixels(tmp_path / "full.png")
    assert not np.array_equal(tiny_pixels, full_pixels)  # another decoder really ran
    box = meta["vip"]["image_box"]  # the known pixels are pasted back byte for byte either way
    original = pixels(small_photo)
    assert np.array_equal(tiny_pixels[box[1] : box[3], box[0] : box[2]], original)


def test_tiny_autoencoder_means_the_models_own_vae_is_never_read(
    tiny_model_dir, tiny_taesd, small_photo, tmp_path, vip_main
):
    """With --vae PATH the tiny autoencoder is handed to the loader: the model's VAE weights are never opened, so a
    model whose VAE file is unreadable still runs, and gives the image of the intact model with the same --vae."""
    import shutil

    broken = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    weights = list((broken / "vae").glob("*.safetensors"))
    assert weights
    for path in weights:
        path.write_bytes(b"not a safetensors file")
    common = [*_common(broken, small_photo), "--prompt", "a barn"]
    tiny = vip_main(*common, "--vae", tiny_taesd, "-o", tmp_path / "tiny.png")
    assert tiny.returncode == 0, tiny.stderr
    intact = vip_main(
        *_common(tiny_model_dir, small_photo), "--prompt", "a barn", "--vae", tiny_taesd, "-o", tmp_path / "intact.png"
    )
    assert intact.returncode == 0, intact.stderr
    assert np.array_equal(pixels(tmp_path / "tiny.png"), pixels(tmp_path / "intact.png"))
    full = vip_main(*common, "-o", tmp_path / "full.png")  # the full VAE is read, and refused
    assert full.returncode == 4, full.stderr


def test_tiny_autoencoder_of_another_latent_size_is_refused(tiny_model_dir, small_photo, tmp_path, vip_main):
    wrong = save_tiny_autoencoder_tiny(tmp_path / "taesd-8x", downsamplings=3)  # 1/8 latents; the tiny model's are 1/2
    result = vip_main(*_common(tiny_model_dir, small_photo), "--vae", wrong, "-o", tmp_path / "x.png")
    assert result.returncode == 4, result.stderr
    assert "1/8" in result.stderr and "--vae full" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_fast_uses_four_steps_and_the_tiny_autoencoder(tiny_model_dir, small_photo, tmp_path, vip_main):
    """--fast without TAESD in the cache, offline: one line naming it and both ways out; nothing written."""
    result = vip_main(
        *_common(tiny_model_dir, small_photo)[:-2], "--fast", "--fast-lora", tiny_model_dir, "-o", tmp_path / "x.png"
    )
    assert result.returncode == 4, result.stderr
    assert "madebyollin/taesd" in result.stderr and "--vae full" in result.stderr
    assert not (tmp_path / "x.png").exists()
    from vipcli_model.models.families.sd import FAMILY

    assert (FAMILY.fast.steps, FAMILY.fast.vae) == (4, "tiny")


def test_two_processes_split_the_inputs(tiny_model_dir, tmp_path):
    """`accelerate launch --num_processes 2 -m vipcli.main outpaint FOLDER`: each image written once, by one
    process; one summary; the exit status of the whole run on every process."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (48, 48), (60 * index, 90, 120)).save(folder / f"p{index}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "p1_outpaint.png").write_bytes(b"taken")  # exists, no --overwrite: process 1's input fails (5)
    outpaint = ["outpaint", folder, "--ratio", "1.5x", "--model", tiny_model_dir, "--steps", "1", "--seed", "0"]
    result = run_vip_on_two_processes(*outpaint, "--prompt", "x", "-o", out, port=29519)
    assert result.returncode != 0, result.stderr[-3000:]
    assert sorted(path.name for path in out.iterdir()) == ["p0_outpaint.png", "p1_outpaint.png", "p2_outpaint.png"]
    assert (out / "p1_outpaint.png").read_bytes() == b"taken"
    assert result.stderr.count("wrote ") == 2 and result.stderr.count("p1_outpaint.png exists") == 1
    # one summary, from the main process, counting process 1's failure
    assert result.stderr.count("2 written, 1 of 3 input(s) failed") == 1
    sources = {read_metadata(out / f"p{index}_outpaint.png")["vip"]["source"] for index in (0, 2)}
    assert sources == {str(folder / "p0.png"), str(folder / "p2.png")}


def test_deep_cache_reuses_the_deep_features_exactly(tiny_components):
    """A cached step runs only the shallow ends: given the input of the full step before it, it returns the same
    prediction (the deep features it reuses are that input's); given another input, another one, and the deep
    blocks did not run."""
    import torch

    from vipcli_model.speed.feature_cache import feature_cache

    unet = tiny_components["unet"].eval()
    sample, text = torch.randn(2, 9, 16, 16), torch.randn(2, 77, 32)
    calls = []
    handle = unet.mid_block.resnets[0].register_forward_pre_hook(lambda module, args: calls.append(1))
    with torch.no_grad():
        plain = unet(sample, 10, encoder_hidden_states=text).sample
        with feature_cache(unet, every=3) as counts:
            full = unet(sample, 10, encoder_hidden_states=text).sample
            cached_same = unet(sample, 10, encoder_hidden_states=text).sample
            cached_other = unet(sample + 0.5, 10, encoder_hidden_states=text).sample
        after = unet(sample + 0.5, 10, encoder_hidden_states=text).sample
    handle.remove()
    assert counts == {"full": 1, "cached": 2}
    assert torch.equal(full, plain) and torch.equal(cached_same, full)
    assert not torch.allclose(cached_other, full) and not torch.allclose(cached_other, after)
    assert "forward" not in unet.__dict__ and "forward" not in unet.mid_block.__dict__  # all restored
    assert len(calls) == 3  # plain, full, after: the cached steps never reach the mid block's layers


def test_deep_cache_option_is_recorded(tiny_model_dir, small_photo, tmp_path, vip_main):
    common = [*_common(tiny_model_dir, small_photo), "--prompt", "a barn", "--guidance-interval", "full"]
    cached = vip_main(*common, "--deep-cache", "2", "-o", tmp_path / "cached.png")
    assert cached.returncode == 0, cached.stderr
    meta = read_metadata(tmp_path / "cached.png")["vip"]
    assert meta["deep_cache"] == 2 and meta["cached_steps"] == {"full": 2, "cached": 2}
    plain = vip_main(*common, "-o", tmp_path / "plain.png")
    assert plain.returncode == 0 and read_metadata(tmp_path / "plain.png")["vip"]["deep_cache"] is None
    assert not np.array_equal(pixels(tmp_path / "cached.png"), pixels(tmp_path / "plain.png"))
