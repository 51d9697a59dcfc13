"""Training-recipe sweep on the toy world: which `vip train` settings make the C-T-S adapter beat zero-shot?

    python benchmarks/toyworld/run.py --zero-shot-only --out RUN       # the world and the base model, once
    python benchmarks/toyworld/sweep.py --out RUN --images 192 \\
        --variant defaults \\
        --variant "gate-lr-1e-4: gate_lr = 1e-4" \\
        --variant "rank-4: rank = 4; lr = 3e-4"

Every variant is `vip train` with its defaults (the settings a user gets), the toy world's resolution and seed,
and the variant's TOML overrides (``key = value`` separated by ``;``); then `vip eval` of the first ``--images``
test pictures with region prompts (and, with ``--swap``, the keyword swap). Each is scored against C-T-S zero-shot on
the same pictures and seeds: the accuracy with its 95% interval and the paired difference with its interval.
Finished variants are reused (delete ``RUN/sweep/NAME`` to run one again). Writes ``RUN/sweep/results.md``/``.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402
import world  # noqa: E402


def parse_variant(spec: str) -> tuple[str, str]:
    name, _, overrides = spec.partition(":")
    name = name.strip()
    if not name or "/" in name:
        raise SystemExit(f"sweep: bad variant name in '{spec}'")
    lines = [part.strip() for part in overrides.split(";") if part.strip()]
    return name, "".join(line + "\n" for line in lines)


def train(out: Path, name: str, overrides: str, base: Path) -> tuple[Path, float]:
    folder = out / "sweep" / name
    adapter = folder / "run" / "cts_adapter.safetensors"
    if adapter.is_file():
        return adapter, float(json.loads((folder / "seconds.json").read_text())["train"])
    if (folder / "run").exists():
        shutil.rmtree(folder / "run")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "train.toml"
    config.write_text(run.TRAIN_INFRA + overrides, encoding="utf-8")
    began = time.perf_counter()
    run.vip(
        "train",
        out / "train",
        "--out",
        folder / "run",
        "--model",
        base,
        "--config",
        config,
        "--resolution",
        str(world.SIZE),
        "--seed",
        str(run.SEED),
    )
    seconds = round(time.perf_counter() - began, 1)
    (folder / "seconds.json").write_text(json.dumps({"train": seconds}) + "\n", encoding="utf-8")
    return adapter, seconds


def evaluate(out: Path, folder: Path, base: Path, settings: list[Path], images: int, extra: list[str]) -> Path:
    return run.eval_into(
        folder, out, base, settings, run.FULL, out / "inception-random.pth", "--limit", str(images), *extra
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a toy-world run folder with its world and base model")
    parser.add_argument("--variant", action="append", default=[], help="NAME[: key = value; key = value] (repeatable)")
    parser.add_argument("--images", type=int, default=192, help="test pictures scored (default 192)")
    parser.add_argument("--swap", action="store_true", help="also score the keyword swap")
    parser.add_argument(
        "--eval-args",
        default="",
        help='extra `vip eval` options for the trained variants (not zero-shot), e.g. "--region-strength 0.75"',
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    base = out / "base"
    if not (base / "toyworld_base.json").is_file():
        raise SystemExit(f"sweep: {out} has no base model: run `run.py --zero-shot-only --out {out}` first")
    from tiny_models import save_random_inception

    save_random_inception(out / "inception-random.pth")
    prompts = {name: out / "prompts" / f"{name}.jsonl" for name in ("regions", "swap")}
    settings = [prompts["regions"], *([prompts["swap"]] if args.swap else [])]
    asked = {name: world.read_scenes(path) for name, path in prompts.items()}
    zero = evaluate(out, out / "sweep" / f"zero-shot-{args.images}", base, settings, args.images, [])
    reference = {
        name: run.score_setting(zero, name, asked[name], out)
        for name in ("regions", "swap")
        if args.swap or name == "regions"
    }

    extra = shlex.split(args.eval_args)
    results = []
    for spec in args.variant:
        name, overrides = parse_variant(spec)
        adapter, seconds = train(out, name, overrides, base)
        folder = evaluate(
            out,
            out / "sweep" / name / f"eval-{args.images}{run.options_tag(extra)}",
            base,
            settings,
            args.images,
            ["--adapter", str(adapter), *extra],
        )
        row = {
            "variant": name + (f" (eval {' '.join(extra)})" if extra else ""),
            "overrides": overrides.strip().replace("\n", "; "),
            "train_seconds": seconds,
            "gates": run._adapter_gates(adapter),
        }
        for setting, zero_scores in reference.items():
            scores = run.score_setting(folder, setting, asked[setting], out)
            row[setting] = {key: value for key, value in scores.items() if key != "colour_per_image"}
            row[setting]["vs_zero_shot"] = run.paired_difference(
                scores["colour_per_image"], zero_scores["colour_per_image"]
            )
        results.append(row)
        run.log(
            f"{name}: regions {row['regions']['colour']:.1%}, {run.format_difference(row['regions']['vs_zero_shot'])}"
        )

    lines = [
        f"Zero-shot region prompts: {reference['regions']['colour']:.1%} on {reference['regions']['images']} pictures"
        + (f"; keyword swap {reference['swap']['colour']:.1%}" if "swap" in reference else "")
        + ".",
        "",
        "| variant | overrides | train s | mean gate | region prompts | trained - zero-shot |"
        + (" swap | swap: trained - zero-shot |" if args.swap else ""),
        "|---|---|---|---|---|---|" + ("---|---|" if args.swap else ""),
    ]
    for row in results:
        gates = row["gates"]
        mean_gate = f"{sum(gates) / len(gates):.2f}" if gates else "-"
        cells = [
            row["variant"],
            f"`{row['overrides']}`" if row["overrides"] else "(defaults)",
            str(row["train_seconds"]),
            mean_gate,
        ]
        for setting in reference:
            low, high = row[setting]["colour_ci"]
            cells.append(f"{row[setting]['colour']:.1%} ({low:.0%}-{high:.0%})")
            diff = row[setting]["vs_zero_shot"]
            cells.append(run.difference_cell(diff))
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    (out / "sweep" / "results.md").write_text(text + "\n", encoding="utf-8")
    (out / "sweep" / "results.json").write_text(json.dumps({"images": args.images, "rows": results}, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
