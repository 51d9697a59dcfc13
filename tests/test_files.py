"""The shared file helpers: atomic writes, image discovery, image keys, JSON Lines with a torn tail."""

from __future__ import annotations

import os
import stat

import pytest

from vipcli_model.errors import InputError
from vipcli_model.files import atomic_write, atomic_write_text, find_images, image_key, read_jsonl


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path, durable):
    target = tmp_path / "out.json"
    target.write_text("old")
    atomic_write_text(target, "new ✓", durable=durable)
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def half_then_fail(stream):
        stream.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "no-such-folder" / "x.txt", "x")


def test_find_images_is_recursive_sorted_and_skips_hidden(tmp_path):
    for name in ("b.PNG", "a.jpg", "sub/c.webp", "notes.txt", ".hidden.png", ".cache/d.png", "sub/.e.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == ["a.jpg", "b.PNG", "sub/c.webp"]


def test_image_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "sub").mkdir(parents=True)
    assert image_key(tmp_path / "data" / "sub" / "a.png", tmp_path / "data") == "sub/a.png"
    assert image_key("data/sub/a.png", "data") == "sub/a.png"  # relative to the working directory
    assert image_key("./sub/a.png") == "sub/a.png"
    assert image_key("sub/a.png", suffix=False) == image_key("sub/a.jpg", suffix=False) == "sub/a"


def test_read_jsonl_skips_a_torn_last_line_only(tmp_path, caplog):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n{"a": ')
    assert read_jsonl(path) == [(1, {"a": 1}), (3, {"a": 2})]
    assert "incomplete last line" in caplog.text
    path.write_bytes(b'{"a": 1}\n{"a": \n{"a": 2}\n')
    with pytest.raises(InputError, match=r"x.jsonl, line 2: not a JSON record .*fix or delete that line"):
        read_jsonl(path)

    def check(record):
        if "a" not in record:
            raise ValueError('no "a"')

    path.write_bytes(b'{"b": 1}\n{"a": 2}\n')
    with pytest.raises(InputError, match=r'line 1: not a thing \(no "a"\)'):
        read_jsonl(path, check, what="a thing")
    path.write_bytes('{"a": "caf\u00e9 \u2028 ok"}\n'.encode("utf-8"))  # U+2028 is not a line break in JSON Lines
    assert read_jsonl(path) == [(1, {"a": "caf\u00e9 \u2028 ok"})]
