"""The pairing preset `sdxl-union`: the widely forked outpainting demo's pair (RealVisXL V5.0 Lightning with the
ControlNet Union ProMax, 8 TCD steps) through the stand-in hub, which serves the checkpoint's real file tree
(``tests/hub_listings/SG161222--RealVisXL_V5.0_Lightning.json``) with a tiny SDXL in the files vip loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import pixels
from fake_hub import FakeHub, online_through, repo_from_listing
from hub_content import write_old_style_tokenizers
from PIL import Image
from safetensors.torch import load_file, save
from tiny_models import save_tiny_controlnet_union, save_tiny_sdxl_base_model

from vipcli_model.images.io import read_metadata
from vipcli_model.models.catalog import MODEL_FILES

CHECKPOINT = "SG161222/RealVisXL_V5.0_Lightning"
PROMAX = "OzzyGT/controlnet-union-promax-sdxl-1.0"


def _as_served(base: Path) -> dict[str, bytes]:
    """The tiny model's files under the repository's names: its UNet in two shards with their index, as there."""
    content = {path.relative_to(base).as_posix(): path.read_bytes() for path in base.rglob("*") if path.is_file()}
    weights = load_file(str(base / "unet" / "diffusion_pytorch_model.safetensors"))
    names = sorted(weights)
    index: dict = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in weights.values())}}
    index["weight_map"] = {}
    for number, chunk in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), start=1):
        shard = f"diffusion_pytorch_model-0000{number}-of-00002.safetensors"
        content[f"unet/{shard}"] = save({name: weights[name].contiguous() for name in chunk})
        index["weight_map"].update(dict.fromkeys(chunk, shard))
    content["unet/diffusion_pytorch_model.safetensors.index.json"] = json.dumps(index).encode()
    return content


def test_the_pair_downloads_once_and_runs_with_the_checkpoints_defaults(vip_main, tmp_path, monkeypatch):
    from ldm_convert import save_sdxl_checkpoint

    base = write_old_style_tokenizers(save_tiny_sdxl_base_model(tmp_path / "base", width_2=48))
    union = save_tiny_controlnet_union(tmp_path / "union", width_2=48)
    single = save_sdxl_checkpoint(base, tmp_path / "my-sdxl.safetensors")
    server = FakeHub()
    server.add(repo_from_listing(CHECKPOINT, _as_served(base)))
    union_files = {
        "config.json": (union / "config.json").read_bytes(),
        "diffusion_pytorch_model.fp16.safetensors": (union / "diffusion_pytorch_model.safetensors").read_bytes(),
    }
    server.add(repo_from_listing(PROMAX, union_files))
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(photo)
    run = ["outpaint", photo, "--ratio", "1.5x", "--seed", "0", "--feather", "0", "--prompt", "a photo"]
    run += ["--center", "a red barn", "--surrounding", "snow"]
    with online_through(server, monkeypatch):
        # a single-file SDXL with the ProMax: the pair's configs are its architecture's (a few kB, no weights)
        from_file = vip_main(*run, "--model", single, "--controlnet", "union", "--steps", "2", "-o", tmp_path / "f.png")
        configs = server.fetched(CHECKPOINT, ("GET", "HEAD"))  # tokenizer_2 equals tokenizer here: not re-sent
        downloaded = vip_main("models", "download", "sdxl-union")
    assert from_file.returncode == 0, from_file.stderr[-3000:]
    assert configs == {name for name in MODEL_FILES[CHECKPOINT].files if not name.endswith(".safetensors")}
    assert downloaded.returncode == 0, downloaded.stderr[-3000:]
    # the diffusers parts in fp32, not the 6.9 + 13.9 GB single files beside them; and the ProMax
    assert server.fetched(CHECKPOINT, ("GET", "HEAD")) == set(MODEL_FILES[CHECKPOINT].files)
    assert server.fetched(PROMAX) == set(union_files)

    # offline: the pair runs from the cache with the checkpoint's defaults, as the same run given by hand
    pair = vip_main(*run, "--model", "sdxl-union", "-o", tmp_path / "pair.png")
    assert pair.returncode == 0, pair.stderr[-3000:]
    meta = read_metadata(tmp_path / "pair.png")["vip"]
    assert (meta["model"], meta["controlnet"], meta["family"]) == (CHECKPOINT, PROMAX, "sdxl-union")
    assert (meta["steps"], meta["scheduler"], meta["guidance"]) == (8, "tcd", 1.5)
    by_hand = ["--model", base, "--controlnet", union, "--steps", "8", "--scheduler", "tcd", "--guidance", "1.5"]
    assert vip_main(*run, *by_hand, "-o", tmp_path / "hand.png").returncode == 0
    np.testing.assert_array_equal(pixels(tmp_path / "pair.png"), pixels(tmp_path / "hand.png"))
    # what the user sets wins over the pair's defaults
    two = vip_main(*run, "--model", "sdxl-union", "--steps", "2", "--scheduler", "dpm++", "-o", tmp_path / "two.png")
    assert two.returncode == 0, two.stderr[-3000:]
    assert (
        read_metadata(tmp_path / "two.png")["vip"]["steps"],
        read_metadata(tmp_path / "two.png")["vip"]["scheduler"],
    ) == (2, "dpm++")
    # the single file ran as its diffusers folder does
    folder = vip_main(*run, "--model", base, "--controlnet", union, "--steps", "2", "-o", tmp_path / "d.png")
    assert folder.returncode == 0
    np.testing.assert_array_equal(pixels(tmp_path / "f.png"), pixels(tmp_path / "d.png"))
