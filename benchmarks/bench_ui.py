"""`vip ui` keeps the model warm: time from Run to result, first run against later runs and against `vip outpaint`.

    python benchmarks/bench_ui.py                 # 3 runs in the app, then the same `vip outpaint` command (2 steps)
    python benchmarks/bench_ui.py --steps 4 --runs 4

The full-size SD-1.5 inpainting architecture with random weights (``bench_outpaint.build_model``: speed does not
depend on weight values), loaded through `--model DIR` as a user's model is. In this process the app is served on
127.0.0.1 and called through `gradio_client` (the route the page's Run button takes: the queue, the same function);
each call is timed from the request to the result. The first run loads the model; later runs find it loaded. Then the
same settings as one `vip outpaint` command in a subprocess (interpreter start-up, imports, loading, the run, saving),
timed the same way, after the app freed its model. Every run outpaints the same 256x256 photo to 1.5x with the same seed
and steps, guidance off (one UNet pass a step), so the model's work is the same in each.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="denoising steps of every run")
    parser.add_argument("--runs", type=int, default=3, help="runs in the app (the first loads the model)")
    parser.add_argument("--workdir", default="/tmp/vip-bench")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    # built in a subprocess: its memory is given back before the app loads the model
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from bench_outpaint import build_model; from pathlib import Path; build_model(Path({str(work)!r}))",
        ],
        cwd=REPO / "benchmarks",
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])},
        check=True,
    )
    model = str(work / "model")
    import skimage.data
    from PIL import Image

    photo = work / "photo256.png"
    Image.fromarray(skimage.data.astronaut()).resize((256, 256), Image.Resampling.LANCZOS).save(photo)
    settings = {"ratio": "1.5x", "center": "a woman in a space suit", "surrounding": "a space station", "seed": 1}
    settings.update(steps=args.steps, guidance="1", feather=0)

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="vip-ui-bench-")
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    from gradio_client import Client, handle_file

    from vipcli.ui.app import build_app
    from vipcli_model.outpainting.session import OutpaintSession

    output = Path(tempfile.mkdtemp(prefix="vip-ui-bench-out-"))
    session = OutpaintSession(output)
    app = build_app(session, model=model, device="cpu")
    port = _free_port()
    app.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, allowed_paths=[str(output)]
    )
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    app_times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        status = client.predict(photo=handle_file(str(photo)), model=model, **settings, api_name="/outpaint")[3]
        app_times.append(time.perf_counter() - started)
        print(f"app run {len(app_times)}: {app_times[-1]:.1f} s", file=sys.stderr, flush=True)
        if not status.startswith("Done"):
            raise SystemExit(f"the app's run failed: {status}")
    loads = session.loads
    app.close()
    session.release()

    command = [sys.executable, "-c", "from vipcli.main import main; main()", "outpaint", str(photo), "--ratio", "1.5x"]
    command += ["--center", settings["center"], "--surrounding", settings["surrounding"], "--seed", "1"]
    command += ["--steps", str(args.steps), "--guidance", "1", "--feather", "0", "--model", model, "--device", "cpu"]
    command += ["-o", str(output / "cli")]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    cli_s = time.perf_counter() - started
    print(f"vip outpaint: {cli_s:.1f} s", file=sys.stderr, flush=True)

    later = sorted(app_times[1:])[len(app_times[1:]) // 2] if len(app_times) > 1 else float("nan")
    print(
        f"SD-1.5 inpainting architecture (random weights), 256 px photo to 1.5x, {args.steps} steps, guidance off, "
        f"cpu; model loads in the app: {loads}"
    )
    print("| run | seconds | x of `vip outpaint` |")
    print("|---|---|---|")
    for index, seconds in enumerate(app_times, 1):
        label = "app, first run (loads the model)" if index == 1 else f"app, run {index}"
        print(f"| {label} | {seconds:.1f} | x{seconds / cli_s:.3f} |")
    print(f"| `vip outpaint`, the same settings | {cli_s:.1f} | x1.000 |")
    print(f"later runs (median) / first run: x{later / app_times[0]:.3f}")


if __name__ == "__main__":
    main()
