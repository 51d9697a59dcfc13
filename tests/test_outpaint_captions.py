"""`vip outpaint` asks the captioner for region prompts when the user gives none."""

from __future__ import annotations

from conftest import outpaint_args
from tiny_vlm import ChatCompletionsStub, shared_tiny_vlm

from vipcli_model.images.io import read_metadata


def test_server_captioner_writes_the_region_prompts(tiny_model_dir, astronaut_png, tmp_path, vip_main):
    stub = ChatCompletionsStub(answer="An astronaut in a white suit.")
    try:
        result = vip_main(
            *outpaint_args(
                astronaut_png,
                tiny_model_dir,
                tmp_path / "c.png",
                "--keywords",
                "snowy mountains",
                "--captioner-url",
                stub.url,
                "--captioner-model",
                "m",
                "--steps",
                "2",
                ratio="1.5x",
            )
        )
    finally:
        stub.close()
    assert result.returncode == 0, result.stderr
    vip = read_metadata(tmp_path / "c.png")["vip"]
    assert vip["prompt_source"]["source"] == "captioner"
    assert vip["prompts"]["center"] == "An astronaut in a white suit."
    assert vip["prompts"]["surrounding"].startswith("snowy mountains")  # keywords steer the Surrounding
    assert vip["prompts"]["total"].startswith("Center: An astronaut in a white suit.; Surrounding: snowy mountains")
    assert len(stub.requests) == 2  # the photo (Center) and beyond the frame (Surrounding)
    # the prompts the captioner wrote are shown, one line each, before the file written with them
    center, surrounding = (line.strip() for line in result.stderr.splitlines() if line.startswith("  "))
    assert (
        center == f"Center: {vip['prompts']['center']}"
        and surrounding == f"Surrounding: {vip['prompts']['surrounding']}"
    )


def test_local_captioner_and_user_prompts_win(tiny_model_dir, astronaut_png, tmp_path, tmp_path_factory, vip_main):
    vlm = shared_tiny_vlm(tmp_path_factory)
    local = vip_main(
        *outpaint_args(astronaut_png, tiny_model_dir, tmp_path / "l.png", "--captioner", vlm, "--steps", "1")
    )
    assert local.returncode == 0, local.stderr
    meta = read_metadata(tmp_path / "l.png")["vip"]
    assert meta["prompt_source"]["source"] == "captioner" and meta["prompt_source"]["captioner"]
    assert meta["prompts"]["total"].startswith("Center: ")
    # a prompt given by hand: the captioner is not asked (it is not even loaded: a missing folder is fine)
    user = vip_main(
        *outpaint_args(astronaut_png, tiny_model_dir, tmp_path / "u.png", "--center", "a diver", "--steps", "1")
    )
    assert user.returncode == 0, user.stderr
    assert read_metadata(tmp_path / "u.png")["vip"]["prompt_source"] == {"source": "user"}


def test_default_captioner_missing_offline_warns_and_runs_unconditionally(
    tiny_model_dir, astronaut_png, tmp_path, vip_main
):
    result = vip_main(*outpaint_args(astronaut_png, tiny_model_dir, tmp_path / "d.png", "--steps", "1"))
    assert result.returncode == 0, result.stderr
    assert "no captioner" in result.stderr and "--no-caption" in result.stderr
    assert read_metadata(tmp_path / "d.png")["vip"]["prompt_source"] == {"source": "unconditional"}
    quiet = vip_main(
        *outpaint_args(
            astronaut_png, tiny_model_dir, tmp_path / "q.png", "--steps", "1", "--no-caption", "--detail", "off"
        )
    )  # (auto on a CPU notes its cost)
    assert quiet.returncode == 0 and "no captioner" not in quiet.stderr and "warning" not in quiet.stderr
    # a captioner the user named explicitly must work, or the run stops
    named = vip_main(
        *outpaint_args(astronaut_png, tiny_model_dir, tmp_path / "n.png", "--captioner", "someone/missing-vlm")
    )
    assert named.returncode == 4 and "someone/missing-vlm" in named.stderr and not (tmp_path / "n.png").exists()
    bad = vip_main(
        "outpaint",
        astronaut_png,
        "--ratio",
        "2x",
        "--captioner-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "/nonexistent",
    )
    assert bad.returncode == 2 and "--captioner-model" in bad.stderr
