"""The toy-world proof: does `vip` learn, follow region prompts, and keep the known pixels?

    python benchmarks/toyworld/run.py                 # the full run (about 25 minutes on 2 CPU cores)
    python benchmarks/toyworld/run.py --quick         # a reduced run (a few minutes; what the CI test runs)
    python benchmarks/toyworld/run.py --zero-shot-only --eval-args "--guidance-interval 0.28,5.42" --out RUN
                                                      # only the zero-shot rows (no adapter), generation options added

Steps (everything after step 2 goes through vip's command line, as a user's run would):

1. the world (``world.py``): seeded train / test splits of 64 px pictures with Center / Surrounding /
   Total captions, and the test prompt files (Total only; regions; regions with another surrounding);
2. the base model (``base.py``): a tiny SD-inpainting stand-in trained on Total captions only;
3. ``vip train``: the C-T-S adapter on the region captions (the base stays frozen);
4. ``vip eval``: the test split outpainted 2x per side (known center 32x32 -> 64x64) for base,
   C-T-S zero-shot and C-T-S trained, each with and without prompts;
5. ``vip outpaint --keywords``: a few test centers with their surrounding keyword changed;
6. the region classifier on every output: the fill of the generated frame (colour, texture) against
   the one the prompt asked for, and the known center compared byte for byte.

Prints the results table and writes it, with every figure, to ``OUT/results.json`` / ``OUT/results.md``.
Exit status 0 when the run finished (whatever the figures are), 1 when a stage failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import world  # noqa: E402
from PIL import Image  # noqa: E402


@dataclass(frozen=True)
class Budget:
    """How much of everything a run does. The adapter is trained with `vip train`'s defaults (the settings a
    user gets); only its length may be shorter here (``adapter_steps``; None: vip train's default)."""

    train_images: int
    test_images: int
    vae_steps: int
    base_steps: int
    base_batch: int
    adapter_steps: int | None
    eval_steps: int
    keyword_images: int
    swap: bool  # also score the keyword swap on the whole test split
    strengths: tuple[float, ...]  # other zero-shot region strengths scored (region prompts only), besides the default


FULL = Budget(
    train_images=2000,
    test_images=480,
    vae_steps=3000,
    base_steps=2000,
    base_batch=32,
    adapter_steps=None,
    eval_steps=20,
    keyword_images=6,
    swap=True,
    strengths=(0.25, 1.0),
)
QUICK = Budget(
    train_images=2000,
    test_images=32,
    vae_steps=400,
    base_steps=1600,
    base_batch=32,
    adapter_steps=500,
    eval_steps=20,
    keyword_images=1,
    swap=False,
    strengths=(),
)

GUIDANCE = 4.0  # classifier-free guidance of every generation (the tiny model saturates above this)
SEED = 0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


CHILD_ENV: dict[str, str] = {}  # environment the `vip` processes get on top of this one's


def vip(*args: str) -> None:
    """Run vip's command line (``python -m vipcli.main``) and stop the run if it fails."""
    command = [sys.executable, "-m", "vipcli.main", *map(str, args)]
    log("vip " + " ".join(map(str, args)))
    env = {
        **os.environ,
        **CHILD_ENV,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    completed = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-4000:])
        raise SystemExit(f"toyworld: `vip {args[0]}` failed with exit status {completed.returncode}")


# ============================================================================ stages


def make_world(out: Path, budget: Budget) -> dict[str, Path]:
    world.write_split(out / "train", budget.train_images, seed=SEED + 1)
    scenes = world.write_split(out / "test", budget.test_images, seed=SEED + 2)
    return world.write_prompt_files(out / "prompts", scenes, seed=SEED + 3)


def make_base(out: Path, budget: Budget) -> Path:
    from base import make_base_model

    folder = out / "base"
    summary = make_base_model(
        out / "train",
        folder,
        vae_steps=budget.vae_steps,
        unet_steps=budget.base_steps,
        batch=budget.base_batch,
        seed=SEED,
        log=log,
    )
    log(f"base model: {json.dumps(summary)}")
    return folder


TRAIN_INFRA = (
    "validate_every = 0\nsave_every = 0\n"  # no validation outpaints or checkpoints on the way: not the recipe
)


def train_adapter(out: Path, base: Path, budget: Budget) -> Path:
    """`vip train` with its defaults: only the world's resolution, the seed and the budget's length are given
    (no validation outpaints or intermediate checkpoints: they are not the recipe)."""
    run = out / "cts-run"
    config = out / "train.toml"
    config.write_text(TRAIN_INFRA, encoding="utf-8")
    length = ["--max-steps", budget.adapter_steps] if budget.adapter_steps else []
    vip(
        "train",
        out / "train",
        "--out",
        run,
        "--model",
        base,
        "--config",
        config,
        "--resolution",
        world.SIZE,
        "--seed",
        SEED,
        *length,
    )
    return run / "cts_adapter.safetensors"


def evaluate(out: Path, name: str, base: Path, settings: list, budget: Budget, weights: Path, *extra) -> Path:
    """`vip eval` of the test split, 2x per side (known 32x32 center -> 64x64), one run for all ``settings``."""
    return eval_into(out / "eval" / name, out, base, settings, budget, weights, *extra)


def eval_into(folder: Path, out: Path, base: Path, settings: list, budget: Budget, weights: Path, *extra) -> Path:
    """`vip eval` of the test split into ``folder`` (``extra``: more options, e.g. ``--limit N``, ``--adapter``)."""
    chosen = [value for setting in settings for value in ("--prompts", setting)]
    vip(
        "eval",
        out / "test",
        "--out",
        folder,
        "--model",
        base,
        "--protocol",
        "custom",
        "--size",
        "64x64",
        "--ratio",
        "2x",
        *chosen,
        "--steps",
        budget.eval_steps,
        "--guidance",
        GUIDANCE,
        "--seed",
        SEED,
        "--feature-weights",
        weights,
        "--json",
        *extra,
    )
    return folder


def keyword_outpaints(out: Path, base: Path, adapter: Path, prompts: dict[str, Path], budget: Budget) -> list[dict]:
    """`vip outpaint CENTER.png --ratio 2x --center ... --keywords NEW` on a few test centers."""
    swaps = world.read_scenes(prompts["swap"])
    folder = out / "keywords"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    left, top, right, bottom = world.CENTER
    for key in sorted(swaps)[: budget.keyword_images]:
        asked = swaps[key]
        known = np.asarray(Image.open(out / "test" / key).convert("RGB"))[top:bottom, left:right]
        source = folder / f"center-{key}"
        Image.fromarray(known).save(source)
        result = folder / f"out-{key}"
        vip(
            "outpaint",
            source,
            "--ratio",
            "2x",
            "--model",
            base,
            "--adapter",
            adapter,
            "--center",
            asked.center.text,
            "--keywords",
            asked.surrounding.text,
            "--prompt",
            asked.total,
            "--feather",
            "0",
            "--steps",
            budget.eval_steps,
            "--guidance",
            GUIDANCE,
            "--seed",
            SEED,
            "-o",
            result,
            "--overwrite",
        )
        picture = np.asarray(Image.open(result).convert("RGB"))
        rows.append(
            {
                "image": key,
                "asked": asked.surrounding.text,
                "got": world.classify(picture).text,
                "center_intact": bool(np.array_equal(picture[top:bottom, left:right], known)),
            }
        )
    return rows


# ============================================================================ scoring


def score_setting(eval_dir: Path, setting: str, asked: dict[str, world.Scene], out: Path) -> dict:
    """Region accuracy of one setting's outputs: the generated frame's fill against ``asked``."""
    left, top, right, bottom = world.CENTER
    colour = texture = both = intact = count = 0
    per_image: dict[str, bool] = {}  # key -> the frame's colour is the asked one (for paired differences)
    for key, scene in sorted(asked.items()):
        path = eval_dir / "pred" / setting / key
        if not path.is_file():
            continue
        picture = np.asarray(Image.open(path).convert("RGB"))
        truth = np.asarray(Image.open(out / "test" / key).convert("RGB"))
        got = world.classify(picture)
        per_image[key] = got.colour == scene.surrounding.colour
        colour += per_image[key]
        texture += got.texture == scene.surrounding.texture
        both += got == scene.surrounding
        intact += bool(np.array_equal(picture[top:bottom, left:right], truth[top:bottom, left:right]))
        count += 1
    if count == 0:
        return {"images": 0}
    return {
        "images": count,
        "colour": colour / count,
        "colour_ci": wilson_interval(colour, count),
        "texture": texture / count,
        "fill": both / count,
        "center_intact": intact / count,
        "colour_per_image": per_image,
    }


def wilson_interval(successes: int, count: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (honest near 0 and 1, unlike the normal one)."""
    if count == 0:
        return (0.0, 1.0)
    p = successes / count
    centre = (p + z * z / (2 * count)) / (1 + z * z / count)
    half = z * ((p * (1 - p) / count + z * z / (4 * count * count)) ** 0.5) / (1 + z * z / count)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_difference(first: dict[str, bool], second: dict[str, bool], z: float = 1.96) -> dict:
    """``first - second`` on the pictures both scored (same pictures, same seeds): the mean of the
    per-picture differences (-1, 0, 1) with its 95% interval, and the discordant counts."""
    keys = sorted(set(first) & set(second))
    diffs = np.array([int(first[key]) - int(second[key]) for key in keys], dtype=np.float64)
    if len(diffs) < 2:
        return {"images": len(diffs), "difference": float(diffs.mean()) if len(diffs) else 0.0, "ci": (-1.0, 1.0)}
    mean = float(diffs.mean())
    half = z * float(diffs.std(ddof=1)) / len(diffs) ** 0.5
    return {
        "images": len(diffs),
        "difference": mean,
        "ci": (mean - half, mean + half),
        "first_only": int((diffs > 0).sum()),  # pictures only ``first`` got right
        "second_only": int((diffs < 0).sum()),
    }


def format_difference(result: dict) -> str:
    low, high = result["ci"]
    return (
        f"{result['difference'] * 100:+.1f} points "
        f"(95% interval {low * 100:+.1f} to {high * 100:+.1f}, {result['images']} pictures)"
    )


def difference_cell(result: dict) -> str:
    """A paired difference for a table cell: "+3.6 (+0.3 to +7.0)", in points."""
    low, high = result["ci"]
    return f"{result['difference'] * 100:+.1f} ({low * 100:+.1f} to {high * 100:+.1f})"


def options_tag(options: list[str]) -> str:
    """A folder-name suffix for extra `vip eval` options ("--region-strength 0.75" -> "-regionstrength_0.75")."""
    return (
        "-" + "_".join(options).replace("-", "").replace(",", "-").replace("/", "").replace(" ", "") if options else ""
    )


ROWS = (
    # (label, eval run, setting, prompts the frame is scored against)
    ("base, no prompt", "base", "unconditional", "regions"),
    ("base, Total prompt only", "base", "total", "regions"),
    ("C-T-S zero-shot, no prompt", "base", "unconditional", "regions"),
    ("C-T-S zero-shot, region prompts", "base", "regions", "regions"),
    ("C-T-S trained, no prompt", "trained", "unconditional", "regions"),
    ("C-T-S trained, Total prompt only", "trained", "total", "regions"),
    ("C-T-S trained, region prompts", "trained", "regions", "regions"),
    ("keyword swap: base, Total prompt only", "base", "swap-total", "swap"),
    ("keyword swap: C-T-S zero-shot", "base", "swap", "swap"),
    ("keyword swap: C-T-S trained", "trained", "swap", "swap"),
)


PAIRED = (
    # (name, first row, second row): first - second, picture by picture (same pictures, same seeds)
    ("Trained - zero-shot, region prompts", "C-T-S trained, region prompts", "C-T-S zero-shot, region prompts"),
    ("Trained - zero-shot, keyword swap", "keyword swap: C-T-S trained", "keyword swap: C-T-S zero-shot"),
    ("Zero-shot region prompts - base Total prompt", "C-T-S zero-shot, region prompts", "base, Total prompt only"),
)


def table(rows: list[dict], chance: float) -> str:
    lines = [
        "| model and prompts | surrounding colour (95% interval) | texture | colour and texture | known center intact "
        "|",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["colour_ci"]
        lines.append(
            f"| {row['label']} | {row['colour']:.1%} ({low:.1%}-{high:.1%}) | {row['texture']:.1%} | {row['fill']:.1%} "
            f"| {row['center_intact']:.0%} |"
        )
    lines.append(
        f"\nChance: colour {chance:.1%} (a colour other than the center's), texture {1 / len(world.TEXTURES):.1%}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="toyworld-run", help="work folder (default ./toyworld-run)")
    parser.add_argument("--quick", action="store_true", help="the reduced run of the CI test (a few minutes)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue in an existing --out: reuse its base model and adapter, and every finished output (vip eval "
        "resumes)",
    )
    parser.add_argument(
        "--zero-shot-only",
        action="store_true",
        help="only the base / C-T-S zero-shot rows (no adapter training, no trained rows, no keyword outpaints)",
    )
    parser.add_argument(
        "--eval-args",
        default="",
        help='extra `vip eval` options for every generation, e.g. "--guidance-interval 0.28,5.42" (a speed lever)',
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="generation runs at once after training, one CPU thread each when above 1 (default: 2 where there are 2 "
        "cores)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.jobs > 1:
        CHILD_ENV["OMP_NUM_THREADS"] = "1"  # every `vip` process: N processes of one thread, not N fighting for N
    extra_args = shlex.split(args.eval_args)
    budget = QUICK if args.quick else FULL
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise SystemExit(f"toyworld: {out} is not empty: give another --out, delete it, or continue it with --resume")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name, function, *args_):
        begin = time.perf_counter()
        result = function(*args_)
        timings[name] = round(time.perf_counter() - begin, 1)
        return result

    prompts = timed("world", make_world, out, budget)
    base = out / "base"
    if not (args.resume and (base / "toyworld_base.json").is_file()):
        base = timed("base model", make_base, out, budget)
    from tiny_models import save_random_inception  # FID is not what this benchmark reads: random weights do

    weights = save_random_inception(out / "inception-random.pth")
    adapter = out / "cts-run" / "cts_adapter.safetensors"
    if not args.zero_shot_only and not (args.resume and adapter.is_file()):
        if (out / "cts-run").exists():
            shutil.rmtree(out / "cts-run")  # an interrupted training run: start it over
        adapter = timed("vip train", train_adapter, out, base, budget)
    settings = ["unconditional", prompts["total"], prompts["regions"], *([prompts["swap"]] if budget.swap else [])]
    base_settings = [*settings, *([prompts["swap-total"]] if budget.swap else [])]
    tag = options_tag(extra_args)
    if args.zero_shot_only:
        base_settings = [prompts["regions"]]  # the row a speed lever is judged on: C-T-S zero-shot, region prompts
    # the generations are independent: up to --jobs `vip` processes at once (one CPU thread each: tiny models
    # gain little from a second thread, two processes twice as much)
    jobs: dict[str, tuple] = {
        "vip eval base": (evaluate, out, "base" + tag, base, base_settings, budget, weights, *extra_args)
    }
    if not args.zero_shot_only:
        jobs["vip eval trained"] = (
            evaluate,
            out,
            "trained" + tag,
            base,
            settings,
            budget,
            weights,
            "--adapter",
            adapter,
            *extra_args,
        )
        for strength in budget.strengths:
            jobs[f"vip eval zero-shot {strength}"] = (
                evaluate,
                out,
                f"zero-shot-{strength}{tag}",
                base,
                [prompts["regions"]],
                budget,
                weights,
                "--region-strength",
                str(strength),
                *extra_args,
            )
        jobs["vip outpaint --keywords"] = (keyword_outpaints, out, base, adapter, prompts, budget)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {name: pool.submit(timed, name, *job) for name, job in jobs.items()}
        done = {name: future.result() for name, future in futures.items()}
    runs = {"base": done["vip eval base"]}
    if "vip eval trained" in done:
        runs["trained"] = done["vip eval trained"]
    strength_runs = {
        strength: done[f"vip eval zero-shot {strength}"] for strength in budget.strengths if not args.zero_shot_only
    }
    keywords = done.get("vip outpaint --keywords", [])

    asked = {"regions": world.read_scenes(prompts["regions"]), "swap": world.read_scenes(prompts["swap"])}
    rows = []
    for label, run, setting, scored_against in ROWS:
        if (setting.startswith("swap") and not budget.swap) or run not in runs:
            continue
        scores = score_setting(runs[run], setting, asked[scored_against], out)
        if not scores["images"] or (args.zero_shot_only and label.startswith("base")):
            continue  # a setting this run did not generate
        rows.append({"label": label, "run": run, "setting": setting, **scores})
    for strength, folder in strength_runs.items():
        scores = score_setting(folder, "regions", asked["regions"], out)
        rows.append(
            {
                "label": f"C-T-S zero-shot, region prompts, strength {strength}",
                "run": folder.name,
                "setting": "regions",
                **scores,
            }
        )
    chance = 1 / (len(world.COLOURS) - 1)
    text = table(rows, chance)
    by_label = {row["label"]: row for row in rows}
    differences = {}
    for name, first, second in PAIRED:
        if first in by_label and second in by_label:
            differences[name] = paired_difference(
                by_label[first]["colour_per_image"], by_label[second]["colour_per_image"]
            )
            text += f"\n{name}, surrounding colour: {format_difference(differences[name])}."
    if "C-T-S trained, region prompts" in by_label:
        reached = by_label["C-T-S trained, region prompts"]["colour"]
        text += f"\nGoal: 90% surrounding colour with trained region prompts; reached {reached:.1%}" + (
            "." if reached >= 0.9 else f", {(0.9 - reached) * 100:.1f} points short."
        )
    keyword_follow = sum(row["asked"].split()[0] == row["got"].split()[0] for row in keywords) / max(1, len(keywords))
    text += (
        f"\n\n`vip outpaint --keywords` (C-T-S trained) on {len(keywords)} test centers: the frame shows the keyword's "
        f"colour in {keyword_follow:.0%}, center byte-identical in "
        f"{sum(r['center_intact'] for r in keywords)}/{len(keywords)}."
    )
    base_summary = json.loads((base / "toyworld_base.json").read_text())
    round_trip = base_summary.get("vae_round_trip_colour")
    if round_trip:
        worst = min(round_trip, key=round_trip.get)
        kept = (
            "every colour in 100% of pictures"
            if round_trip[worst] == 1.0
            else f"{worst} in only {round_trip[worst]:.0%} of pictures (every score is capped by it)"
        )
        text += f"\nThe base autoencoder alone (encode + decode of training pictures) keeps {kept}."
    timings["total"] = round(time.perf_counter() - started, 1)
    text += "\n\nTime (s): " + ", ".join(f"{name} {seconds}" for name, seconds in timings.items())
    results = {
        "budget": budget.__dict__,
        "quick": args.quick,
        "guidance": GUIDANCE,
        "eval_args": extra_args,
        "rows": rows,
        "chance_colour": chance,
        "keyword_outpaints": keywords,
        "keyword_follow": keyword_follow,
        "paired_differences": differences,
        "base_model": base_summary,
        "adapter_gates": _adapter_gates(adapter) if adapter.is_file() else [],
        "seconds": timings,
    }
    (out / f"results{tag}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / f"results{tag}.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def _adapter_gates(adapter: Path) -> list[float]:
    from safetensors import safe_open

    with safe_open(str(adapter), "pt") as handle:
        metadata = handle.metadata() or {}
    try:
        return json.loads(metadata.get("gates", "[]"))
    except ValueError:
        return []


if __name__ == "__main__":
    sys.exit(main())
