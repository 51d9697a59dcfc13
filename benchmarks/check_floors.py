"""Install the lowest versions pyproject.toml allows in a throwaway venv and run a few tests on them.

    python benchmarks/check_floors.py                    # ~10-15 min: venv, downloads, then the tests
    python benchmarks/check_floors.py --torch-floor      # torch at its floor too (a large download)

Each `name>=X` of the project's dependencies is installed as `name==X`, except torch, which stays at this
interpreter's version unless `--torch-floor` (a floor torch may not exist for this Python or CPU), with the
test extras unpinned, in one pip call so the resolver proves the floors install together. The tests are the ones
that exercise what the floors were chosen for: the stand-in hub through huggingface_hub (errors, caches,
downloads, offline), model loading through diffusers (dtype keyword, single-file checkpoints, memory plans), the
LoRA fuse through diffusers and PEFT, and a tiny captioner through transformers. Not part of the default suite.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]

TESTS = [
    "tests/test_hub.py",
    "tests/test_lora_fuse.py",
    "tests/test_single_file.py",
    "tests/test_device.py",
    "tests/test_captioner.py::test_tiny_vlm_loads_like_a_real_model_and_captions_photos",
    "tests/test_fast_preset.py::test_fast_preset_fuses_the_lora_and_records_it",
]


def floors() -> dict[str, str]:
    """``name -> lowest version`` for every dependency of the project that has a ``>=`` floor."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", requirement)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/vip-floors", help="where the venv goes (reused when it exists)")
    parser.add_argument("--torch-floor", action="store_true", help="install torch's floor, not this torch")
    parser.add_argument("--tests", nargs="*", default=TESTS, help="pytest node ids to run on the floors")
    args = parser.parse_args()
    start = time.perf_counter()
    venv = Path(args.workdir) / "venv"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pins = floors()
    if not args.torch_floor:
        import torch

        pins["torch"] = torch.__version__.split("+")[0]
    test_extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    wanted = [f"{name}=={version}" for name, version in pins.items()] + list(test_extras)
    print("installing:", " ".join(wanted), flush=True)
    installed = subprocess.run([python, "-m", "pip", "install", "-q", *wanted], capture_output=True, text=True)
    if installed.returncode != 0:
        errors = [line for line in installed.stderr.splitlines() if not line.startswith("WARNING: Location")]
        raise SystemExit("the floors do not install together:\n" + "\n".join(errors[-40:]))
    versions = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    shown = {line.split("==")[0].lower().replace("_", "-"): line for line in versions.splitlines()}
    print("installed:", ", ".join(shown.get(name.lower().replace("_", "-"), name) for name in pins), flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    tests = subprocess.run([python, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args.tests], cwd=REPO, env=env)
    print(f"floors {'pass' if tests.returncode == 0 else 'FAIL'} ({time.perf_counter() - start:.0f} s)")
    raise SystemExit(tests.returncode)


if __name__ == "__main__":
    main()
