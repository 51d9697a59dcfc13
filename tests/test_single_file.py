"""`--model CHECKPOINT.safetensors`: a single file in the original Stable Diffusion (LDM) layout.

The tiny diffusers folder is written once more as one ``.safetensors`` file with the keys users
download (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``;
``ldm_convert``), then loaded through the real single-file branch of ``load_pipeline``
(``from_single_file`` with ``--model-config`` as the diffusers config). It must give back the same
weights, tensor by tensor, and the same images as the folder. Offline, a single file whose config is
not cached, and a corrupt file, must each end with one line and exit code 4.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import pixels
from ldm_convert import save_ldm_checkpoint

from vipcli_model.models.hub import DEFAULT_INPAINT_MODEL


@pytest.fixture(scope="module")
def ldm_checkpoint(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model as one original-layout single file."""
    return save_ldm_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("single-file") / "tiny-inpaint.safetensors")


def _stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def _outpaint_args(image: Path, output: Path) -> list[str]:
    return [
        "outpaint",
        str(image),
        "--ratio",
        "1.25x",
        "--seed",
        "1",
        "--steps",
        "2",
        "--feather",
        "0",
        "-o",
        str(output),
    ]


def test_checkpoint_is_in_original_layout(ldm_checkpoint):
    from safetensors import safe_open

    with safe_open(str(ldm_checkpoint), framework="pt") as checkpoint:
        keys = set(checkpoint.keys())
        assert {key.split(".")[0] for key in keys} == {"model", "first_stage_model", "cond_stage_model"}
        assert checkpoint.get_slice("model.diffusion_model.input_blocks.0.0.weight").get_shape()[1] == 9
        # the VAE mid attention is stored as 1x1 convolutions, as in the CompVis code
        assert len(checkpoint.get_slice("first_stage_model.encoder.mid.attn_1.q.weight").get_shape()) == 4
    assert "first_stage_model.encoder.down.0.block.0.conv1.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys


def test_single_file_round_trip_equals_folder(ldm_checkpoint, tiny_model_dir):
    from vipcli_model.config import ModelConfig
    from vipcli_model.models.loading import load_pipeline

    single = load_pipeline(ModelConfig(model=str(ldm_checkpoint), model_config=str(tiny_model_dir), device="cpu"))
    folder = load_pipeline(ModelConfig(model=str(tiny_model_dir), device="cpu"))

    for name in ("unet", "vae", "text_encoder"):
        expected, loaded = folder.components[name].state_dict(), single.components[name].state_dict()
        assert sorted(loaded) == sorted(expected), name
        different = [key for key in expected if not torch.equal(loaded[key], expected[key])]
        assert not different, f"{name}: {different[:5]}"
    for name in ("unet", "vae"):
        drop = {"_name_or_path"}
        assert {k: v for k, v in single.components[name].config.items() if k not in drop} == {
            k: v for k, v in folder.components[name].config.items() if k not in drop
        }, name
    assert single.scheduler.config == folder.scheduler.config
    assert single.tokenizer("a red barn").input_ids == folder.tokenizer("a red barn").input_ids


def test_cli_single_file_matches_folder(vip_main, ldm_checkpoint, tiny_model_dir, astronaut_png, tmp_path):
    from_file = vip_main(
        *_outpaint_args(astronaut_png, tmp_path / "file.png"),
        "--model",
        ldm_checkpoint,
        "--model-config",
        tiny_model_dir,
    )
    assert from_file.returncode == 0, from_file.stderr
    from_folder = vip_main(*_outpaint_args(astronaut_png, tmp_path / "folder.png"), "--model", tiny_model_dir)
    assert from_folder.returncode == 0, from_folder.stderr

    file_pixels, folder_pixels = pixels(tmp_path / "file.png"), pixels(tmp_path / "folder.png")
    assert file_pixels.shape == (640, 640, 3)
    assert (file_pixels == folder_pixels).all()


@pytest.fixture()
def no_config_run(vip_main, ldm_checkpoint, astronaut_png, tmp_path):
    """A single file with no --model-config, offline: the default config is not cached."""
    return vip_main(*_outpaint_args(astronaut_png, tmp_path / "out.png"), "--model", ldm_checkpoint)


def test_single_file_without_config_offline_is_one_line(no_config_run, tmp_path):
    assert no_config_run.returncode == 4, no_config_run.stderr
    lines = _stderr_lines(no_config_run)
    assert len(lines) == 1, no_config_run.stderr
    assert "Traceback" not in no_config_run.stderr
    assert not (tmp_path / "out.png").exists()


def test_single_file_without_config_offline_names_config_and_fix(no_config_run):
    message = _stderr_lines(no_config_run)[0]
    assert DEFAULT_INPAINT_MODEL in message
    assert "--model-config" in message


def test_corrupt_single_file_is_one_line(vip_main, tiny_model_dir, astronaut_png, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(os.urandom(4096))
    result = vip_main(
        *_outpaint_args(astronaut_png, tmp_path / "out.png"), "--model", corrupt, "--model-config", tiny_model_dir
    )
    assert result.returncode == 4, result.stderr
    lines = _stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert str(corrupt) in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.png").exists()


def test_pruned_or_non_safetensors_checkpoints_are_refused_clearly(tmp_path, vip_main, astronaut_png):
    import torch
    from safetensors.torch import save_file

    pruned = tmp_path / "unet-only.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(pruned))
    result = vip_main("outpaint", astronaut_png, "--ratio", "2x", "--model", pruned, "-o", tmp_path / "o.png")
    assert result.returncode == 4 and "no VAE and no text encoder" in result.stderr
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04")
    result = vip_main("outpaint", astronaut_png, "--ratio", "2x", "--model", pickle, "-o", tmp_path / "o.png")
    assert result.returncode == 4 and "safetensors" in result.stderr and "Traceback" not in result.stderr
