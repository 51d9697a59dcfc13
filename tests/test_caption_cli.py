"""`vip caption` as a user runs it: JSON output, training JSON Lines with resume, servers, errors.

End-to-end checks run the real entry point in a subprocess; the rest call ``main()``
in-process (same code path, same messages and exit codes, without a Python start-up each).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_vip
from PIL import Image
from tiny_vlm import ChatCompletionsStub, shared_tiny_vlm


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    return shared_tiny_vlm(tmp_path_factory)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    import skimage.data

    path = tmp_path_factory.mktemp("caption-photos") / "photo.jpg"
    Image.fromarray(skimage.data.chelsea()).save(path, quality=90)
    return path


@pytest.fixture()
def data_folder(tmp_path) -> Path:
    import skimage.data

    folder = tmp_path / "data"
    (folder / "more").mkdir(parents=True)
    Image.fromarray(skimage.data.astronaut()).resize((256, 256)).save(folder / "astronaut.png")
    Image.fromarray(skimage.data.coffee()).resize((240, 160)).save(folder / "more" / "coffee.png")
    return folder


@pytest.fixture()
def stub():
    server = ChatCompletionsStub(answer="Assistant: A ginger cat on a windowsill.")
    yield server
    server.close()


def _caption_with_stub(stub, path: Path) -> list[str]:
    """`vip caption PATH` asking the stub server's model `m`."""
    return ["caption", str(path), "--captioner-url", stub.url, "--captioner-model", "m"]


def vip_in_process(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """``vip ARGS`` through ``vipcli.main.main`` in this process: (exit code, stdout, stderr)."""
    from vipcli.main import main

    monkeypatch.setattr(sys, "argv", ["vip", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------ acceptance (subprocess)


def test_json_output_has_center_surrounding_and_total(photo, tiny_vlm_dir):
    result = run_vip("caption", str(photo), "--captioner", str(tiny_vlm_dir), "--json")
    assert result.returncode == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert record["image"] == str(photo)
    assert record["center"] and record["surrounding"]
    assert record["total"] == f"Center: {record['center']}; Surrounding: {record['surrounding']}"
    assert record["model"] == str(tiny_vlm_dir.resolve()) and record["mode"] == "outpaint"
    assert record["cached"] is False


def test_training_jsonl_run_twice_does_no_model_work_the_second_time(data_folder, tiny_vlm_dir, tmp_path):
    jsonl = tmp_path / "caps.jsonl"
    args = (
        "caption",
        str(data_folder),
        "--for-training",
        "--ratio",
        "2x",
        "--jsonl",
        str(jsonl),
        "--captioner",
        str(tiny_vlm_dir),
        "--no-cache",
    )
    first = run_vip(*args)
    assert first.returncode == 0, first.stderr
    assert "2 captioned" in first.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [record["image"] for record in records] == ["astronaut.png", "more/coffee.png"]
    assert records[0]["center_box"] == [64, 64, 192, 192] and records[1]["center_box"] == [60, 40, 180, 120]

    # the second run may not even load the model: point --captioner at nothing loadable
    second = run_vip(*args[:-3], "--captioner", str(tmp_path / "no-model-here"))
    assert second.returncode == 0, second.stderr
    assert "0 captioned, 0 from cache, 2 skipped" in second.stderr
    assert jsonl.read_text().splitlines() == [json.dumps(record, ensure_ascii=False) for record in records]


def test_a_server_answering_500_is_one_clear_line_and_a_failing_exit(photo, stub):
    stub.behaviour = "error"
    result = run_vip(*_caption_with_stub(stub, photo))
    assert result.returncode == 6
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: captioner server {stub.url}/chat/completions answered HTTP 500 Internal Server Error: model crashed"
    ]
    assert result.stdout == ""


# ------------------------------------------------------------------ in-process


def test_a_stub_server_captions_a_photo(photo, stub, capsys, monkeypatch):
    monkeypatch.setenv("VIP_CAPTIONER_API_KEY", "sk-local")
    code, out, err = vip_in_process(
        capsys, monkeypatch, *_caption_with_stub(stub, photo), "--keywords", "a sunny garden", "--json"
    )
    assert code == 0, err
    (record,) = json_lines(out)
    assert record["center"] == "A ginger cat on a windowsill."
    assert record["surrounding"] == "a sunny garden, A ginger cat on a windowsill."
    assert record["model"] == f"m@{stub.url}"
    assert stub.headers[0]["Authorization"] == "Bearer sk-local"

    code, out, err = vip_in_process(
        capsys, monkeypatch, *_caption_with_stub(stub, photo), "--keywords", "a sunny garden"
    )
    assert code == 0 and len(stub.requests) == 2  # the second run came from the cache
    assert "Center" in out and "Surrounding" in out
    assert f"prompts for outpainting, cached answer of m@{stub.url}" in " ".join(out.split())
    assert "outpaint," not in out  # the table's last line says what it is
    assert "1 from cache" in err


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [("garbage", "answered something that is not JSON"), ("slow", "did not answer within 0.5 s")],
)
def test_server_garbage_and_timeouts_are_one_line(photo, stub, capsys, monkeypatch, behaviour, expected):
    stub.behaviour = behaviour
    code, out, err = vip_in_process(capsys, monkeypatch, *_caption_with_stub(stub, photo), "--captioner-timeout", "0.5")
    assert code == 6 and out == ""
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("error: captioner server ") and expected in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--captioner-url", "http://127.0.0.1:9/v1"), "--captioner-url http://127.0.0.1:9/v1 needs --captioner-model"),
        (
            ("--captioner", "smolvlm-256m", "--captioner-url", "http://h/v1", "--captioner-model", "m"),
            "--captioner and --captioner-url",
        ),
        (("--ratio", "2x"), "--ratio sets the center box of training images: it needs --for-training"),
        (("--for-training", "--ratio", "1"), "--ratio '1' is out of range"),
        (("--for-training", "--keywords", "sea"), "drop --keywords"),
        (("--device", "tpu"), "--device 'tpu' is not a device"),
    ],
)
def test_bad_option_combinations_name_the_options(photo, capsys, monkeypatch, args, message):
    code, out, err = vip_in_process(capsys, monkeypatch, "caption", str(photo), *args)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_bad_image_in_a_folder_is_reported_and_the_rest_are_captioned(data_folder, stub, capsys, monkeypatch):
    (data_folder / "broken.png").write_bytes(b"\x89PNG but not really")
    code, out, err = vip_in_process(capsys, monkeypatch, *_caption_with_stub(stub, data_folder), "--json")
    assert code == 3  # the failures' shared code (an unreadable image), though the others were captioned
    assert [Path(record["image"]).name for record in json_lines(out)] == ["astronaut.png", "coffee.png"]
    assert "failed" in err and "broken.png" in err
    assert "3 image(s): 2 captioned, 0 from cache, 1 failed" in err


def test_a_cut_prompt_is_warned_about(photo, stub, capsys, monkeypatch):
    stub.answer = "A ginger cat sleeps on a windowsill in the warm afternoon sun. " * 8
    code, out, err = vip_in_process(capsys, monkeypatch, *_caption_with_stub(stub, photo), "--json")
    assert code == 0
    (record,) = json_lines(out)
    assert set(record["truncated"]) >= {"center", "surrounding"}
    assert "Center prompt cut to 77 tokens at a sentence boundary" in err
    assert record["center"].endswith("sun.")


def test_help_shows_examples(capsys, monkeypatch):
    code, out, _ = vip_in_process(capsys, monkeypatch, "caption", "--help")
    assert code == 0
    for text in ("--captioner-url", "--for-training", "--jsonl", "vip caption data/train --for-training"):
        assert text in out
