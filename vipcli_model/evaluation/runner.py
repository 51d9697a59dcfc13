"""`vip eval`: generate the benchmark outputs of a model, then score them; or score existing outputs.

``run_eval`` reads top to bottom:

1. check the options, RUN_DIR's ``run.json`` (a resumed run must use the settings it was started
   with) and find the Inception weights: before any generation, as a run must not spend hours and
   then fail on a missing file;
2. list the test images (sorted; ``limit`` takes the first N), give each a key (its path
   under DATA_DIR without suffix; ``x.png`` beside ``x.jpg``: ``x_png`` and ``x_jpg``) and a seed (base seed + its
   index in that list, so an image's output does not depend on the order, the resume point, or the GPU it ran on);
3. take this process's shard (``accelerate launch`` runs one process per GPU);
4. for each image: write ``gt/<key>.png`` (the resized ground truth); for each prompt setting,
   outpaint the known center into ``pred/<setting>/<key>.png`` unless a finished output with the
   same settings is already there; a broken image is reported and skipped;
5. wait for the other processes; the main one scores every setting (``score_settings``) and
   writes ``results.json`` and ``per_image.csv``.

``score_pairs`` does step 5 alone on two folders (other tools' outputs against ground truth).

Layout of RUN_DIR::

    run.json                 the generation settings (checked on resume)
    gt/<key>.png             ground truth at the protocol size
    pred/<setting>/<key>.png outputs, with the vip metadata of each (prompts, seed, ...)
    results.json             metrics per setting, protocol, model, seeds, versions
    per_image.csv            per-image PSNR / SSIM / LPIPS / CLIP score
    cache/                   Inception features of the files above (reused while a file is unchanged)
    logs/                    what each process generated, reused and skipped

Several GPUs: ``accelerate launch --num_processes 4 -m vipcli.main eval DATA --model M --out RUN``
(or ``torchrun --nproc_per_node 4 -m vipcli.main eval ...``, which also runs CPU processes);
each process generates every 4th image on its own GPU, the main process then scores them all.
Seeds are per image, so the outputs are those of a single-process run.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from vipcli_model.batch import Processes as _Processes
from vipcli_model.batch import current_processes
from vipcli_model.errors import InputError
from vipcli_model.evaluation.generation import _check_run_file, _finished, _Generation, _merge_summaries, list_images
from vipcli_model.evaluation.inception import find_inception_weights
from vipcli_model.evaluation.protocol import shard
from vipcli_model.evaluation.scoring import (
    FID_RELIABLE_IMAGES,
    PER_IMAGE_METRICS,
    RESULTS_FORMAT,
    FeatureCache,
    Pair,
    score_pairs,
    score_settings,
    write_text,
)
from vipcli_model.evaluation.settings import (
    CAPTIONER,
    RESERVED_SETTINGS,
    UNCONDITIONAL,
    EvalConfig,
    EvalReport,
    ProgressCallback,
    PromptSetting,
    ScoreConfig,
    SkipCallback,
    parse_prompt_settings,
    read_prompts_file,
)
from vipcli_model.files import image_key

# The names `vip eval` and its tests import from here, wherever they live now.
__all__ = [
    "CAPTIONER",
    "FID_RELIABLE_IMAGES",
    "PER_IMAGE_METRICS",
    "RESERVED_SETTINGS",
    "RESULTS_FORMAT",
    "UNCONDITIONAL",
    "EvalConfig",
    "EvalReport",
    "FeatureCache",
    "Pair",
    "ProgressCallback",
    "PromptSetting",
    "ScoreConfig",
    "SkipCallback",
    "_Processes",
    "_check_run_file",
    "_finished",
    "current_processes",
    "list_images",
    "parse_prompt_settings",
    "read_prompts_file",
    "run_eval",
    "score_pairs",
    "score_settings",
]

logger = logging.getLogger(__name__)


# ============================================================================ generate and score


def run_eval(
    config: EvalConfig,
    *,
    progress: ProgressCallback | None = None,
    on_skip: SkipCallback | None = None,
    outpainter: Any = None,
    captioner: Any = None,
    processes: _Processes | None = None,
) -> EvalReport | None:
    """Generate (resumably) and score; returns the report on the main process, None on the others.

    ``outpainter`` / ``captioner`` may be given already loaded (tests, notebooks); otherwise they
    load on first need, so a finished run resumes without loading any model.
    """
    progress = progress or (lambda stage, done, total: None)
    processes = processes or current_processes()
    # 1. options, RUN_DIR's settings and the weights, first
    run_file = config.out_dir / "run.json"
    _check_run_file(run_file, config.run_record())
    config.check()
    weights = find_inception_weights(config.scoring.feature_weights) if processes.is_main else None
    prompt_files = {
        s.name: read_prompts_file(s.path, config.data_dir, suffix=True) for s in config.settings if s.kind == "file"
    }
    # 2. the images, their keys and seeds
    images, listing_problems = list_images(config.data_dir, config.limit)
    for setting in config.settings:
        if setting.kind == "file":  # each image's record, by its path with suffix, else without
            by_path = prompt_files[setting.name]
            by_stem = {image_key(name, suffix=False): prompts for name, prompts in by_path.items()}
            found = {}
            for key, path, _index in images:
                relative = path.relative_to(config.data_dir)
                if image_key(relative) in by_path:
                    found[key] = by_path[image_key(relative)]
                elif image_key(relative, suffix=False) in by_stem:
                    found[key] = by_stem[image_key(relative, suffix=False)]
            prompt_files[setting.name] = found
            missing = [key for key, _path, _seed in images if key not in prompt_files[setting.name]]
            if missing:
                shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                raise InputError(f"prompts file {setting.path} has no record for {len(missing)} image(s): {shown}")
    processes.barrier()  # every process has checked run.json before the main one writes it
    if processes.is_main and not run_file.exists():
        write_text(run_file, json.dumps(config.run_record(), indent=2) + "\n")
    # 3-4. this process's shard
    mine = shard(images, processes.index, processes.count)
    state = _Generation(config, processes, outpainter, captioner, prompt_files)
    total = len(mine) * len(config.settings)
    progress("generate", 0, total)
    for number, (key, path, index) in enumerate(mine):
        state.image(key, path, config.seed + index, on_skip)
        progress("generate", (number + 1) * len(config.settings), total)
    write_text(config.out_dir / "logs" / f"generation-{processes.index}.json", json.dumps(state.summary(), indent=2))
    # 5. the main process scores
    processes.barrier()
    if not processes.is_main:
        return None
    summary = _merge_summaries(config.out_dir, processes.count)
    skipped = [{"image": path, "reason": reason} for path, reason in listing_problems] + summary["skipped"]
    settings_pairs = {
        setting.name: [
            Pair(
                key,
                config.out_dir / "gt" / f"{key}.png",
                config.out_dir / "pred" / setting.name / f"{key}.png",
                config.seed + index,
            )
            for key, _path, index in images
            if (config.out_dir / "pred" / setting.name / f"{key}.png").is_file()
            and (config.out_dir / "gt" / f"{key}.png").is_file()
        ]
        for setting in config.settings
    }
    header = {
        "mode": "generate",
        "data_dir": str(config.data_dir),
        "run_dir": str(config.out_dir),
        "protocol": config.protocol.to_dict(),
        "model": config.model.model,
        "adapter": config.model.adapter,
        "prompt_settings": [setting.to_dict() for setting in config.settings],
        "generation": {
            "steps": config.generation.steps,
            "guidance": config.generation.guidance,
            "scheduler": config.generation.scheduler,
            "negative": config.generation.negative,
            "feather": 0,
            "seed": config.seed,
            "seeds": "seed + index of the image in the sorted list",
            "images_listed": len(images),
            "generated": summary["generated"],
            "reused": summary["reused"],
            "processes": processes.count,
        },
        "skipped": skipped,
    }
    return score_settings(
        settings_pairs,
        config.protocol,
        config.scoring,
        config.out_dir,
        header=header,
        weights=weights,
        progress=progress,
        cache_features=True,
    )
