"""`vip eval` through the real entry point (subprocesses), on the tiny inpainting model.

The Inception network has the real architecture with random weights, saved in the layout of the
standard weights file and passed with --feature-weights, so the same loading code runs. LPIPS gets
a random AlexNet backbone in the vip metrics cache, the CLIP score a tiny CLIP built in code.

Every `vip` process pays seconds of imports and the Inception network costs about a second per
image on a CPU, so the runs of this module start together once (a module fixture, two at a time):
one generate-and-score run (3 images x 2 prompt settings), its resumption, and a few quick ones.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pixels, run_vip
from PIL import Image
from tiny_models import save_random_inception

from vipcli_model.images.io import read_metadata

PARALLEL = 2
NAMES = ("astronaut", "chelsea", "coffee")  # sorted: seeds are --seed + 0, 1, 2


@dataclass
class _Part:
    """One of the results of a job that runs several `vip` commands in a row."""

    future: Future
    index: int

    def result(self):
        return self.future.result()[self.index]


@dataclass
class Runs:
    root: Path
    data: Path
    run_dir: Path
    prompts_file: Path
    weights: Path
    model: Path
    jobs: dict[str, Future] = field(default_factory=dict)
    mtimes: dict[str, int] = field(default_factory=dict)

    def __call__(self, name: str):
        return self.jobs[name].result()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> Runs:
    import skimage.data
    from test_eval_metrics import _tiny_clip

    from vipcli_model.evaluation.perceptual import ALEXNET_FILE, AlexNetFeatures

    root = tmp_path_factory.mktemp("eval")
    caches = tmp_path_factory.mktemp("eval-caches")
    env = {
        "HF_HOME": str(caches / "hf"),
        "HF_HUB_CACHE": str(caches / "hf" / "hub"),
        "VIP_CACHE_DIR": str(caches / "vip"),
        "TORCH_HOME": str(caches / "torch"),  # no FID weights left there by another tool
        "HF_HUB_OFFLINE": "1",
        "VIP_DEBUG": "",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "COLUMNS": "100",
    }
    data = root / "data"
    data.mkdir()
    for name in NAMES:
        Image.fromarray(getattr(skimage.data, name)()).save(data / f"{name}.png")
    prompts_file = root / "described.jsonl"
    prompts_file.write_text(
        "".join(
            json.dumps({"image": f"{name}.png", "center": f"a {name}", "surrounding": f"the room around the {name}"})
            + "\n"
            for name in NAMES
        ),
        encoding="utf-8",
    )
    weights = save_random_inception(root / "inception-random.pth")
    torch.manual_seed(0)  # LPIPS backbone, found in the metrics cache as torchvision's file
    backbone = caches / "vip" / "metrics" / ALEXNET_FILE
    backbone.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in AlexNetFeatures().features.state_dict().items()}, backbone)
    clip_dir = _tiny_clip(root / "tiny-clip")

    r = Runs(
        root=root, data=data, run_dir=root / "run", prompts_file=prompts_file, weights=weights, model=tiny_model_dir
    )
    generate = [
        data,
        "--model",
        tiny_model_dir,
        "--protocol",
        "standard",
        "--feature-weights",
        weights,
        "--out",
        r.run_dir,
        "--steps",
        "2",
        "--seed",
        "5",
        "--prompts",
        "unconditional",
        "--prompts",
        prompts_file,
        "--clip-model",
        clip_dir,
    ]

    def generate_then_resume():
        first = run_vip("eval", *map(str, generate), cwd=root, env=env)
        r.mtimes.update({str(p.relative_to(r.run_dir)): p.stat().st_mtime_ns for p in r.run_dir.rglob("*.png")})
        for name in ("results.json", "per_image.csv"):  # as the first run left them
            if (r.run_dir / name).is_file():
                shutil.copy(r.run_dir / name, root / f"first-{name}")
        # a broken image arrives (sorted last: the other images keep their seeds)
        whole = (data / "coffee.png").read_bytes()
        (data / "zz_broken.png").write_bytes(whole[: len(whole) // 3])
        with prompts_file.open("a", encoding="utf-8") as handle:  # with its prompts, as a complete file has
            handle.write(json.dumps({"image": "zz_broken.png", "surrounding": "anything"}) + "\n")
        second = run_vip("eval", *map(str, generate), cwd=root, env=env)
        (data / "zz_broken.png").unlink()
        return first, second

    pool = ThreadPoolExecutor(max_workers=PARALLEL)
    chain = pool.submit(generate_then_resume)
    for index, name in enumerate(("first", "resumed")):
        r.jobs[name] = _Part(chain, index)

    # two folders of another tool's outputs: paired by name without suffix
    pred, gt = root / "other" / "pred", root / "other" / "gt"
    pred.mkdir(parents=True)
    gt.mkdir(parents=True)
    for name in ("astronaut", "chelsea"):
        image = Image.fromarray(getattr(skimage.data, name)()).resize((192, 192))
        image.save(gt / f"{name}.png")
        image.rotate(180).save(pred / f"{name}.jpg", quality=95)
    submit = lambda name, *args, **extra: r.jobs.__setitem__(  # noqa: E731
        name, pool.submit(run_vip, *map(str, args), cwd=root, env={**env, **extra})
    )
    submit("pairs", "eval", "--pred", pred, "--gt", gt, "--feature-weights", weights, "--out", root / "pairs-out")
    lonely = root / "other" / "lonely"
    lonely.mkdir()
    Image.new("RGB", (192, 192)).save(lonely / "unrelated.png")
    submit("no_common", "eval", "--pred", lonely, "--gt", gt, "--feature-weights", weights)
    submit("offline", "eval", "--pred", pred, "--gt", gt)
    yield r
    pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------- generate


def test_generate_and_score_runs_end_to_end(runs):
    result = runs("first")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    results = json.loads((runs.root / "first-results.json").read_text())
    assert set(results["settings"]) == {"unconditional", "described"}
    for summary in results["settings"].values():
        assert summary["images"] == 3
        assert summary["fid"] > -1e-6 and np.isfinite(summary["fid"])
        assert summary["kid_subset_size"] == 2 and summary["kid_std"] >= 0  # half of 3, at least 2
        assert summary["is_mean"] >= 1.0 - 1e-9 and summary["is_splits"] == 1
        assert summary["psnr_known"] is None  # infinite: the known center is pasted back
        assert summary["ssim_known"] == pytest.approx(1.0)
        assert summary["lpips_known"] == pytest.approx(0.0, abs=1e-6)
        assert summary["lpips_whole"] > 0 and 0 < summary["ssim_whole"] < 1
        assert np.isfinite(summary["psnr_generated"]) and summary["psnr_whole"] > summary["psnr_generated"]
        assert 0 <= summary["clip_score"] <= 100
    # the unconditional outputs are scored against the prompted setting's Surrounding texts
    assert results["settings"]["unconditional"]["clip_reference"] == "described"
    assert results["protocol"] == {
        "name": "standard",
        "size": [192, 192],
        "known_size": [128, 128],
        "known_box": [32, 32, 160, 160],
        "area_factor": 2.25,
        "resize": "PIL bilinear to size",
    }
    assert results["model"] == str(runs.model) and results["adapter"] is None
    assert results["generation"]["steps"] == 2 and results["generation"]["seed"] == 5
    assert results["generation"]["generated"] == 6 and results["generation"]["reused"] == 0
    assert {"vip-outpaint", "torch", "diffusers"} <= set(results["versions"])
    assert results["feature_extractor"]["standard_weights_file"] is False
    assert any("not comparable with published numbers" in note for note in results["notes"])
    # the table is the data: on stdout
    assert "FID" in result.stdout and "described" in result.stdout and "unconditional" in result.stdout


def test_protocol_geometry_is_exact(runs):
    assert runs("first").returncode == 0
    for name in NAMES:
        truth = pixels(runs.run_dir / "gt" / f"{name}.png")
        assert truth.shape == (192, 192, 3)
        import skimage.data

        expected = np.asarray(
            Image.fromarray(getattr(skimage.data, name)()).resize((192, 192), Image.Resampling.BILINEAR)
        )
        assert np.array_equal(truth, expected)
        for setting in ("unconditional", "described"):
            output = pixels(runs.run_dir / "pred" / setting / f"{name}.png")
            assert output.shape == (192, 192, 3)
            assert np.array_equal(output[32:160, 32:160], truth[32:160, 32:160])  # known: pasted back exactly
            border = np.ones((192, 192), bool)
            border[32:160, 32:160] = False
            assert not np.array_equal(output[border], truth[border])  # generated, not copied
            assert output[border].std() > 1.0


def test_outputs_record_seed_and_prompts_per_setting(runs):
    assert runs("first").returncode == 0
    rows = list(csv.DictReader((runs.root / "first-per_image.csv").open()))
    assert len(rows) == 6
    seeds = {(row["setting"], row["image"]): int(row["seed"]) for row in rows}
    assert seeds == {(s, n): 5 + i for s in ("unconditional", "described") for i, n in enumerate(NAMES)}
    meta = read_metadata(runs.run_dir / "pred" / "described" / "chelsea.png")["vip"]
    assert meta["seed"] == 6 and meta["steps"] == 2 and meta["feather"] == 0
    assert meta["prompts"]["surrounding"] == "the room around the chelsea"
    assert meta["eval"]["setting"] == "described"
    assert read_metadata(runs.run_dir / "pred" / "unconditional" / "chelsea.png")["vip"]["prompts"]["total"] == ""
    # the same seed in both settings: they differ only by their prompts
    assert read_metadata(runs.run_dir / "pred" / "unconditional" / "chelsea.png")["vip"]["seed"] == 6


def test_second_run_generates_nothing_and_reports_a_broken_image(runs):
    result = runs("resumed")
    assert result.returncode == 1, result.stderr  # some image skipped: results still written
    assert "generated 0, reused 6" in result.stderr
    assert "zz_broken.png" in result.stderr and "Traceback" not in result.stderr
    after = {str(p.relative_to(runs.run_dir)): p.stat().st_mtime_ns for p in runs.run_dir.rglob("*.png")}
    assert after == runs.mtimes  # nothing rewritten, nothing new
    results = json.loads((runs.run_dir / "results.json").read_text())
    assert results["generation"]["generated"] == 0
    assert [item["image"].endswith("zz_broken.png") for item in results["skipped"]] == [True]
    assert results["settings"]["described"]["images"] == 3


# ------------------------------------------------------------------------------------- existing outputs


def test_pred_gt_scores_two_folders(runs):
    result = runs("pairs")
    assert result.returncode == 0, result.stderr
    assert "FID" in result.stdout and "PSNR" in result.stdout
    results = json.loads((runs.root / "pairs-out" / "results.json").read_text())
    assert results["mode"] == "pairs"
    (summary,) = results["settings"].values()
    assert summary["images"] == 2
    assert summary["psnr_known"] is not None and summary["psnr_known"] < 30  # rotated: nothing pasted back
    assert (runs.root / "pairs-out" / "per_image.csv").is_file()


def test_pred_gt_without_common_names_is_a_clear_error(runs):
    result = runs("no_common")
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "share no file name" in lines[0]


def test_missing_feature_weights_offline_is_one_clear_line(runs):
    result = runs("offline")
    assert result.returncode == 4
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "pt_inception-2015-12-05-6726825d.pth" in lines[0]
    assert "https://github.com/mseitzer/pytorch-fid/releases" in lines[0]
    assert "--feature-weights" in lines[0]


# ------------------------------------------------------------------------------------- resumption logic


def test_changed_settings_are_refused_on_an_existing_run(tmp_path):
    from vipcli_model.errors import OptionError
    from vipcli_model.evaluation.runner import _check_run_file

    record = {"data_dir": "/data", "steps": 2, "seed": 5}
    run_file = tmp_path / "run.json"
    _check_run_file(run_file, record)  # a new run: nothing to compare
    run_file.write_text(json.dumps(record))
    _check_run_file(run_file, record)
    with pytest.raises(OptionError, match=r"made with other settings \(steps 2 -> 3\).*another `out_dir`"):
        _check_run_file(run_file, {**record, "steps": 3})


def test_finished_outputs_are_recognised_by_their_metadata(tmp_path):
    from vipcli_model.evaluation.runner import _finished
    from vipcli_model.images.io import save_image

    record = {"image": "a", "setting": "unconditional", "seed": 3, "steps": 2}
    path = tmp_path / "a.png"
    assert not _finished(path, record)
    save_image(Image.new("RGB", (8, 8)), path, metadata={"eval": {**record, "prompts": {"total": ""}}})
    assert _finished(path, record)
    assert not _finished(path, {**record, "seed": 4})  # another seed: made again
    save_image(Image.new("RGB", (8, 8)), tmp_path / "c.png")  # no metadata: not ours
    assert not _finished(tmp_path / "c.png", record)
    (tmp_path / "torn.png").write_bytes(path.read_bytes()[:-20])  # its metadata, but not its end: made again
    assert not _finished(tmp_path / "torn.png", record)


# ------------------------------------------------------------------------------------- the runner, with doubles
#
# run_eval with a stand-in outpainter (noise pasted around the known center), a stand-in captioner
# and stand-in Inception features: the generation logic (captioner setting, a captioner failure on
# one image, sharding over two processes) without diffusion or Inception costs.


class _NoiseOutpainter:
    def __init__(self) -> None:
        self.seeds: list[int] = []

    def outpaint(self, image, prompts, *, expansion, generation, blend, source=""):
        from vipcli_model.outpainting.blend import paste_back
        from vipcli_model.outpainting.canvas import prepare_geometry
        from vipcli_model.outpainting.outpainter import OutpaintResult

        self.seeds.append(generation.seed)
        geometry = prepare_geometry(image, expansion, 64)
        width, height = geometry.plan.canvas_size
        noise = np.random.default_rng(generation.seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        final = paste_back(Image.fromarray(noise), geometry.canvas, geometry.mask, feather=blend.feather)
        metadata = {"seed": generation.seed, "prompts": prompts.to_dict()}
        return OutpaintResult([final], geometry, prompts, generation.seed, metadata)

    def prompt_window(self):
        return None, 77  # no tokenizer: lengths estimated, CLIP's window


class _Captioner:
    """Describes what it is shown; has nothing to say about a black image."""

    name = "stand-in-vlm"

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def generate(self, image, instruction, *, max_new_tokens):
        self.sizes.append(image.size)
        return "" if np.asarray(image).max() == 0 else "A wooden barn."


class _Features:
    """Stand-in Inception: features derived from the pixels (no network)."""

    def __init__(self, *args, **kwargs) -> None:
        self.batch_size = 8

    def __call__(self, images):
        from vipcli_model.evaluation.inception import InceptionFeatures

        pool = np.stack([np.resize(np.asarray(image, np.float64)[::8, ::8].ravel() / 255.0, 2048) for image in images])
        return InceptionFeatures(pool=pool, logits=pool[:, :1008] * 10)


def test_captioner_setting_and_two_processes_with_doubles(tmp_path, monkeypatch):
    from vipcli_model.config import GenerationConfig
    from vipcli_model.evaluation import scoring
    from vipcli_model.evaluation.runner import EvalConfig, PromptSetting, ScoreConfig, _Processes, run_eval

    monkeypatch.setattr(scoring, "InceptionExtractor", _Features)
    data = tmp_path / "data"
    data.mkdir()
    gradient = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (200, 1, 3))
    Image.fromarray(gradient).save(data / "a.png")
    Image.new("RGB", (240, 200)).save(data / "b.png")  # black: the captioner gives up on it
    Image.fromarray(gradient[:, ::-1].copy()).save(data / "c.png")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"never loaded")
    config = EvalConfig(
        data_dir=data,
        out_dir=tmp_path / "run",
        generation=GenerationConfig(seed=10, steps=2),
        settings=(PromptSetting("unconditional", "unconditional"), PromptSetting("captioner", "captioner")),
        scoring=ScoreConfig(feature_weights=str(weights), lpips=False),
    )
    captioner, outpainters = _Captioner(), [_NoiseOutpainter(), _NoiseOutpainter()]
    # process 1 of 2 first (it returns without scoring), then the main one, which scores everything
    assert run_eval(config, outpainter=outpainters[1], captioner=captioner, processes=_Processes(1, 2)) is None
    report = run_eval(config, outpainter=outpainters[0], captioner=captioner, processes=_Processes(0, 2))

    assert sorted(outpainters[0].seeds) == [10, 10, 12, 12] and outpainters[1].seeds == [11]  # a, c | b
    assert set(captioner.sizes) == {(128, 128)}  # the captioner sees only the known center
    results = report.results
    assert results["settings"]["unconditional"]["images"] == 3
    assert results["settings"]["captioner"]["images"] == 2
    assert results["generation"] | {"generated": 5, "reused": 0, "processes": 2} == results["generation"]
    (skip,) = results["skipped"]
    assert skip["setting"] == "captioner" and "no usable" in skip["reason"]
    meta = read_metadata(config.out_dir / "pred" / "captioner" / "a.png")["vip"]
    assert meta["prompts"]["center"] == "A wooden barn."
    assert meta["eval"]["seed"] == 10
    # resumed: nothing generated again, the captioner not even asked
    captioner.sizes.clear()
    again = run_eval(config, outpainter=_NoiseOutpainter(), captioner=captioner, processes=_Processes())
    assert again.results["generation"]["reused"] == 5 and captioner.sizes == [
        (128, 128)
    ]  # only b, which failed (on its first question)


# ------------------------------------------------------------------------------------- C-T-S options


@pytest.mark.parametrize(
    "args, message",
    [
        (["--no-cts", "--region-strength", "0.5"], "--region-strength has no effect with --no-cts"),
        (["--region-strength", "1.5"], "--region-strength 1.5 is out of range: use 0 to 1"),
        (["--deep-cache", "99"], "--deep-cache 99 is out of range: use 0 (off) or 2 to 50"),
    ],
)
def test_cts_options_are_checked_before_anything_loads(vip_main, tmp_path, args, message):
    (tmp_path / "data").mkdir()
    result = vip_main("eval", tmp_path / "data", "--out", tmp_path / "run", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"prompts": {"captioner": "x"}}, "`captioner`/`captioner_url`/`captioner_model` are for the 'captioner'"),
        ({"prompts": {"center": "a barn"}}, "an eval's prompts come from its `settings`"),
        ({"generation": {"cts": False, "region_strength": 0.5}}, "`region_strength` has no effect with `cts=False`"),
        ({"generation": {"region_strength": 1.5}}, "`region_strength` 1.5 is out of range: use 0 to 1"),
        ({"generation": {"num_images": 2}}, "`num_images` 2: an eval scores one output per image"),
        ({"limit": 0}, "`limit` 0 is out of range: use 1 or more"),
    ],
)
def test_eval_settings_are_checked_by_the_library_naming_its_arguments(tmp_path, changes, message):
    from dataclasses import replace

    from vipcli_model.config import PromptConfig
    from vipcli_model.errors import OptionError
    from vipcli_model.evaluation.runner import EvalConfig
    from vipcli_model.evaluation.settings import EVAL_GENERATION

    built = {
        "prompts": lambda values: PromptConfig(**values),
        "generation": lambda values: replace(EVAL_GENERATION, **values),
    }
    fields = {name: built[name](value) if name in built else value for name, value in changes.items()}
    with pytest.raises(OptionError, match=re.escape(message)):
        EvalConfig(data_dir=tmp_path / "data", out_dir=tmp_path / "run", **fields).check()


def test_eval_captioner_options_without_the_captioner_setting_name_the_flags(vip_main, tmp_path):
    (tmp_path / "data").mkdir()
    result = vip_main(
        "eval", tmp_path / "data", "--out", tmp_path / "run", "--captioner-url", "http://x/v1", "--captioner-model", "m"
    )
    assert result.returncode == 2 and not (tmp_path / "run").exists()
    assert "--captioner/--captioner-url/--captioner-model are for the 'captioner' entry of --prompts" in result.stderr


def test_cts_settings_reach_generation_and_the_run_record(tmp_path):
    from dataclasses import replace

    from vipcli_model.evaluation.runner import EvalConfig, _check_run_file
    from vipcli_model.evaluation.settings import EVAL_GENERATION

    plain = EvalConfig(data_dir=tmp_path, out_dir=tmp_path / "run")
    assert plain.generation_for(3).cts is True and plain.generation_for(3).region_strength is None
    tuned = EvalConfig(
        data_dir=tmp_path, out_dir=tmp_path / "run", generation=replace(EVAL_GENERATION, region_strength=0.8)
    )
    assert tuned.generation_for(3).region_strength == 0.8 and tuned.run_record()["region_strength"] == 0.8
    off = EvalConfig(data_dir=tmp_path, out_dir=tmp_path / "run", generation=replace(EVAL_GENERATION, cts=False))
    assert off.generation_for(3).cts is False and off.run_record()["cts"] is False
    # a run folder made before these settings existed resumes with the defaults, not with another strength
    run_file = tmp_path / "run.json"
    old = {key: value for key, value in plain.run_record().items() if key not in ("cts", "region_strength")}
    run_file.write_text(json.dumps(old))
    _check_run_file(run_file, plain.run_record())
    from vipcli_model.errors import OptionError

    with pytest.raises(OptionError, match="region_strength None -> 0.8"):
        _check_run_file(run_file, tuned.run_record())


def test_deep_cache_reaches_generation_and_the_run_record(tmp_path):
    """`vip eval --deep-cache N` (a speed lever judged on the toy world) reaches every generation, and a run
    folder made with it does not resume without it (nor the other way round)."""
    from dataclasses import replace

    from vipcli_model.errors import OptionError
    from vipcli_model.evaluation.runner import EvalConfig, _check_run_file
    from vipcli_model.evaluation.settings import EVAL_GENERATION

    plain = EvalConfig(data_dir=tmp_path, out_dir=tmp_path / "run")
    cached = EvalConfig(data_dir=tmp_path, out_dir=tmp_path / "run", generation=replace(EVAL_GENERATION, deep_cache=2))
    assert plain.generation_for(0).deep_cache == 0 and cached.generation_for(5).deep_cache == 2
    assert "deep_cache" not in plain.run_record() and cached.run_record()["deep_cache"] == 2
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps(plain.run_record()))
    with pytest.raises(OptionError, match="deep_cache"):
        _check_run_file(run_file, cached.run_record())
    run_file.write_text(json.dumps(cached.run_record()))
    with pytest.raises(OptionError, match="deep_cache"):
        _check_run_file(run_file, plain.run_record())
