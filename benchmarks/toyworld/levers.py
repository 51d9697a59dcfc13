"""Speed levers that change the output, judged on the toy world (a lever may cost at most 2 points).

    python benchmarks/toyworld/run.py --zero-shot-only --out RUN          # the world and the base model, once
    python benchmarks/toyworld/levers.py --out RUN --images 480 \\
        --row "4 steps: --steps 4" \\
        --row "4 steps, DeepCache 2: --steps 4 --deep-cache 2"

The judged row is C-T-S zero-shot with region prompts (the toy world's guidance and seed; the same pictures and seeds
for every row). Each row is `vip eval` with its extra options; the first row is the reference, and every other row
is compared with it: surrounding-colour accuracy with its 95% interval, and the paired difference (row - reference)
with its interval. A lever may go into a default when it stays within 2 points of the reference. Finished rows are
reused (delete ``RUN/levers/NAME`` to run one again). Writes ``RUN/levers/results.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402
import world  # noqa: E402


def parse_row(spec: str) -> tuple[str, list[str]]:
    name, _, options = spec.partition(":")
    name = name.strip()
    if not name:
        raise SystemExit(f"levers: no row name in '{spec}'")
    return name, shlex.split(options)


def folder_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a toy-world run folder with its world and base model")
    parser.add_argument(
        "--row", action="append", default=[], help="NAME: vip eval options (repeatable; the first is the reference)"
    )
    parser.add_argument("--images", type=int, default=480, help="test pictures scored (default 480)")
    args = parser.parse_args(argv)
    if len(args.row) < 2:
        parser.error("give at least two --row: the reference, then a lever")
    out = Path(args.out).resolve()
    base = out / "base"
    if not (base / "toyworld_base.json").is_file():
        raise SystemExit(f"levers: {out} has no base model: run `run.py --zero-shot-only --out {out}` first")
    from tiny_models import save_random_inception

    save_random_inception(out / "inception-random.pth")
    regions = out / "prompts" / "regions.jsonl"
    asked = world.read_scenes(regions)
    rows = []
    for spec in args.row:
        name, options = parse_row(spec)
        began = time.perf_counter()
        folder = run.eval_into(
            out / "levers" / folder_name(name),
            out,
            base,
            [regions],
            run.FULL,
            out / "inception-random.pth",
            "--limit",
            str(args.images),
            *options,
        )
        scores = run.score_setting(folder, "regions", asked, out)
        rows.append(
            {"name": name, "options": " ".join(options), "seconds": round(time.perf_counter() - began, 1), **scores}
        )
        run.log(f"{name}: {scores['colour']:.1%}")

    reference = rows[0]
    lines = [
        f"C-T-S zero-shot, region prompts, {reference['images']} test pictures, seed {run.SEED}; every row is `vip "
        "eval`"
        f" with the toy world's settings (--steps {run.FULL.eval_steps} --guidance {run.GUIDANCE}) and the options "
        "shown.",
        "",
        "| row | vip eval options | surrounding colour (95% interval) | texture | known center intact | row - "
        "reference (95% interval) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["colour_ci"]
        if row is reference:
            versus = "(reference)"
        else:
            diff = run.paired_difference(row["colour_per_image"], reference["colour_per_image"])
            verdict = "within 2 points" if diff["difference"] >= -0.02 else "more than 2 points below"
            versus = f"{run.difference_cell(diff)}: {verdict}"
        lines.append(
            f"| {row['name']} | `{row['options']}` | {row['colour']:.1%} ({low:.1%}-{high:.1%}) | "
            f"{row['texture']:.1%} | {row['center_intact']:.0%} | {versus} |"
        )
    text = "\n".join(lines)
    (out / "levers").mkdir(parents=True, exist_ok=True)
    (out / "levers" / "results.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
