"""Real models, real hub: every model path vip advertises, against a local stand-in of the hub.

The stand-in (``fake_hub.py``, reached through ``HF_ENDPOINT`` on 127.0.0.1) serves the real repositories' file
trees (``tests/hub_listings/``) with tiny real weights in the files vip loads and junk everywhere else. The
commands run in subprocesses, as a user runs them: huggingface_hub, diffusers and transformers run unpatched.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import run_vip
from fake_hub import LISTINGS, FakeHub, ForwardProxy, Repo, SilentServer, free_port, listing_paths, repo_from_listing
from hub_content import (
    save_tiny_clip_repo,
    save_tiny_inpaint_repo,
    save_tiny_lora_repo,
    save_tiny_sdxl_repo,
    save_tiny_taesd_repo,
    save_tiny_vlm_repo,
)
from tiny_flux2 import save_tiny_flux2_klein_repo
from tiny_vlm import shared_tiny_vlm

from vipcli_model.images.io import read_metadata
from vipcli_model.models.catalog import MODEL_FILES, detect_kind, select_files

SD15 = "stable-diffusion-v1-5/stable-diffusion-inpainting"
SD2 = "sd2-community/stable-diffusion-2-inpainting"
LCM = "latent-consistency/lcm-lora-sdv1-5"
SMOL256 = "HuggingFaceTB/SmolVLM-256M-Instruct"
SMOL500 = "HuggingFaceTB/SmolVLM-500M-Instruct"
CLIP_L = "openai/clip-vit-large-patch14"
SDXL = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
FLUX = "black-forest-labs/FLUX.1-Fill-dev"
TAESD = "madebyollin/taesd"
KLEIN = "black-forest-labs/FLUX.2-klein-4B"


# ------------------------------------------------------------------ the table against the real listings


def _listing(repo_id: str) -> dict:
    return json.loads((LISTINGS / (repo_id.replace("/", "--") + ".json")).read_text())


@pytest.mark.parametrize("repo_id", sorted(MODEL_FILES))
def test_table_matches_the_real_repository(repo_id):
    """Each table entry is what the rule picks from the real listing: real files, safetensors, no junk."""
    listing = _listing(repo_id)
    assert listing["status"] == "ok" and listing["sources"], repo_id
    paths = listing_paths(repo_id)
    entry = MODEL_FILES[repo_id]
    assert set(entry.files) <= set(paths), set(entry.files) - set(paths)
    chosen = select_files(entry.kind, paths)
    assert (chosen.files, chosen.variant) == (entry.files, entry.variant)
    for name in entry.files:
        assert not name.startswith(("safety_checker/", "onnx/")) and not name.endswith((".ckpt", ".onnx", ".md"))
        if name.endswith(".bin"):  # a pickle only where the part has no safetensors at all
            folder = name.rsplit("/", 1)[0] if "/" in name else ""
            assert not [
                p for p in paths if p.endswith(".safetensors") and p.rsplit("/", 1)[0 if "/" in p else -1] == folder
            ]


def test_sd15_downloads_the_fp16_safetensors_not_4_gb_of_pickles():
    sizes = {entry["path"]: entry["size"] for entry in _listing(SD15)["files"]}
    total = sum(sizes[name] for name in MODEL_FILES[SD15].files)
    assert MODEL_FILES[SD15].variant == "fp16"
    assert 2.0e9 < total < 2.25e9  # the README says ~2.1 GB; the fp32 .bin set is ~4.3 GB


def test_rule_prefers_fp32_safetensors_and_falls_back_in_order():
    layout = [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.bin",
        "sd.ckpt",
        "safety_checker/model.safetensors",
    ]
    chosen = select_files("inpaint", layout)
    assert chosen.variant is None
    assert chosen.files == (
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.bin",
    )
    sharded = [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "pytorch_model.bin",
        "onnx/model.onnx",
        "README.md",
    ]
    assert select_files(detect_kind(sharded), sharded).files == (
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    )


def test_presets_name_only_runnable_models():
    from vipcli_model.models import hub

    assert hub.PRESETS["sdxl-inpaint"] == "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    assert hub.PRESETS["sd2-inpaint"] == SD2  # stabilityai's repository was deleted
    for repo_id in hub.PRESETS.values():
        assert repo_id in MODEL_FILES


def test_every_extra_a_message_names_exists():
    import re

    import tomllib

    root = Path(__file__).resolve().parents[1]
    extras = set(tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = set()
    for path in [*root.joinpath("vipcli_model").rglob("*.py"), *root.joinpath("vipcli").rglob("*.py")]:
        named |= set(re.findall(r"vip-outpaint\[(\w+)\]", path.read_text()))
    assert {"qwen", "ui", "dask"} <= named <= extras  # every extra a message names exists


# ------------------------------------------------------------------ the stand-in hub


@pytest.fixture(scope="module")
def hub_repos(tmp_path_factory, tiny_model_dir) -> dict[str, Repo]:
    root = tmp_path_factory.mktemp("hub-content")
    sd15 = save_tiny_inpaint_repo(root / "sd15", variant="fp16")
    sd2 = save_tiny_inpaint_repo(root / "sd2", variant=None)
    lora = save_tiny_lora_repo(root / "lora", sd15)
    vlm = save_tiny_vlm_repo(root / "vlm", shared_tiny_vlm(tmp_path_factory))
    clip = save_tiny_clip_repo(root / "clip")
    repos = {
        SD15: repo_from_listing(SD15, sd15),
        SD2: repo_from_listing(SD2, sd2),
        LCM: repo_from_listing(LCM, lora),
        SMOL256: repo_from_listing(SMOL256, vlm),
        SMOL500: repo_from_listing(SMOL500, vlm),
        CLIP_L: repo_from_listing(CLIP_L, clip),
    }
    repos[SDXL] = repo_from_listing(SDXL, save_tiny_sdxl_repo(root / "sdxl"))
    repos[TAESD] = repo_from_listing(TAESD, save_tiny_taesd_repo(root / "taesd"))
    repos[KLEIN] = repo_from_listing(KLEIN, save_tiny_flux2_klein_repo(root / "klein"))
    repos[FLUX] = repo_from_listing(FLUX, {}, gated=True)  # its real file tree; gated: nothing is ever served
    # a gated repository (as FLUX.1 Fill is): same files, access refused without a token
    repos["acme/gated-inpainting"] = Repo("acme/gated-inpainting", dict(repos[SD15].files), gated=True)
    return repos


@pytest.fixture()
def fake_hub(hub_repos, monkeypatch):
    hub = FakeHub()
    for repo in hub_repos.values():
        hub.add(repo)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield hub
    hub.close()


def online(endpoint: str, **extra: str) -> dict:
    return {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "", "VIP_HUB_TIMEOUT": "3", **extra}


OFFLINE = {"HF_HUB_OFFLINE": "1"}


def outpaint(photo: Path, out: Path, *extra: str, env: dict | None = None):
    args = ["outpaint", str(photo), "--ratio", "1.25x", "--steps", "1", "--seed", "0", "--no-caption", "-o", str(out)]
    return run_vip(*args, *extra, env=env)


def one_line_error(result, code: int = 4) -> str:
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_first_use_fetches_exactly_the_needed_files_then_works_offline(fake_hub, astronaut_png, tmp_path):
    first = outpaint(astronaut_png, tmp_path / "a.png", env=online(fake_hub.url))
    assert first.returncode == 0, first.stderr[-3000:]
    assert fake_hub.fetched(SD15) == set(MODEL_FILES[SD15].files)  # fp16 safetensors, feature_extractor; no junk
    before = len(fake_hub.log)
    again = outpaint(astronaut_png, tmp_path / "b.png", env=OFFLINE)
    assert again.returncode == 0, again.stderr[-3000:]
    cached_online = outpaint(astronaut_png, tmp_path / "c.png", env=online(fake_hub.url))
    assert cached_online.returncode == 0
    assert len(fake_hub.log) == before  # a complete cache is used without asking the hub


def test_one_download_prepares_fast_and_the_captioner_for_offline_use(fake_hub, astronaut_png, tmp_path):
    result = run_vip("models", "download", "sd15-inpaint", "--fast", "--captioner", env=online(fake_hub.url))
    assert result.returncode == 0, result.stderr[-3000:]
    needed = (SD15, LCM, TAESD, SMOL256)
    for repo_id in needed:
        assert f"fetching {len(MODEL_FILES[repo_id].files)} files of {repo_id}" in result.stderr
        assert fake_hub.fetched(repo_id) == set(MODEL_FILES[repo_id].files)
    total = sum(len(fake_hub.repos[repo_id].files[name]) for repo_id in needed for name in MODEL_FILES[repo_id].files)
    first = result.stderr.splitlines()[0]  # the total, before any file
    assert first.startswith("to fetch: ") and f"{sum(len(MODEL_FILES[r].files) for r in needed)} files of 4" in first
    assert f"{total / 1e6:.2f} MB" in first or f"{total / 1e3:.2f} kB" in first, (first, total)
    before = len(fake_hub.log)
    fast = run_vip(
        "outpaint", str(astronaut_png), "--ratio", "1.25x", "--steps", "1", "--fast", "--keywords", "snow",
        "-o", str(tmp_path / "fast.png"), env=OFFLINE,
    )  # fmt: skip
    assert fast.returncode == 0, fast.stderr[-3000:]
    assert read_metadata(tmp_path / "fast.png")["vip"]["prompt_source"]["source"] == "captioner"
    assert len(fake_hub.log) == before
    listed = run_vip("models", "list", env=OFFLINE)
    assert "sdxl-inpaint" in listed.stdout and "cached" in listed.stdout
    assert SD15 in listed.stdout.split("caches, in the order")[1]


def test_fast_lora_offline_from_cache_without_weight_name_guessing(fake_hub, astronaut_png, tmp_path):
    """--fast on first use downloads the LoRA and TAESD through the table, then the next run needs no hub."""
    result = outpaint(astronaut_png, tmp_path / "f.png", "--fast", env=online(fake_hub.url))
    assert result.returncode == 0, result.stderr[-3000:]
    assert fake_hub.fetched(LCM) == {"pytorch_lora_weights.safetensors"}
    assert fake_hub.fetched(TAESD) == {"config.json", "diffusion_pytorch_model.safetensors"}
    again = outpaint(astronaut_png, tmp_path / "g.png", "--fast", env=OFFLINE)
    assert again.returncode == 0, again.stderr[-3000:]


def test_sd2_preset_downloads_the_community_mirror(fake_hub):
    result = run_vip("models", "download", "sd2-inpaint", env=online(fake_hub.url))
    assert result.returncode == 0, result.stderr[-3000:]
    assert fake_hub.fetched(SD2) == set(MODEL_FILES[SD2].files)
    assert not fake_hub.requests_for("stabilityai/stable-diffusion-2-inpainting")


def test_captioner_presets_fetch_no_onnx(fake_hub, astronaut_png):
    caption = run_vip("caption", str(astronaut_png), "--captioner", "smolvlm-256m", env=online(fake_hub.url))
    assert caption.returncode == 0, caption.stderr[-3000:]
    assert fake_hub.fetched(SMOL256) == set(MODEL_FILES[SMOL256].files)
    download = run_vip("models", "download", "smolvlm-500m", env=online(fake_hub.url))
    assert download.returncode == 0, download.stderr[-3000:]
    assert fake_hub.fetched(SMOL500) == set(MODEL_FILES[SMOL500].files)
    assert not any(name.startswith("onnx/") for name in fake_hub.fetched(SMOL256) | fake_hub.fetched(SMOL500))
    offline = run_vip("caption", str(astronaut_png), "--captioner", "smolvlm-500m", env=OFFLINE)
    assert offline.returncode == 0, offline.stderr[-3000:]


def test_a_model_in_the_standard_hf_cache_is_not_downloaded_again(fake_hub, astronaut_png, tmp_path, monkeypatch):
    """Another tool (huggingface_hub itself) filled the standard cache; vip's own cache is empty."""
    env = online(fake_hub.url)
    script = (
        "from huggingface_hub import snapshot_download; from vipcli_model.models.catalog import MODEL_FILES;"
        f"snapshot_download('{SD15}', allow_patterns=list(MODEL_FILES['{SD15}'].files))"
    )
    import os
    import subprocess
    import sys

    filled = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True)
    assert filled.returncode == 0, filled.stderr[-2000:]
    before = len(fake_hub.log)
    result = outpaint(astronaut_png, tmp_path / "a.png", env={**env, "VIP_CACHE_DIR": str(tmp_path / "empty")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(fake_hub.log) == before
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").iterdir())


def test_clip_model_for_eval_downloads_its_table_files(fake_hub, tmp_path):
    script = (
        "from vipcli_model.evaluation.perceptual import ClipScorer; ClipScorer.load('openai/clip-vit-large-patch14')"
    )
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **online(fake_hub.url)}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert fake_hub.fetched(CLIP_L) == set(MODEL_FILES[CLIP_L].files)


# ------------------------------------------------------------------ every failure: one line, bounded time


def test_missing_repository_is_not_called_unreachable(fake_hub, astronaut_png, tmp_path):
    result = outpaint(
        astronaut_png,
        tmp_path / "a.png",
        "--model",
        "stable-diffusion-v1-5/stable-diffusion-inpaintng",
        env=online(fake_hub.url),
    )
    line = one_line_error(result)
    assert "does not exist" in line and "stable-diffusion-inpaintng" in line and "cannot be reached" not in line


def test_gated_repository_says_accept_the_licence_and_log_in(fake_hub, astronaut_png, tmp_path):
    result = outpaint(astronaut_png, tmp_path / "a.png", "--model", "acme/gated-inpainting", env=online(fake_hub.url))
    line = one_line_error(result)
    assert "gated" in line and "acme/gated-inpainting" in line and "hf auth login" in line and "HF_TOKEN" in line


def test_a_file_missing_from_the_repository_is_named(hub_repos, astronaut_png, tmp_path):
    hub = FakeHub()
    broken = dict(hub_repos[SD15].files)
    del broken["unet/diffusion_pytorch_model.fp16.safetensors"]
    hub.add(Repo(SD15, broken))
    try:
        line = one_line_error(outpaint(astronaut_png, tmp_path / "a.png", env=online(hub.url)))
    finally:
        hub.close()
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in line and SD15 in line


def test_hub_down_is_one_line_fast(astronaut_png, tmp_path):
    start = time.monotonic()
    line = one_line_error(outpaint(astronaut_png, tmp_path / "a.png", env=online(f"http://127.0.0.1:{free_port()}")))
    assert time.monotonic() - start < 60
    assert "cannot connect" in line and SD15 in line and "vip models download" in line


def test_hub_that_never_answers_times_out(astronaut_png, tmp_path):
    silent = SilentServer()
    try:
        start = time.monotonic()
        line = one_line_error(outpaint(astronaut_png, tmp_path / "a.png", env=online(silent.url, VIP_HUB_TIMEOUT="2")))
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    assert "no answer within 2 s" in line and elapsed < 60


def test_downloads_go_through_the_proxy(fake_hub, tmp_path):
    """A mirror reachable only through the proxy (its host does not resolve here): vip downloads through it."""
    proxy = ForwardProxy(fake_hub)
    try:
        env = online("http://hub-mirror.invalid", HTTP_PROXY=proxy.url, http_proxy=proxy.url, NO_PROXY="", no_proxy="")
        result = run_vip("models", "download", "lcm-lora-sd15", env=env)
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert any("pytorch_lora_weights.safetensors" in path for path in proxy.log)
    assert fake_hub.fetched(LCM) == {"pytorch_lora_weights.safetensors"}


def test_a_proxy_that_is_down_is_named(tmp_path):
    proxy = f"http://127.0.0.1:{free_port()}"
    env = online("http://hub-mirror.invalid", HTTP_PROXY=proxy, http_proxy=proxy, NO_PROXY="", no_proxy="")
    line = one_line_error(run_vip("models", "download", "lcm-lora-sd15", env=env))
    assert "proxy" in line and proxy in line


def test_offline_and_not_cached_names_the_model_and_the_fix(astronaut_png, tmp_path):
    line = one_line_error(outpaint(astronaut_png, tmp_path / "a.png", env=OFFLINE))
    assert SD15 in line and "HF_HUB_OFFLINE" in line and "vip models download" in line


def test_url_downloads_have_a_timeout_and_write_atomically(tmp_path, monkeypatch):
    """Files from outside the hub (FID Inception weights, LPIPS backbone): bounded wait, nothing half-written."""
    from vipcli_model.errors import ModelNotFoundError
    from vipcli_model.models import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "")
    monkeypatch.setenv("VIP_HUB_TIMEOUT", "1")
    silent = SilentServer()
    target = tmp_path / "weights.pth"
    try:
        start = time.monotonic()
        with pytest.raises(ModelNotFoundError, match="no answer within 1 s"):
            hub.download_url(silent.url + "/weights.pth", target, what="the test weights")
        assert time.monotonic() - start < 20
    finally:
        silent.close()
    assert list(tmp_path.iterdir()) == []


def test_qwen2_vl_without_torchvision_is_refused_before_downloading(fake_hub, astronaut_png):
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here: the refusal cannot happen")
    result = run_vip("caption", str(astronaut_png), "--captioner", "qwen2-vl-2b", env=online(fake_hub.url))
    line = one_line_error(result)
    assert "torchvision" in line and "Qwen/Qwen2-VL-2B-Instruct" in line
    assert not fake_hub.requests_for("Qwen/Qwen2-VL-2B-Instruct")


def test_qwen2_vl_images_are_capped(monkeypatch):
    """Its repository allows 12.8 MP per image (~16k visual tokens); vip's captioner caps the pixel budget."""
    from types import SimpleNamespace

    from vipcli_model.captioning import captioner

    image_processor = SimpleNamespace(size={"shortest_edge": 3136, "longest_edge": 12845056}, max_pixels=12845056)
    captioner._limit_image_tiles(SimpleNamespace(image_processor=image_processor))
    assert image_processor.size["longest_edge"] == captioner.MAX_IMAGE_PIXELS <= 28 * 28 * 1024
    assert image_processor.max_pixels == captioner.MAX_IMAGE_PIXELS


def test_single_file_checkpoint_fetches_only_the_config_files(fake_hub, tiny_model_dir, astronaut_png, tmp_path):
    """A single .safetensors checkpoint needs its architecture's configs, not another 2 GB of weights."""
    from ldm_convert import save_ldm_checkpoint

    checkpoint = save_ldm_checkpoint(tiny_model_dir, tmp_path / "tiny-inpaint.safetensors")
    result = outpaint(astronaut_png, tmp_path / "a.png", "--model", str(checkpoint), env=online(fake_hub.url))
    assert result.returncode == 0, result.stderr[-3000:]
    configs = {name for name in MODEL_FILES[SD15].files if not name.endswith(".safetensors")}
    assert fake_hub.fetched(SD15) == configs
    again = outpaint(astronaut_png, tmp_path / "b.png", "--model", str(checkpoint), env=OFFLINE)
    assert again.returncode == 0, again.stderr[-3000:]


def test_fid_weights_download_through_the_url_helper(tmp_path, monkeypatch):
    """vip eval's Inception weights: fetched once into vip's metrics cache, found there afterwards."""
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from vipcli_model.errors import ModelLoadError
    from vipcli_model.evaluation import inception

    served = tmp_path / "served"
    served.mkdir()
    (served / inception.FID_WEIGHTS_FILE).write_bytes(b"weights" * 1000)

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_HUB_OFFLINE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(
        inception, "FID_WEIGHTS_URL", f"http://127.0.0.1:{server.server_address[1]}/{inception.FID_WEIGHTS_FILE}"
    )
    monkeypatch.setattr(inception, "metrics_cache_dir", lambda: tmp_path / "metrics")
    with pytest.raises(ModelLoadError, match="checksum"):  # the served file is not the real one
        inception.find_inception_weights(download=True)
    assert not (tmp_path / "metrics").exists() or not any((tmp_path / "metrics").iterdir())
    monkeypatch.setattr(inception, "FID_WEIGHTS_SHA256_PREFIX", None)
    try:
        path = inception.find_inception_weights(download=True)
    finally:
        server.shutdown()
    assert path == tmp_path / "metrics" / inception.FID_WEIGHTS_FILE and path.read_bytes() == b"weights" * 1000
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert inception.find_inception_weights(download=True) == path


def test_sdxl_preset_first_use_then_offline(fake_hub, astronaut_png, tmp_path):
    first = outpaint(astronaut_png, tmp_path / "a.png", "--model", "sdxl-inpaint", env=online(fake_hub.url))
    assert first.returncode == 0, first.stderr[-3000:]
    # fp32 safetensors of both encoders, no junk (tokenizer_2's files equal tokenizer's here: asked for, not re-sent)
    assert fake_hub.fetched(SDXL, ("GET", "HEAD")) == set(MODEL_FILES[SDXL].files)
    before = len(fake_hub.log)
    again = outpaint(astronaut_png, tmp_path / "b.png", "--model", "sdxl-inpaint", env=OFFLINE)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(fake_hub.log) == before


def test_flux_fill_preset_is_gated_and_says_what_to_accept(fake_hub, astronaut_png, tmp_path):
    line = one_line_error(outpaint(astronaut_png, tmp_path / "a.png", "--model", "flux-fill", env=online(fake_hub.url)))
    assert FLUX in line and "gated" in line and "hf auth login" in line and MODEL_FILES[FLUX].licence in line
    assert fake_hub.fetched(FLUX) == set()


def test_flux2_klein_preset_downloads_its_table_then_runs_offline(fake_hub, astronaut_png, tmp_path):
    result = run_vip("models", "download", "flux2-klein-4b", env=online(fake_hub.url))
    assert result.returncode == 0, result.stderr[-3000:]
    # the diffusers folders only: not the 7.75 GB original-layout transformer at the top level, nor the sample images
    assert fake_hub.fetched(KLEIN) == set(MODEL_FILES[KLEIN].files)
    before = len(fake_hub.log)
    again = outpaint(astronaut_png, tmp_path / "a.png", "--model", "flux2-klein-4b", env=OFFLINE)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(fake_hub.log) == before


def test_a_local_folder_named_like_a_preset_is_that_folder(tmp_path, monkeypatch):
    from vipcli_model.models import hub

    monkeypatch.chdir(tmp_path)
    assert hub.resolve_spec("sd15-inpaint") == hub.DEFAULT_INPAINT_MODEL
    (tmp_path / "sd15-inpaint").mkdir()
    assert hub.resolve_spec("sd15-inpaint") == "sd15-inpaint"
    assert hub.resolve_spec("sdxl-inpaint") == hub.PRESETS["sdxl-inpaint"]  # other presets unchanged


# ------------------------------------------------------------------ caches and errors, as huggingface_hub defines them


def _cached_by_hand(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """A model in a hub-cache layout (refs/main -> a snapshot holding ``files``), written directly."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "1" * 40
    for name, data in files.items():
        (repo / "snapshots" / commit / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / name).write_bytes(data)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_caches_are_where_huggingface_hub_puts_them(tmp_path, monkeypatch):
    """The library's own variables decide, read when asked: its legacy HUGGINGFACE_HUB_CACHE too."""
    from vipcli_model.models import hub

    monkeypatch.delenv("VIP_CACHE_DIR")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.cache_dirs() == [tmp_path / "home" / "hub"]
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "older"))
    assert hub.cache_dir() == tmp_path / "older"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "newer"))
    monkeypatch.setenv("VIP_CACHE_DIR", str(tmp_path / "vip"))
    assert hub.cache_dirs() == [tmp_path / "vip", tmp_path / "newer"]


def test_offline_as_huggingface_hub_reads_it(monkeypatch):
    from vipcli_model.models import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not hub.offline()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")  # huggingface_hub honours it, so transformers stays offline
    assert hub.offline()


def test_a_user_cache_of_vip_own_is_not_read(tmp_path, monkeypatch):
    """Models are read from VIP_CACHE_DIR and the Hugging Face cache only, not from a folder of vip's own."""
    from vipcli_model.models import hub

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path))
    _cached_by_hand(
        tmp_path / "xdg" / "vip" / "hub", TAESD, {"config.json": b"{}", "diffusion_pytorch_model.safetensors": b"x"}
    )
    assert tmp_path / "xdg" / "vip" / "hub" not in hub.cache_dirs()
    assert hub.find_cached(TAESD) is None
    _cached_by_hand(hub.hf_cache_dir(), TAESD, {"config.json": b"{}", "diffusion_pytorch_model.safetensors": b"x"})
    assert hub.find_cached(TAESD).folder.parent.parent.parent == hub.hf_cache_dir()


def test_errors_are_told_apart_by_their_class(monkeypatch):
    """An exception is the hub's error by its class, not by its name; offline mode is named as the cause."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    from vipcli_model.models import hub

    impostor = type("GatedRepoError", (Exception,), {})("refused")
    assert "gated" not in str(hub.explain(impostor, SD15, "model"))
    line = str(hub.explain(OfflineModeIsEnabled("no network"), SD15, "model"))
    assert "HF_HUB_OFFLINE=1 forbids network access" in line and SD15 in line and "cannot connect" not in line
