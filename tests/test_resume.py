"""Resuming a stopped batch (`--skip-existing`): what was finished is kept untouched, the rest is made, and a file
made with other settings is refused by name. The stop is a real SIGKILL of a `vip outpaint` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vipcli_model.errors import OutputError
from vipcli_model.images.outputs import outputs_finished


def _photos(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{index}.png")
    return folder


def _state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(folder.glob("*.png"))}


def test_a_batch_killed_mid_run_resumes_keeping_what_was_finished(tmp_path, tiny_model_dir, vip_main):
    photos, out = _photos(tmp_path / "photos", 8), tmp_path / "out"
    args = ["outpaint", str(photos), "-o", str(out), "--model", str(tiny_model_dir), "--steps", "2", "--seed", "1"]
    args += ["--no-caption", "--ratio", "1.5x", "--skip-existing"]
    command = [sys.executable, "-c", "from vipcli.main import main; main()", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen([*command, "--json"], env=env, text=True, **streams)
    try:
        for _ in range(3):  # Rich flushes each line: three outputs are on disk, the fourth is being made
            assert json.loads(process.stdout.readline())["path"]
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    before = _state(out)
    assert 3 <= len(before) < 8, "the kill must land mid-run for this test to mean anything"

    resumed = vip_main(*args)  # the same command again, in this process (the killed one was a real process)
    assert resumed.returncode == 0, resumed.stderr
    after = _state(out)
    assert sorted(after) == [f"p{index}_outpaint.png" for index in range(8)]
    assert {name: after[name] for name in before} == before  # same bytes, same mtime: not rewritten
    assert f"done: {8 - len(before)} file(s) written, {len(before)} input(s) skipped" in resumed.stderr
    for path in out.glob("*.png"):  # every file under its final name is whole
        with Image.open(path) as image:
            image.verify()


def test_an_output_made_with_other_settings_is_refused_by_name(tmp_path, vip_main):
    photos, out = _photos(tmp_path / "photos", 2), tmp_path / "out"
    first = vip_main("outpaint", photos, "-o", out, "--ratio", "1.5x", "--preview", "--skip-existing")
    assert first.returncode == 0, first.stderr
    kept = _state(out)
    again = vip_main("outpaint", photos, "-o", out, "--ratio", "1.5x", "--preview", "--skip-existing")
    assert again.returncode == 0 and "0 file(s) written, 2 input(s) skipped" in again.stderr
    other = vip_main("outpaint", photos, "-o", out, "--ratio", "2x", "--preview", "--skip-existing")
    assert other.returncode == OutputError.exit_code
    assert "made with other settings (--ratio '1.5x', now '2x')" in other.stderr and "--overwrite" in other.stderr
    assert _state(out) == kept
    replaced = vip_main("outpaint", photos, "-o", out, "--ratio", "2x", "--preview", "--skip-existing", "--overwrite")
    assert replaced.returncode == 0 and "4 file(s) written" in replaced.stderr


def test_a_torn_or_foreign_file_is_never_taken_for_a_finished_output(tmp_path):
    job = {"steps": 4, "ratio": "2x"}
    whole = tmp_path / "whole.png"
    from vipcli_model.images.io import save_image

    save_image(Image.new("RGB", (64, 64), "red"), whole, metadata={"job": job})
    assert outputs_finished([whole], job)
    assert not outputs_finished([whole, tmp_path / "missing.png"], job)  # half of an input's results: redo it
    torn = tmp_path / "torn.png"
    torn.write_bytes(whole.read_bytes()[:-40])  # no IEND: what a non-atomic writer killed mid-file leaves
    foreign = tmp_path / "foreign.png"
    Image.new("RGB", (8, 8)).save(foreign)
    for path, reason in ((torn, "cannot be read as a finished image"), (foreign, "records no vip job")):
        try:
            outputs_finished([path], job)
        except OutputError as exc:
            assert reason in str(exc) and "`overwrite=True`" in str(exc)
        else:
            raise AssertionError(f"{path.name} was taken for a finished output")
        assert not outputs_finished([path], job, overwrite=True)
