"""A toy-world base with a longer-trained UNet and text encoder, reusing a run's autoencoder
(results-training-recipes.md, section 6).

    python benchmarks/toyworld/better_base.py --run RUN --unet-steps 4000 --out RUN2/base
    # then RUN2 = RUN's train/, test/, prompts/ and inception-random.pth with this base:
    python benchmarks/toyworld/sweep.py --out RUN2 --images 480 --variant defaults

The autoencoder of ``RUN/base`` is reused as is (run.py trains it the same way, with the same seed); the UNet and
text encoder are trained from scratch with base.py's recipe for ``--unet-steps`` steps on ``RUN/train``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests"))

import base  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a toy-world run folder whose base autoencoder is reused")
    parser.add_argument("--unet-steps", type=int, required=True, help="training steps of the UNet and text encoder")
    parser.add_argument("--out", required=True, help="the new base model folder")
    args = parser.parse_args()
    run = Path(args.run).resolve()
    summary = base.make_base_model(
        run / "train",
        Path(args.out).resolve(),
        vae_steps=0,
        unet_steps=args.unet_steps,
        vae_from=run / "base",
        log=lambda line: print(line, flush=True),
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
