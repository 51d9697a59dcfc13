"""A folder outpainted by the plain local run and on a local Dask cluster of 1 and 2 workers: throughput and the fixed
costs the cluster adds, on the full-size SD-1.5 inpainting architecture.

    python benchmarks/bench_dask.py                       # 4 photos, 2 steps (about 10 min on 2 CPU cores)
    python benchmarks/bench_dask.py --images 8 --steps 4

Random weights (speed does not depend on weight values), saved as a diffusers folder and loaded through a model folder
as a user's model is (bench_outpaint.build_model). The photos are small (192x128, 1.5x: a 288x192 canvas), but SD-1.5
generates at its native 512 px, so each image costs what a full-size one costs in the UNet. Side by side, one run:

  1. local: one process (torch on every core) loads the model, then ``outpaint_images`` does the folder;
  2. Dask, 1 worker: ``dask scheduler`` and one ``dask worker --nthreads 1`` (torch on every core);
  3. Dask, 2 workers: two ``dask worker --nthreads 1`` processes, each with torch on half the cores.

Fixed costs: the cluster's start-up (processes started until every worker has registered), and the model load on each
worker (torch and diffusers imported, the model read; measured by loading it into the worker's cache before the run,
as the first input would). Throughput: photos per minute over the run itself, models loaded. Every process is on
127.0.0.1, without dashboards, and is stopped by its process id at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))
DASK = Path(sys.executable).with_name("dask")

LOCAL_SCRIPT = r"""
import json, sys, time
start = time.perf_counter()
from vipcli_model.outpainting.run import OutpaintModels, outpaint_images
sys.path.insert(0, sys.argv[1])
from bench_dask import job_for
job = job_for(sys.argv[2], sys.argv[3], int(sys.argv[4]))
imported = time.perf_counter()
outpainter = OutpaintModels(job).get_outpainter()
loaded = time.perf_counter()
run = outpaint_images([sys.argv[5]], job, outpainter=outpainter)
done = time.perf_counter()
assert not run.failures, [str(item.error) for item in run.failures]
print(json.dumps({"import_s": imported - start, "load_s": loaded - imported, "run_s": done - loaded,
                  "images": len(run.written)}))
"""


def job_for(model: str, output: str, steps: int):
    from vipcli_model.config import DetailConfig, ExpansionConfig, GenerationConfig, ModelConfig, PromptConfig
    from vipcli_model.outpainting.run import OutpaintJob

    return OutpaintJob(
        expansion=ExpansionConfig(ratio="1.5x"),
        prompts=PromptConfig(center="a photo", surrounding="more of it"),
        generation=GenerationConfig(steps=steps, seed=0),
        detail=DetailConfig(mode="off"),
        model=ModelConfig(model=model, device="cpu"),
        output=output,
    )


def _preload(model: str, output: str, steps: int) -> float:
    """On a worker: load the model into its cache, as its first input would; the seconds it took."""
    from vipcli_model.distributed import worker_models

    start = time.perf_counter()
    worker_models(job_for(model, output, steps))[1].get_outpainter()
    return time.perf_counter() - start


def photos(folder: Path, count: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 256, (128, 192, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{index}.png")
    return folder


def local(work: Path, model: str, folder: Path, steps: int, cores: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(cores), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    script = [sys.executable, "-c", LOCAL_SCRIPT, str(REPO / "benchmarks"), model, str(work / "out-local")]
    result = subprocess.run([*script, str(steps), str(folder)], capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def on_dask(work: Path, model: str, folder: Path, steps: int, workers: int, cores: int) -> dict:
    import cloudpickle
    from distributed import Client

    from vipcli_model.distributed import run_on_dask
    from vipcli_model.outpainting.run import check_job

    if __name__ != "__main__":  # workers run this file's _preload (a script's functions travel by value anyway)
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    threads = str(max(1, cores // workers))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    scheduler_file = work / f"scheduler-{workers}.json"
    started = time.perf_counter()
    args = ["--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)]
    processes = [subprocess.Popen([str(DASK), "scheduler", *args], **quiet)]
    try:
        while not scheduler_file.exists():
            time.sleep(0.1)
        time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for index in range(workers):
            args = ["--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard", "--no-nanny", "--name", f"w{index}"]
            processes.append(subprocess.Popen([str(DASK), "worker", address, *args], **quiet))
        output = str(work / f"out-dask-{workers}")
        job = job_for(model, output, steps)
        check_job(job)  # the client's own imports, out of the timed run
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=300)
            startup = time.perf_counter() - started
            loads = client.run(_preload, model, output, steps)
            begin = time.perf_counter()
            run = run_on_dask([folder], job, scheduler=client)
            run_s = time.perf_counter() - begin
        assert not run.failures, [str(item.error) for item in run.failures]
        return {"startup_s": startup, "load_s": sorted(loads.values()), "run_s": run_s, "images": len(run.written)}
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vip-bench-dask")
    args = parser.parse_args()
    from bench_outpaint import build_model

    cores = os.cpu_count() or 1
    args.work.mkdir(parents=True, exist_ok=True)
    build_model(args.work / "sd15")
    model = str(args.work / "sd15" / "model")
    for old in [*args.work.glob("out-*"), args.work / "photos"]:  # photos too: a folder of exactly --images
        subprocess.run(["rm", "-rf", str(old)], check=True)
    folder = photos(args.work / "photos", args.images)

    results = {"local": local(args.work, model, folder, args.steps, cores)}
    print(json.dumps({"local": results["local"]}), flush=True)  # each as it comes: a long run's figures survive
    for workers in (1, 2):
        results[f"dask-{workers}"] = on_dask(args.work, model, folder, args.steps, workers, cores)
        print(json.dumps({f"dask-{workers}": results[f"dask-{workers}"]}), flush=True)
    print(f"{args.images} photos, SD-1.5 inpainting architecture (random weights), {args.steps} steps, {cores} cores:")
    reference = results["local"]["images"] / results["local"]["run_s"] * 60
    for name, result in results.items():
        throughput = result["images"] / result["run_s"] * 60
        fixed = (
            f"import {result['import_s']:.1f} s, model load {result['load_s']:.1f} s"
            if name == "local"
            else f"cluster start-up {result['startup_s']:.1f} s, model load per worker "
            + ", ".join(f"{seconds:.1f} s" for seconds in result["load_s"])
        )
        print(
            f"  {name:<8} {result['run_s']:6.1f} s for {result['images']} photos: {throughput:5.2f} photos/min "
            f"(x{throughput / reference:.2f} of local); {fixed}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
