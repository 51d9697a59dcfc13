"""A missing model's message names the option this command has for a local copy, and never the failing command."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture()
def unreachable_hub(monkeypatch):
    """Network allowed, but the hub's address refuses every connection (a port nothing listens on)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("VIP_HUB_TIMEOUT", "2")


def test_caption_names_captioner(vip_main, photo_600x400, unreachable_hub):
    result = vip_main("caption", photo_600x400)
    assert result.returncode == 4
    assert "as --captioner" in result.stderr and "--model" not in result.stderr
    assert ".safetensors" not in result.stderr  # a captioner is a folder


def test_tiny_autoencoder_names_vae(vip_main, tiny_model_dir, photo_600x400, unreachable_hub, tmp_path):
    result = vip_main(
        "outpaint", photo_600x400, "--ratio", "1.25x", "--model", tiny_model_dir, "--vae", "taesd", "--center", "a",
        "-o", tmp_path / "out.png",
    )  # fmt: skip
    assert result.returncode == 4
    assert "madebyollin/taesd" in result.stderr and "as --vae" in result.stderr and "--model" not in result.stderr


def test_edit_does_not_suggest_a_file_it_refuses(vip_main, photo_600x400):
    result = vip_main("edit", photo_600x400, "make it red")
    assert result.returncode == 4
    assert "local folder as --model" in result.stderr and ".safetensors" not in result.stderr


def test_download_does_not_suggest_itself(vip_main, unreachable_hub):
    result = vip_main("models", "download", "sd15-inpaint")
    assert result.returncode == 4
    assert "cannot connect" in result.stderr and "vip models download" not in result.stderr


def test_download_of_no_preset_lists_the_presets(vip_main, unreachable_hub):
    result = vip_main("models", "download", "no-such-preset")
    assert result.returncode == 4
    line = result.stderr.strip()
    assert "'no-such-preset' is not a preset, a hub id" in line and "sd15-inpaint" in line and "smolvlm-256m" in line
    assert "cannot connect" not in line and len(line.splitlines()) == 1


def test_keywords_without_captioner_say_what_happens_in_one_line(vip_main, tiny_model_dir, photo_600x400, tmp_path):
    result = vip_main(
        "outpaint", photo_600x400, "--ratio", "1.25x", "--keywords", "snowy mountains", "--model", tiny_model_dir,
        "--steps", "1", "--detail", "off", "--json", "-o", tmp_path / "out.png",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "captioner" in line]
    assert len(notes) == 1 and len(notes[0]) < 200
    assert "without prompts" not in notes[0] and "--keywords 'snowy mountains'" in notes[0]
    assert "Surrounding" in notes[0] and "as `model`" not in notes[0]
    import json

    assert json.loads(result.stdout)["prompts"]["surrounding"].startswith("snowy mountains")
