"""Peak memory of `vip outpaint` on a large input: a 10000x10000 1-bit PNG (about 32 KB on
disk, within the 100-megapixel limit) outpainted with an 8-pixel margin.

    python benchmarks/bench_large_input.py               # --preview and a full run with a tiny model
    python benchmarks/bench_large_input.py --size 4000   # a smaller picture, quicker

Each measurement runs `vip` in its own subprocess and reads its peak resident memory
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``, so the figure is that run's alone). The full
run uses the tests' tiny 9-channel inpainting model (random weights, 32 px), so what is measured is
vip's own image buffers (load, canvas, mask, paste-back, save), not the diffusion model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def peak_of(args: list[str]) -> tuple[int, float]:
    """(exit code, peak RSS in MB) of one `vip` run in a fresh subprocess."""
    code = (
        "import resource, subprocess, sys, json;"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "sys.stderr.write(r.stderr[-400:]);"
        "print(json.dumps([r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))"
    )
    vip = [sys.executable, "-c", "from vipcli.main import main; main()", *args]
    done = subprocess.run(
        [sys.executable, "-c", code, *vip],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(done.stderr)
    returncode, peak = json.loads(done.stdout.strip().splitlines()[-1])
    if returncode != 0:
        print(done.stderr, file=sys.stderr)
    return returncode, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10000, help="side of the square 1-bit picture")
    parser.add_argument("--margin", type=int, default=8)
    parser.add_argument("--no-model", action="store_true", help="only the --preview run")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        source = folder / "big.png"
        Image.new("1", (options.size, options.size), 1).save(source)
        megapixels = options.size * options.size / 1e6
        print(
            f"input: {options.size}x{options.size} 1-bit PNG, {source.stat().st_size / 1024:.0f} KB, "
            f"{megapixels:.0f} MP; margin {options.margin} px each side"
        )
        margins = [f"--{side}" for side in ("left", "right", "top", "bottom") for _ in (0,)]
        geometry = [item for side in margins for item in (side, str(options.margin))]
        code, peak = peak_of(["outpaint", str(source), *geometry, "--preview", "-o", str(folder / "preview")])
        print(f"--preview: exit {code}, peak RSS {peak:,.0f} MB")
        if options.no_model:
            return
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_models import save_tiny_inpaint_model

        model = save_tiny_inpaint_model(folder / "tiny-model")
        code, peak = peak_of(
            [
                "outpaint",
                str(source),
                *geometry,
                "--model",
                str(model),
                "--steps",
                "1",
                "--no-caption",
                "--seed",
                "0",
                "--device",
                "cpu",
                "-o",
                str(folder / "out"),
            ]
        )
        print(f"full run (tiny model, 1 step): exit {code}, peak RSS {peak:,.0f} MB")


if __name__ == "__main__":
    main()
