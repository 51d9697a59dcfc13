"""`--dask`: a batch on a real local Dask cluster, started as users start one (`dask scheduler`, two `dask worker`
processes), every process on 127.0.0.1 with no dashboard; and the per-input step a user's own pipeline maps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vipcli_model.config import ExpansionConfig, GenerationConfig, ModelConfig, PromptConfig
from vipcli_model.distributed import plan_tasks, process_task, run_on_dask
from vipcli_model.errors import InputError
from vipcli_model.outpainting.run import OutpaintJob

REPO = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).with_name("dask")
LOOPBACK = "127.0.0.1"


@dataclass
class Cluster:
    address: str
    workers: list[subprocess.Popen] = field(default_factory=list)
    started: list[subprocess.Popen] = field(default_factory=list)  # every process, stopped by id at the end


def _photos(folder: Path, count: int, broken: bool = False) -> Path:
    folder.mkdir(parents=True)
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{index}.png")
    if broken:
        (folder / "broken.png").write_bytes(b"not a png")
    return folder


def _job(model: Path, output, **changes) -> OutpaintJob:
    job = OutpaintJob(
        expansion=ExpansionConfig(ratio="1.5x"),
        prompts=PromptConfig(caption=False),
        generation=GenerationConfig(steps=2, seed=1),
        model=ModelConfig(model=str(model), device="cpu"),
        output=output,
    )
    return replace(job, **changes)


def _models_kept() -> list[bool]:
    """On a worker: for each model setting it served, whether it holds the loaded outpainter."""
    from vipcli_model.distributed import _WORKER_MODELS

    return [models.outpainter is not None for _, models in _WORKER_MODELS.values()]


def test_without_dask_installed_it_is_one_line_saying_what_to_install(tmp_path, vip_main, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed: ImportError
    photos = _photos(tmp_path / "photos", 1)
    result = vip_main("outpaint", photos, "--ratio", "2x", "--preview", "--dask", "tcp://127.0.0.1:1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("needs Dask: pip install 'vip-outpaint[dask]'")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1; stopped by process id afterwards."""
    pytest.importorskip("distributed")
    import cloudpickle
    from distributed import Client

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests' modules
    folder = tmp_path_factory.mktemp("cluster")
    caches = tmp_path_factory.mktemp("worker-caches")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(caches / "hf"),
        "VIP_CACHE_DIR": str(caches / "vip"),
        "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
    }
    scheduler_file = folder / "scheduler.json"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "cwd": folder}
    cluster = Cluster(address="")
    scheduler_args = ["--host", LOOPBACK, "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)]
    cluster.started.append(subprocess.Popen([str(DASK), "scheduler", *scheduler_args], **quiet))
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.2)  # written whole
        cluster.address = json.loads(scheduler_file.read_text())["address"]
        assert cluster.address.startswith(f"tcp://{LOOPBACK}:")
        for name in ("one", "two"):  # as two machines would run them
            worker_args = ["--host", LOOPBACK, "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--no-nanny"]
            worker = subprocess.Popen([str(DASK), "worker", cluster.address, *worker_args, "--name", name], **quiet)
            cluster.workers.append(worker)
            cluster.started.append(worker)
        with Client(cluster.address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            assert all(address.startswith(f"tcp://{LOOPBACK}:") for address in client.scheduler_info()["workers"])
        yield cluster
    finally:
        for process in reversed(cluster.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in cluster.started:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_folder_on_two_workers_writes_every_output_once(cluster, tiny_model_dir, tmp_path, vip_main):
    photos, out = _photos(tmp_path / "photos", 8, broken=True), tmp_path / "out"
    args = ["outpaint", photos, "-o", out, "--model", tiny_model_dir, "--device", "cpu", "--steps", "2", "--seed", "1"]
    result = vip_main(*args, "--ratio", "1.5x", "--no-caption", "--json", "--dask", cluster.address)
    assert result.returncode == 3, result.stderr  # the broken file's code: an unreadable input
    assert f"failed {photos / 'broken.png'}" in result.stderr
    written = [json.loads(line)["path"] for line in result.stdout.splitlines()]
    expected = sorted(str(out / f"p{index}_outpaint.png") for index in range(8))
    assert sorted(written) == expected and sorted(str(path) for path in out.iterdir()) == expected
    # the same job as one local run: the same pixels (same seed, same model, the worker's CPU)
    with Image.open(out / "p0_outpaint.png") as image:
        assert image.size == (96, 72)
        assert json.loads(image.text["vip"])["job"]["steps"] == 2

    from distributed import Client

    with Client(cluster.address) as client:  # each worker process loaded the model once, and kept it
        loaded = client.run(_models_kept)
    assert all(kept in ([], [True]) for kept in loaded.values()) and [True] in loaded.values()

    again = vip_main(*args, "--ratio", "1.5x", "--no-caption", "--skip-existing", "--dask", cluster.address)
    assert (
        again.returncode == 3 and "0 written, 8 input(s) skipped (done before), 1 of 9 input(s) failed" in again.stderr
    )


def test_the_per_input_step_in_a_users_own_dask_code(cluster, tiny_model_dir, tmp_path):
    from distributed import Client

    photos, out = _photos(tmp_path / "photos", 3), tmp_path / "out"
    job = _job(tiny_model_dir, out)
    # the docs' example: plan the tasks, map the per-input step over them, gather what happened to each input
    tasks, missing = plan_tasks([photos], job)
    with Client(cluster.address) as client:
        items = client.gather(client.map(process_task, tasks))
    assert not missing and [item.status for item in items] == ["written"] * 3
    assert sorted(path.name for path in out.iterdir()) == [f"p{index}_outpaint.png" for index in range(3)]


def test_urls_are_read_and_written_through_fsspec(tiny_model_dir, tmp_path):
    fsspec = pytest.importorskip("fsspec")

    memory = fsspec.filesystem("memory")
    for path in sorted(_photos(tmp_path / "photos", 2).iterdir()):
        memory.pipe(f"/vip-test/in/sub/{path.name}", path.read_bytes())
    memory.pipe("/vip-test/in/.hidden/p9.png", b"never read")
    try:
        tasks, missing = plan_tasks(
            ["memory://vip-test/in", "memory://vip-test/none"], _job(tiny_model_dir, "memory://vip-test/out")
        )
        assert missing == [("memory://vip-test/none", "no such file or folder")]
        assert [task.destinations for task in tasks] == [
            ("memory://vip-test/out/sub/p0_outpaint.png",),
            ("memory://vip-test/out/sub/p1_outpaint.png",),
        ]
        item = process_task(tasks[0])
        assert item.status == "written" and item.written[0].path == "memory://vip-test/out/sub/p0_outpaint.png"
        with Image.open(memory.open("/vip-test/out/sub/p0_outpaint.png")) as image:
            assert image.size == (96, 72)
        memory.rm("/vip-test/in/sub/p1.png")  # gone since the run was planned: that input's failure, by its URL
        with pytest.raises(InputError, match=r"^memory://+vip-test/in/sub/p1\.png: cannot be read"):
            process_task(tasks[1])
    finally:
        memory.rm("/vip-test", recursive=True)


def test_a_worker_killed_mid_run_and_the_run_still_completes(cluster, tiny_model_dir, tmp_path):
    from distributed import Client

    photos, out = _photos(tmp_path / "photos", 8), tmp_path / "out"
    with Client(cluster.address) as client:
        pids = client.run(os.getpid)
        killed: list[int] = []

        def kill_one_busy_worker(item, done, total):
            if killed or done < 2:
                return
            busy = [address for address, keys in client.processing().items() if keys]
            if busy:  # a worker with tasks in hand: they must run again elsewhere
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(pids[busy[0]])

        run = run_on_dask([photos], _job(tiny_model_dir, out), scheduler=client, on_item=kill_one_busy_worker)
    assert killed, "no worker was busy when the run was half done"
    assert not run.failures and [item.status for item in run.items] == ["written"] * 8
    written = sorted(str(file.path) for file in run.written)
    assert written == sorted(str(out / f"p{index}_outpaint.png") for index in range(8))
    # a worker killed while saving leaves at most a hidden temporary file, never a torn result
    assert sorted(str(path) for path in out.iterdir() if not path.name.startswith(".")) == written


def test_captions_on_two_workers_go_to_one_jsonl_and_resume(cluster, tmp_path_factory, tmp_path, vip_main):
    from tiny_vlm import shared_tiny_vlm

    captioner = shared_tiny_vlm(tmp_path_factory)
    photos, jsonl = _photos(tmp_path / "photos", 4), tmp_path / "captions.jsonl"
    args = ["caption", photos, "--captioner", captioner, "--jsonl", jsonl, "--no-cache", "--dask", cluster.address]
    first = vip_main(*args)
    assert first.returncode == 0, first.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted(record["image"] for record in records) == [f"p{index}.png" for index in range(4)]
    assert all(record["total"] and record["model"] == str(captioner.resolve()) for record in records)
    again = vip_main(*args)
    assert again.returncode == 0 and "4 skipped" in again.stderr
    assert jsonl.read_text().count("\n") == 4


def test_an_edit_task_run_again_after_its_worker_died_keeps_what_it_wrote(tmp_path_factory, tmp_path):
    from tiny_models import save_tiny_ip2p_model

    from vipcli_model.editing.editor import EditConfig
    from vipcli_model.editing.run import EditJob

    model = save_tiny_ip2p_model(tmp_path_factory.mktemp("tiny-ip2p"))
    job = EditJob(
        edit=EditConfig(instruction="make it red", steps=2, seed=3),
        model=ModelConfig(model=str(model), device="cpu"),
        output=str(tmp_path / "out"),
    )
    tasks, _ = plan_tasks([_photos(tmp_path / "photos", 1)], job)
    first = process_task(tasks[0])
    written = tmp_path / "out" / "p0_edit.png"
    assert first.status == "written" and first.written[0].path == written
    state = (written.read_bytes(), written.stat().st_mtime_ns)
    # run_on_dask sends tasks resuming: a second try (its worker died after the write) finds the file, keeps it
    again = process_task(replace(tasks[0], job=replace(job, skip_existing=True)))
    assert again.status == "written" and again.written[0].metadata["job"]["instruction"] == "make it red"
    assert (written.read_bytes(), written.stat().st_mtime_ns) == state


def test_the_runs_note_and_warning_come_back_from_the_workers_as_a_local_run_says_them(
    cluster, tiny_model_dir, tmp_path, vip_main
):
    photos = _photos(tmp_path / "photos", 2)
    args = ["outpaint", photos, "--model", tiny_model_dir, "--device", "cpu", "--steps", "1", "--seed", "1"]
    args += ["--ratio", "3x"]  # a canvas the detail pass would refine, on CPU workers: not by default
    local = vip_main(*args, "-o", tmp_path / "local")
    on_dask = vip_main(*args, "-o", tmp_path / "dask", "--dask", cluster.address)
    assert local.returncode == 0 and on_dask.returncode == 0, on_dask.stderr
    for kind, says in (("note:", "the detail pass"), ("warning:", "no captioner")):  # no captioner offline
        lines = [[line for line in result.stderr.splitlines() if line.startswith(kind)] for result in (local, on_dask)]
        assert len(lines[0]) == 1 and says in lines[0][0], local.stderr
        assert lines[1] == lines[0], on_dask.stderr  # the same line, once for the run (both workers missed it)
