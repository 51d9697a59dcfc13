"""vip edit: a tiny InstructPix2Pix pipeline (8-channel UNet) built in code, saved, loaded with --model DIR.

Behaviour, not "it ran": pixels outside --mask byte-identical, unchanged pixels the original's at full
resolution, metadata that round-trips, a batch that skips a bad file, one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import pixels
from PIL import Image
from tiny_models import save_tiny_ip2p_model
from tiny_vlm import ChatCompletionsStub, shared_tiny_vlm

from vipcli_model.editing.editor import change_mask, compose_edit, working_size
from vipcli_model.images.io import read_metadata

FAST = ("--steps", "2", "--seed", "7")


@pytest.fixture(scope="module")
def ip2p_dir(tmp_path_factory) -> Path:
    return save_tiny_ip2p_model(tmp_path_factory.mktemp("tiny-ip2p"))


@pytest.fixture()
def photo(tmp_path) -> Path:
    """A 640x480 photo with detail at every pixel (noise over a gradient)."""
    rng = np.random.default_rng(0)
    base = np.linspace(0, 200, 640)[None, :, None] + rng.integers(0, 55, (480, 640, 3))
    path = tmp_path / "lake.png"
    Image.fromarray(base.astype(np.uint8)).save(path)
    return path


def test_edit_writes_the_result_with_the_instruction_in_its_metadata(vip_main, ip2p_dir, photo):
    result = vip_main("edit", photo, "add a red boat", "--model", ip2p_dir, *FAST)
    assert result.returncode == 0, result.stderr
    out = photo.with_name("lake_edit.png")
    assert Image.open(out).size == (640, 480)
    meta = read_metadata(out)
    assert meta["vip"]["instruction"] == meta["vip"]["edit_prompt"] == "add a red boat"
    assert meta["vip"]["seed"] == 7 and meta["vip"]["working_size"] == [64, 48] and meta["vip"]["steps"] == 2
    assert meta["parameters"].startswith("add a red boat\n") and "Image CFG scale: 1.5" in meta["parameters"]
    # the model's own scheduler, named as `--scheduler` takes it and as A1111 readers show it (as outpaint does)
    assert meta["vip"]["scheduler"] == "ddim" and "Sampler: DDIM, Schedule type: Automatic," in meta["parameters"]
    again = vip_main("edit", photo, "add a red boat", "--model", ip2p_dir, *FAST)  # never overwrites silently
    assert again.returncode != 0 and "exists" in again.stderr and "--overwrite" in again.stderr
    assert vip_main("edit", photo, "add a red boat", "--model", ip2p_dir, *FAST, "--overwrite").returncode == 0


@pytest.mark.parametrize("feather", ["0", "8"])
def test_outside_the_mask_every_pixel_is_the_original(vip_main, ip2p_dir, photo, tmp_path, feather):
    mask = np.zeros((480, 640), np.uint8)
    mask[100:300, 200:500] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    result = vip_main(
        "edit",
        photo,
        "add a boat",
        "--model",
        ip2p_dir,
        *FAST,
        "--mask",
        tmp_path / "mask.png",
        "--threshold",
        "0",
        "--feather",
        feather,
        "-o",
        out,
    )
    assert result.returncode == 0, result.stderr
    before, after = pixels(photo), pixels(out)
    outside = mask < 128
    assert np.array_equal(after[outside], before[outside])
    assert not np.array_equal(after[~outside], before[~outside])  # threshold 0: the model's result inside


def test_unchanged_pixels_keep_the_full_resolution_original(vip_main, ip2p_dir, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)).save(big)
    result = vip_main("edit", big, "make it winter", "--model", ip2p_dir, *FAST, "--threshold", "255", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[0])
    assert record["changed_fraction"] == [0.0] and record["image_size"] == [1600, 1200]
    assert np.array_equal(pixels(Path(record["path"])), pixels(big))  # nothing changed: byte-identical


def test_each_result_of_n_is_remade_alone_by_its_recorded_seed(vip_main, ip2p_dir, photo, tmp_path):
    common = ("edit", photo, "make it red", "--model", ip2p_dir, "--steps", "2", "--threshold", "0")  # whole result
    batch = vip_main(*common, "--seed", "7", "-n", "2", "-o", tmp_path / "batch")
    assert batch.returncode == 0, batch.stderr
    files = [tmp_path / "batch" / f"lake_edit_{k}.png" for k in (1, 2)]
    assert not np.array_equal(pixels(files[0]), pixels(files[1]))
    for index, path in enumerate(files):
        meta = read_metadata(path)
        seed = meta["vip"]["seed"]
        assert seed == 7 + index and f"Seed: {seed}," in meta["parameters"]
        alone = vip_main(*common, "--seed", seed, "-n", "1", "-o", tmp_path / f"alone{index}.png")
        assert alone.returncode == 0, alone.stderr
        assert np.array_equal(pixels(tmp_path / f"alone{index}.png"), pixels(path))


def test_change_mask_takes_only_what_the_model_changed():
    rng = np.random.default_rng(2)
    original = Image.fromarray(rng.integers(0, 256, (400, 400, 3), dtype=np.uint8))
    reference = original.resize((100, 100), Image.Resampling.LANCZOS)  # the model's view, after the VAE
    edited = np.asarray(reference).copy()
    edited[40:60, 40:60] = (255, 0, 0)
    edited = Image.fromarray(edited)
    changed = change_mask(edited, reference, threshold=24)
    assert np.asarray(changed)[45:55, 45:55].min() == 255 and np.asarray(changed)[:30].max() == 0
    final = np.asarray(compose_edit(original, edited, changed, feather=4))
    assert np.array_equal(final[:140], np.asarray(original)[:140])  # far from the edit: the original's pixels
    assert (final[180:220, 180:220, 0] > 200).all()  # the edit, upscaled
    assert working_size((4000, 3000), 512) == (512, 384) and working_size((300, 200), 512) == (304, 200)


def test_batch_skips_a_bad_file_and_edits_the_rest(vip_main, ip2p_dir, photo, tmp_path):
    folder = photo.parent
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    result = vip_main("edit", folder, "add a boat", "--model", ip2p_dir, *FAST, "-o", tmp_path / "out")
    assert result.returncode == 3  # the batch rule: the code its failures share (an unreadable input)
    assert (tmp_path / "out" / "lake_edit.png").is_file() and not (tmp_path / "out" / "broken_edit.png").exists()
    assert "broken.jpg" in result.stderr and "1 written, 1 of 2 input(s) failed" in result.stderr


def test_one_line_errors(vip_main, ip2p_dir, tiny_model_dir, photo):
    empty = vip_main("edit", photo, "  ", "--model", ip2p_dir)
    assert empty.returncode == 2 and "the instruction is empty" in empty.stderr
    inpaint = vip_main("edit", photo, "add a boat", "--model", tiny_model_dir, *FAST)
    assert inpaint.returncode == 4
    assert "is not an InstructPix2Pix model: it is an inpainting model (9-channel UNet" in inpaint.stderr
    assert len(inpaint.stderr.strip().splitlines()) == 1
    bad = vip_main("edit", photo, "add a boat", "--model", ip2p_dir, "--image-guidance", "-1")
    assert bad.returncode == 2 and "--image-guidance" in bad.stderr
    lonely = vip_main("edit", photo, "add a boat", "--model", ip2p_dir, "--captioner", "smolvlm-256m")
    assert lonely.returncode == 2 and "--expand" in lonely.stderr
    last = vip_main("edit", photo, "add a boat", "--model", ip2p_dir, "--seed", str(2**63 - 2), "-n", "3")
    assert last.returncode == 2 and len(last.stderr.strip().splitlines()) == 1
    assert f"--seed {2**63 - 2} is out of range for 3 images (image k uses seed + k): use 0 to 2^63-3" in last.stderr


@pytest.fixture()
def stub():
    server = ChatCompletionsStub(answer="Add a small red wooden rowing boat floating in the middle of the lake.")
    yield server
    server.close()


def _expand_with_stub(photo: Path, ip2p_dir: Path, stub) -> list:
    """`vip edit PHOTO "add a boat"`, the instruction expanded by the stub server's model `smol`."""
    return [
        "edit",
        photo,
        "add a boat",
        "--model",
        ip2p_dir,
        *FAST,
        "--expand",
        "--captioner-url",
        stub.url,
        "--captioner-model",
        "smol",
    ]


def test_expand_records_both_instructions(vip_main, ip2p_dir, photo, stub):
    result = vip_main(*_expand_with_stub(photo, ip2p_dir, stub), "--json")
    assert result.returncode == 0, result.stderr
    meta = read_metadata(photo.with_name("lake_edit.png"))
    expanded = "Add a small red wooden rowing boat floating in the middle of the lake."
    assert meta["vip"]["instruction"] == "add a boat" and meta["vip"]["edit_prompt"] == expanded
    assert meta["vip"]["instruction_source"]["source"] == "captioner"
    assert meta["parameters"].startswith(expanded) and "Instruction: add a boat" in meta["parameters"]
    asked = [part["text"] for part in stub.requests[0]["messages"][0]["content"] if part.get("type") == "text"]
    assert "Instruction: add a boat" in asked[0]  # the user's words reach the captioner, with the image


@pytest.mark.parametrize(
    ("behaviour", "answer", "message"),
    [
        ("error", "", "answered HTTP 500"),
        ("ok", "I'm sorry, I can't help with that.", "did not rewrite the instruction"),
    ],
)
def test_expand_failures_fail_the_image_in_one_line(vip_main, ip2p_dir, photo, stub, behaviour, answer, message):
    stub.behaviour, stub.answer = behaviour, answer
    result = vip_main(*_expand_with_stub(photo, ip2p_dir, stub))
    assert result.returncode == 6 and message in result.stderr  # 6: the captioner failed (one line)
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    assert not photo.with_name("lake_edit.png").exists()


def test_expand_with_the_tiny_local_vlm(vip_main, ip2p_dir, photo, tmp_path_factory):
    vlm = shared_tiny_vlm(tmp_path_factory)
    result = vip_main("edit", photo, "add a boat", "--model", ip2p_dir, *FAST, "--expand", "--captioner", vlm)
    assert result.returncode == 0, result.stderr
    meta = read_metadata(photo.with_name("lake_edit.png"))["vip"]
    assert (
        meta["instruction"] == "add a boat"
        and meta["edit_prompt"]
        and meta["instruction_source"]["source"] == "captioner"
    )


# ------------------------------------------------------------------ through the hub code (a local stand-in hub)


def _save_tiny_pbi_repo(folder: Path) -> Path:
    """The tiny InstructPix2Pix pipeline saved as Paint by Inpaint's repositories are (plain names, old tokenizer
    files)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from tiny_models import build_tiny_inpaint_components, write_clip_tokenizer
    from transformers import CLIPImageProcessor

    components = build_tiny_inpaint_components(seed=0, in_channels=8)
    components["feature_extractor"] = CLIPImageProcessor(crop_size=224, size=224)
    StableDiffusionInstructPix2PixPipeline(**components, requires_safety_checker=False).save_pretrained(folder)
    for old in (folder / "tokenizer").iterdir():
        old.unlink()
    write_clip_tokenizer(folder / "tokenizer")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    (folder / "tokenizer" / "special_tokens_map.json").write_text(json.dumps(special))
    return folder


def test_preset_downloads_the_table_files_then_edits_offline(photo, tmp_path):
    from conftest import run_vip
    from fake_hub import FakeHub, repo_from_listing

    from vipcli_model.models.catalog import MODEL_FILES

    repo_id = "paint-by-inpaint/general-finetuned-mb"
    hub = FakeHub()
    try:
        hub.add(repo_from_listing(repo_id, _save_tiny_pbi_repo(tmp_path / "pbi")))
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "", "VIP_HUB_TIMEOUT": "3"}
        first = run_vip(
            "edit", str(photo), "add a boat", *FAST, "-o", str(tmp_path / "a.png"), env=env
        )  # the default model
        assert first.returncode == 0, first.stderr[-3000:]
        assert hub.fetched(repo_id) == set(MODEL_FILES[repo_id].files)
        offline = run_vip(
            "edit",
            str(photo),
            "add a boat",
            "-m",
            "pbi-general-mb",
            *FAST,
            "-o",
            str(tmp_path / "b.png"),
            env={"HF_HUB_OFFLINE": "1"},
        )
        assert offline.returncode == 0, offline.stderr[-3000:]
        assert np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"))  # same seed, same result
    finally:
        hub.close()
