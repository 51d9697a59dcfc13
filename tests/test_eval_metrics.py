"""`vipcli_model.evaluation`: the metrics against direct computations, the protocol geometry, sharding,
the Inception network's layout, and the optional networks (LPIPS, CLIP score) at tiny size.

No network, no real weights: reference numbers come from scipy / skimage / a direct loop.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from vipcli_model.errors import InputError, ModelLoadError, ModelNotFoundError, OptionError
from vipcli_model.evaluation import metrics
from vipcli_model.evaluation.protocol import PROTOCOLS, ground_truth, known_region, resolve_protocol, shard

# ------------------------------------------------------------------------------------ FID


def _direct_fid(features1: np.ndarray, features2: np.ndarray) -> float:
    """The textbook formula, straight from scipy: |mu1 - mu2|² + Tr(S1 + S2 - 2 sqrtm(S1 S2))."""
    mu1, mu2 = features1.mean(0), features2.mean(0)
    s1, s2 = np.cov(features1, rowvar=False), np.cov(features2, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


@pytest.mark.parametrize(
    "count, dims",
    [(400, 12), (13, 40)],  # more images than dimensions (pytorch-fid's path); fewer (the exact low-rank path)
)
def test_frechet_distance_matches_scipy_on_gaussian_features(count, dims):
    rng = np.random.default_rng(count)
    mixing = rng.normal(size=(dims, dims)) / math.sqrt(dims)
    real = rng.normal(size=(count, dims)) @ mixing
    fake = rng.normal(size=(count + 7, dims)) @ (mixing * 1.3) + 0.4
    expected = _direct_fid(fake, real)
    assert metrics.fid_from_features(fake, real) == pytest.approx(expected, rel=1e-6)
    assert metrics.frechet_distance(
        *metrics.feature_statistics(fake), *metrics.feature_statistics(real)
    ) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_of_shifted_gaussians_is_the_shift():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 6))
    assert metrics.fid_from_features(features, features) == pytest.approx(0.0, abs=1e-8)
    mu, sigma = np.zeros(4), np.eye(4)
    assert metrics.frechet_distance(mu, sigma, mu + 2.0, sigma) == pytest.approx(16.0)  # |shift|² = 4 * 2²


def test_frechet_distance_eigen_fallback_equals_the_trace_formula():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T, b @ b.T
    expected = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert metrics._trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_needs_two_images():
    with pytest.raises(OptionError, match="at least 2 images"):
        metrics.feature_statistics(np.zeros((1, 8)))


# ------------------------------------------------------------------------------------ KID


def _direct_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Binkowski et al.'s estimator written as loops over pairs: k(a, b) = (a.b / d + 1)^3."""
    d = x.shape[1]
    m = len(x)

    def k(a, b):
        return (float(a @ b) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_a_direct_unbiased_polynomial_mmd():
    rng = np.random.default_rng(2)
    fake = rng.normal(size=(9, 16)) + 0.3
    real = rng.normal(size=(9, 16))
    mean, std, size = metrics.kernel_inception_distance(fake, real, subsets=5, subset_size=1000)
    # subsets capped at the whole set are permutations of it: every subset gives the full-set value
    assert size == 9
    assert mean == pytest.approx(_direct_unbiased_mmd2(fake, real), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_subsets_shrink_to_small_sets_and_spread_gives_a_std():
    rng = np.random.default_rng(3)
    fake, real = rng.normal(size=(30, 8)) + 0.5, rng.normal(size=(20, 8))
    mean, std, size = metrics.kernel_inception_distance(fake, real, subsets=20)
    assert size == 10  # half the smaller set: subsets differ
    assert mean > 0 and std > 0
    assert [metrics.kid_subset_size(n, n) for n in (2, 3, 1000, 1999, 2000, 50_000)] == [2, 2, 500, 999, 1000, 1000]
    # the same seed gives the same subsets
    assert metrics.kernel_inception_distance(fake, real, subsets=20) == (mean, std, size)
    with pytest.raises(OptionError, match="at least 2 images"):
        metrics.kernel_inception_distance(fake[:1], real)


# ------------------------------------------------------------------------------------ IS


def test_inception_score_of_uniform_predictions_is_one():
    mean, std = metrics.inception_score(np.zeros((20, 1008)), splits=2)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0)


@pytest.mark.parametrize("count", [1, 4, 10])
def test_inception_score_of_confident_distinct_classes_is_their_number(count):
    logits = np.full((count, 1008), -50.0)
    logits[np.arange(count), np.arange(count) * 7] = 50.0  # one class each, all different
    mean, std = metrics.inception_score(logits, splits=1)
    assert mean == pytest.approx(count, rel=1e-6)


def test_inception_score_splits():
    logits = np.full((40, 1008), -50.0)
    logits[np.arange(40), np.arange(40)] = 50.0
    mean, std = metrics.inception_score(logits, splits=4)  # 10 distinct classes per split
    assert mean == pytest.approx(10.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    assert [metrics.is_splits_for(n) for n in (3, 25, 99, 100, 1000)] == [1, 2, 9, 10, 10]
    with pytest.raises(OptionError, match="splits"):
        metrics.inception_score(logits[:3], splits=4)


# ------------------------------------------------------------------------------------ pixels


def _photos():
    import skimage.data

    return skimage.data.astronaut()[100:292, 100:292], skimage.data.coffee()[:192, 100:292]


def test_psnr_and_ssim_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    first, second = _photos()
    assert metrics.psnr(first, second) == pytest.approx(
        peak_signal_noise_ratio(first, second, data_range=255), rel=1e-12
    )
    expected = structural_similarity(
        first, second, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1
    )
    assert metrics.ssim(first, second) == pytest.approx(expected, rel=1e-12)
    assert metrics.ssim(first, first) == pytest.approx(1.0)
    assert metrics.psnr(first, first) == math.inf
    assert math.isnan(metrics.ssim(first[:8, :8], second[:8, :8]))  # smaller than the 11x11 window


def test_masked_psnr_counts_only_the_masked_pixels():
    first = np.zeros((4, 4, 3), np.uint8)
    second = first.copy()
    second[0, 0] = 10  # one differing pixel
    mask = np.zeros((4, 4), bool)
    mask[0, :] = True  # 4 pixels, one of them wrong
    assert metrics.psnr(first, second, mask) == pytest.approx(10 * math.log10(255**2 / (100 / 4)))
    assert metrics.psnr(first, second, ~mask) == math.inf


# ------------------------------------------------------------------------------------ protocol


def test_protocol_table():
    boxes = {name: (p.size, p.known_size, p.known_box, round(p.area_factor, 2)) for name, p in PROTOCOLS.items()}
    assert boxes == {
        "standard": ((192, 192), (128, 128), (32, 32, 160, 160), 2.25),
        "5x": ((192, 192), (86, 86), (53, 53, 139, 139), 4.98),
        "11.7x": ((192, 192), (56, 56), (68, 68, 124, 124), 11.76),
    }
    custom = resolve_protocol("custom", size="256x128", ratio="2x")
    assert custom.known_size == (128, 64) and custom.known_box == (64, 32, 192, 96)
    assert resolve_protocol(None, ratio="1.5x").known_size == (128, 128)  # --ratio alone means custom
    assert resolve_protocol(None) is PROTOCOLS["standard"]


@pytest.mark.parametrize(
    "name, size, ratio, message",
    [
        ("9x", None, None, "not one of"),
        ("standard", "256x256", None, "only apply to `protocol` custom"),
        ("custom", None, None, "needs `ratio`"),
        ("custom", None, "1x", "above 1x"),
    ],
)
def test_protocol_errors_name_the_option(name, size, ratio, message):
    with pytest.raises(OptionError, match=message):
        resolve_protocol(name, size=size, ratio=ratio)


def test_ground_truth_and_known_region():
    image = Image.new("RGB", (300, 200), (10, 20, 30))
    truth = ground_truth(image, PROTOCOLS["standard"])
    assert truth.size == (192, 192)
    known = known_region(truth, PROTOCOLS["5x"])
    assert known.size == (86, 86)


def test_shards_cover_every_item_exactly_once():
    items = list(range(23))
    for count in (1, 2, 3, 4, 8, 30):
        shards = [shard(items, index, count) for index in range(count)]
        assert sorted(item for part in shards for item in part) == items
        assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    with pytest.raises(OptionError):
        shard(items, 2, 2)


# ------------------------------------------------------------------------------------ prompts


def test_prompt_settings_and_prompts_file(tmp_path):
    from vipcli_model.evaluation.runner import parse_prompt_settings, read_prompts_file

    file = tmp_path / "mine.jsonl"
    file.write_text(
        json.dumps({"image": "sub/a.png", "center": "a cat", "surrounding": "a garden"})
        + "\n\n"
        + json.dumps({"image": "./b.jpg", "surrounding": "snow"})
        + "\n",
        encoding="utf-8",
    )
    settings = parse_prompt_settings(["unconditional", str(file)])
    assert [(s.name, s.kind) for s in settings] == [("unconditional", "unconditional"), ("mine", "file")]
    assert parse_prompt_settings(None)[0].name == "unconditional"
    records = read_prompts_file(file)
    assert set(records) == {"sub/a", "b"}
    assert records["sub/a"].total == "Center: a cat; Surrounding: a garden"
    assert records["b"].surrounding == "snow"
    with pytest.raises(OptionError, match="neither"):
        parse_prompt_settings([str(tmp_path / "missing.jsonl")])
    with pytest.raises(OptionError, match="twice"):
        parse_prompt_settings(["unconditional", "unconditional"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png"}\n{"center": "no image"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 2"):
        read_prompts_file(bad)


# ------------------------------------------------------------------------------------ Inception


def test_inception_has_the_standard_weights_layout():
    """The parameter names and shapes of pytorch-fid's FID Inception (torchvision Inception3 with
    the FID blocks, 1008 classes, no aux head), so the published weights file loads unchanged."""
    from vipcli_model.evaluation.inception import FIDInceptionV3

    state = FIDInceptionV3().state_dict()
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Conv2d_1a_3x3.bn.running_var"] == (32,)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)
    assert not any(key.startswith("AuxLogits") for key in shapes)
    # torchvision documents 27,161,264 parameters for inception_v3 (1000 classes, aux head);
    # less the aux head (3,326,696), plus 8 more classes (8 x 2049): 23,850,960
    assert sum(parameter.numel() for parameter in FIDInceptionV3().parameters()) == 23_850_960
    assert len([key for key in shapes if key.endswith(".conv.weight")]) == 94


def test_inception_weights_errors(tmp_path, monkeypatch):
    from vipcli_model.evaluation.inception import (
        FID_WEIGHTS_FILE,
        FID_WEIGHTS_URL,
        find_inception_weights,
        load_inception,
    )

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ModelNotFoundError) as caught:
        find_inception_weights(None)  # offline (conftest) and nothing cached
    message = str(caught.value)
    assert FID_WEIGHTS_FILE in message and FID_WEIGHTS_URL in message and "`feature_weights`" in message
    assert "\n" not in message
    with pytest.raises(InputError, match="`feature_weights`"):
        find_inception_weights(tmp_path / "nope.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ModelLoadError, match="not the FID Inception network"):
        load_inception(wrong)
    # a copy in torch hub's folder (where pytorch-fid downloads it) is found
    hub_copy = tmp_path / "torch" / "hub" / "checkpoints" / FID_WEIGHTS_FILE
    hub_copy.parent.mkdir(parents=True)
    hub_copy.write_bytes(b"x")
    assert find_inception_weights(None) == hub_copy


# ------------------------------------------------------------------------------------ LPIPS, CLIP


def test_lpips_with_a_random_backbone(tmp_path, monkeypatch):
    from vipcli_model.evaluation import perceptual

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(perceptual.Unavailable, match="alexnet-owt-7be5be79.pth"):
        perceptual.load_lpips()  # offline, nothing cached: skipped with a note, never a failure
    torch.manual_seed(0)
    backbone = perceptual.AlexNetFeatures()
    target = perceptual.metrics_cache_dir() / perceptual.ALEXNET_FILE
    target.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in backbone.features.state_dict().items()}, target)
    model = perceptual.load_lpips()
    first, second = _photos()
    same, different = perceptual.lpips_distances(model, [first, first], [first, second])
    assert same == pytest.approx(0.0, abs=1e-7)
    assert different > 0


def _tiny_clip(folder: Path) -> Path:
    from tiny_models import write_clip_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    write_clip_tokenizer(folder / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tok")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return _tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def test_clip_score_of_the_surrounding(tiny_clip_dir):
    from vipcli_model.evaluation.perceptual import ClipScorer, surrounding_only

    scorer = ClipScorer.load(str(tiny_clip_dir))
    first, second = (Image.fromarray(array) for array in _photos())
    masked = surrounding_only(first, (32, 32, 160, 160))
    assert np.asarray(masked)[100, 100].tolist() == [128, 128, 128]
    assert np.array_equal(np.asarray(masked)[:32], np.asarray(first)[:32])
    scores = scorer([masked, second], ["snowy mountains", "a cup of coffee"])
    assert len(scores) == 2 and all(0.0 <= score <= 100.0 for score in scores)
    assert scorer([masked], ["snowy mountains"]) == pytest.approx(scores[:1], abs=1e-4)  # batch-independent


def test_pred_gt_pairing_refuses_two_outputs_with_one_name(tmp_path):
    """x.png and x.jpg in --pred: which is x's output is ambiguous; one line naming both, before any model loads."""
    from vipcli_model.evaluation.scoring import score_pairs

    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(gt / "x.png")
    Image.new("RGB", (64, 64), (10, 200, 10)).save(pred / "x.png")
    Image.new("RGB", (64, 64), (10, 10, 200)).save(pred / "x.jpg")
    with pytest.raises(InputError, match=r"`pred_dir` .*x\.(png|jpg) and x\.(png|jpg) share the name 'x'"):
        score_pairs(pred, gt)
