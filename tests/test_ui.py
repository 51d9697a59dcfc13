"""What `vip ui` stands on: the library's warm session, canvas preview and latent previews; the command line that
reproduces a result; the painted mask; download progress handed to the page; `vip ui`'s refusals and its start and
stop. The pages themselves: test_ui_browser.py."""

from __future__ import annotations

import gc
import os
import shlex
import signal
import socket
import subprocess
import sys
import urllib.request
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, pixels
from PIL import Image

from vipcli_model.config import BlendConfig, ExpansionConfig, GenerationConfig, ModelConfig, PromptConfig
from vipcli_model.errors import Cancelled, InputError, OptionError
from vipcli_model.outpainting.run import OutpaintJob
from vipcli_model.outpainting.session import PREVIEW_FILL, LatentPreview, OutpaintSession, canvas_preview


@pytest.fixture()
def small_photo(tmp_path) -> Path:
    import skimage.data

    path = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).resize((96, 64)).save(path)
    return path


def test_canvas_preview_is_the_canvas_with_the_area_to_generate_grey(small_photo):
    shown = canvas_preview(small_photo, ExpansionConfig(ratio="2x", align="top-left"))
    assert shown.canvas_size == (192, 128) and shown.image_box == (0, 0, 96, 64)
    picture = np.asarray(shown.image)
    assert np.array_equal(picture[:64, :96], pixels(small_photo))
    assert (picture[64:] == PREVIEW_FILL).all() and (picture[:, 96:] == PREVIEW_FILL).all()
    small = canvas_preview(small_photo, ExpansionConfig(aspect="4:1"), max_side=64)
    assert small.canvas_size == (256, 64) and small.image.size == (64, 16)  # drawn small, the size told whole


def test_canvas_preview_errors_are_the_cli_s(small_photo, tmp_path):
    with pytest.raises(OptionError, match="`ratio`"):
        canvas_preview(small_photo, ExpansionConfig(ratio="half"))
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    with pytest.raises(InputError, match="notes.txt"):
        canvas_preview(text, ExpansionConfig(ratio="2x"))


class _PipeWithoutTinyDecoder:
    vae = None
    vae_scale_factor = 8


def test_latent_preview_maps_sd_latents_to_a_picture_at_the_working_size():
    preview = LatentPreview(_PipeWithoutTinyDecoder())
    zero = preview(torch.zeros(2, 4, 5, 7))  # the first image of the batch
    assert zero.size == (56, 40) and (np.asarray(zero) == 128).all()  # latent 0 is mid-grey in the linear map
    red = torch.zeros(1, 4, 2, 2)
    red[:, 0] = 0.18215 * 2  # the first channel (scaled as SD's latents are) is mostly luminance, red a little more
    assert np.asarray(preview(red))[..., 0].min() > np.asarray(preview(red))[..., 2].max() - 1
    assert preview(torch.zeros(1, 16, 4, 4)) is None  # not SD's latents (FLUX's): no picture


def _job(model: Path) -> OutpaintJob:
    return OutpaintJob(
        expansion=ExpansionConfig(ratio="2x"),
        prompts=PromptConfig(center="a cup", surrounding="a table"),
        generation=GenerationConfig(steps=2, seed=1),
        blend=BlendConfig(feather=0),
        model=ModelConfig(model=str(model), device="cpu"),
    )


@pytest.mark.slow
def test_session_keeps_the_model_names_results_and_cancels(tiny_model_dir, small_photo, tmp_path):
    session = OutpaintSession(tmp_path / "out")
    steps, previews = [], []
    first = session.run(
        small_photo,
        _job(tiny_model_dir),
        on_step=lambda done, total: steps.append((done, total)),
        on_preview=lambda done, total, picture: previews.append((done, picture.size)),
    )
    assert [file.path for file in first.written] == [tmp_path / "out" / "coffee_outpaint.png"]
    assert steps == [(1, 2), (2, 2)] and [done for done, _size in previews] == [2]
    work = first.written[0].metadata["working_size"]
    assert previews[0][1] == tuple(work)  # the preview is drawn at the working size
    outpainter = session.outpainter(_job(tiny_model_dir).model)
    second = session.run(small_photo, _job(tiny_model_dir))  # warm: no second load; the first result stays
    assert session.loads == 1 and session.outpainter(_job(tiny_model_dir).model) is outpainter
    assert [file.path for file in second.written] == [tmp_path / "out" / "2" / "coffee_outpaint.png"]
    assert np.array_equal(pixels(first.written[0].path), pixels(second.written[0].path))  # same seed, same pixels

    def cancel_at_first_step(done: int, total: int) -> None:
        if done == 1:
            session.cancel()

    long = replace(_job(tiny_model_dir), generation=GenerationConfig(steps=50, seed=1))
    with pytest.raises(Cancelled, match="cancelled at step 1 of 50"):
        session.run(small_photo, long, on_step=cancel_at_first_step)
    assert not (tmp_path / "out" / "3").exists()
    session.run(small_photo, _job(tiny_model_dir))  # the next run is not cancelled
    assert (tmp_path / "out" / "3" / "coffee_outpaint.png").is_file()

    old = weakref.ref(outpainter)
    del outpainter
    other = replace(_job(tiny_model_dir), model=ModelConfig(model=str(tiny_model_dir), device="cpu", dtype="fp32"))
    session.run(small_photo, other)  # another model: the loaded one is freed first
    gc.collect()
    assert session.loads == 2 and old() is None and session.model == other.model


def test_session_reports_a_bad_file_in_the_cli_s_words_before_loading(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    session = OutpaintSession(tmp_path / "out")
    with pytest.raises(InputError, match=r"notes.txt: not an image"):
        session.run(text, _job(Path("/nonexistent")))
    assert session.loads == 0


def test_outpaint_command_writes_the_settings_as_the_cli_s_flags():
    from vipcli.ui.command import outpaint_command

    job = OutpaintJob(
        expansion=ExpansionConfig(aspect="16:9", align="left"),
        prompts=PromptConfig(keywords="snow"),
        generation=GenerationConfig(steps=4, negative="blurry", num_images=2, guidance_interval=(0.5, 3.0)),
        blend=BlendConfig(feather=0, color_match=True),
        model=ModelConfig(model="sdxl-inpaint", fast=True),
    )
    captioned = {"seed": 5, "prompts": {"center": "a barn", "surrounding": "snow, a field"}}
    captioned["prompt_source"] = {"source": "captioner"}
    words = shlex.split(outpaint_command("my photo.jpg", job, captioned, "out dir"))
    assert words == [
        *("vip", "outpaint", "my photo.jpg", "--aspect", "16:9", "--align", "left"),
        *("--center", "a barn", "--surrounding", "snow, a field", "--negative", "blurry", "--steps", "4"),
        *("--guidance-interval", "0.5,3.0", "--seed", "5", "--num-images", "2", "--feather", "0", "--color-match"),
        *("--model", "sdxl-inpaint", "--fast", "-o", "out dir"),
    ]  # the captioner's prompts written out (not the keywords again): the command needs no captioner


def test_vip_ui_refuses_other_hosts_without_auth_and_says_what_to_install(vip_main, monkeypatch):
    result = vip_main("ui", "--host", "0.0.0.0", "--no-browser")
    assert result.returncode == 2 and "--auth USER:PASSWORD" in result.stderr and len(result.stderr.splitlines()) == 1
    result = vip_main("ui", "--auth", "nopassword", "--no-browser")
    assert result.returncode == 2 and "USER:PASSWORD" in result.stderr
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    result = vip_main("ui", "--no-browser")
    assert result.returncode == 2 and "pip install 'vip-outpaint[ui]'" in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_vip_ui_serves_and_stops_on_ctrl_c_removing_uploads(tmp_path):
    pytest.importorskip("gradio")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp = tmp_path / "temp"
    temp.mkdir()
    env = dict(os.environ, TMPDIR=str(temp), OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    server = subprocess.Popen(
        [sys.executable, "-c", "from vipcli.main import main; main()", "ui", "--no-browser", "--port", str(port)]
        + ["-o", str(tmp_path / "out"), "--model", "/nonexistent"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it, also when the suite itself was started in the background by a shell
        # without job control (its children then inherit SIGINT ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), server.stderr.read() if server.poll() is not None else url
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200 and b"gradio" in page.read().lower()
        assert [path.name.startswith("vip-ui-") for path in temp.iterdir()] == [True]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()  # not left serving after the test
            server.wait()
            raise
    assert server.returncode in (0, 130)
    assert "Traceback" not in server.stderr.read()
    assert not any(path.name.startswith("vip-ui-") for path in temp.iterdir())  # uploads removed on exit


def test_the_model_choices_are_inpainting_models():
    from vipcli.ui.app import inpainting_models

    choices = inpainting_models()
    assert {"sd15-inpaint", "sdxl-inpaint", "flux-fill"} <= set(choices)
    assert not {"smolvlm-256m", "pbi-general-mb", "taesd", "lcm-lora-sd15"} & set(choices)


def test_first_use_downloads_reach_the_run_s_progress_and_status(monkeypatch, tmp_path):
    """huggingface_hub's own bars (a real download from the stand-in hub) reach the run's gr.Progress and status."""
    import huggingface_hub.constants
    from fake_hub import FakeHub, repo_from_listing
    from hub_content import save_tiny_taesd_repo

    from vipcli.commands.models import human_size
    from vipcli.ui.progress import gradio_report, page_download_bars
    from vipcli_model.models import hub
    from vipcli_model.models.catalog import TINY_VAE

    repo_id = "madebyollin/taesd"
    stand_in = FakeHub()
    try:
        stand_in.add(repo_from_listing(repo_id, save_tiny_taesd_repo(tmp_path / "taesd")))
        monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        drawn, shown = [], []
        report = gradio_report(lambda *args, **kwargs: drawn.append((args, kwargs)), shown.append)
        local = hub.download(repo_id, TINY_VAE, tqdm_class=page_download_bars(report))
    finally:
        stand_in.close()
    size = sum(path.stat().st_size for path in local.folder.rglob("*") if path.is_file())
    text = f"Downloading the model's files: {human_size(size)} of {human_size(size)}"
    assert drawn[-1] == (((size, size),), {"desc": text, "unit": "bytes"}) and shown[-1] == text


def test_the_painted_strokes_become_vip_edit_s_mask(small_photo, tmp_path):
    from vipcli.ui.edit_tab import mask_from_controls

    strokes = np.zeros((32, 48, 4), dtype=np.uint8)  # the canvas drawn at half the photo's size
    strokes[8:16, 12:24] = (255, 255, 255, 255)
    strokes[20:24, 0:4, 3] = 100  # too faint to count, as `vip edit` reads a mask
    layer = tmp_path / "strokes" / "layer_0.png"
    layer.parent.mkdir()
    Image.fromarray(strokes).save(layer)
    painted = {"background": None, "layers": [str(layer)], "composite": None}
    mask = pixels(Path(mask_from_controls(dict(photo=str(small_photo), painted=painted))))[..., 0]
    expected = np.zeros((64, 96), dtype=np.uint8)
    expected[16:32, 24:48] = 255
    assert np.array_equal(mask, expected)  # the photo's size, white where painted
    blank = {"background": None, "layers": [str(tmp_path / "blank.png")], "composite": None}
    Image.new("RGBA", (96, 64)).save(tmp_path / "blank.png")
    assert mask_from_controls(dict(photo=str(small_photo), painted=blank)) is None  # nothing painted: no mask
    assert mask_from_controls(dict(photo=str(small_photo), painted=blank, mask="m.png")) == "m.png"
    with pytest.raises(OptionError, match="not both"):
        mask_from_controls(dict(photo=str(small_photo), painted=painted, mask="m.png"))
