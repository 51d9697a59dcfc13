"""Check `vip eval`'s metrics against the reference implementations, on the same weights and images.

Compares, with one set of random FID-Inception weights saved in the standard file layout:

1. pytorch-fid (``InceptionV3([3])``, ``calculate_frechet_distance``, and the whole
   ``calculate_fid_given_paths`` pipeline on two folders) with ``FIDInceptionV3`` and
   ``score_pairs``: features at 192x192 and at other sizes (the resize to 299), and FID;
2. torch-fidelity (``FeatureExtractorInceptionV3``, its IS and KID code) with ours: 2048-d features
   and unbiased logits at 299x299 (where its TensorFlow-style resize is the identity), IS and KID;
3. torchmetrics' LPIPS (AlexNet, same random backbone and the packaged lin weights) with ours.

The reference packages need torchvision, which vip does not: run this where pytorch-fid,
torch-fidelity and torchvision import, e.g. after ``pip download --no-deps pytorch-fid
torch-fidelity torchvision==<the one built for your torch>`` and unzipping the wheels into a
folder passed with ``--site``. ``--shim-torchvision-ops`` skips torchvision's C-op registration
(needed when its compiled ops do not match the installed torch; Inception and AlexNet use none).

    python benchmarks/verify_eval_reference.py --site /tmp/ref-site --shim-torchvision-ops

Measured 2026-11-23 on a CPU (torch 2.13, pytorch-fid 0.3.0, torch-fidelity 0.4.0, torchvision
0.28.0 with the shim, torchmetrics 1.9), random weights, 8 skimage photos / 12 images a folder:

- pytorch-fid vs vip features, at 192x192, 300x200 and 299x299: max |diff| 0 (bit-identical);
- FID on identical features: pytorch-fid ``calculate_frechet_distance`` 11.561429, vip
  ``frechet_distance`` 11.561429; vip ``fid_from_features`` (exact low-rank trace, used below 2049
  images) 11.564597, 2.7e-4 relative (pytorch-fid's ``sqrtm`` error on the singular product);
  whole folders: ``calculate_fid_given_paths`` 11.561414 (31 s) vs ``score_pairs`` 11.564597 (6 s);
- torch-fidelity vs vip at 299x299 with the same input scaling: features and unbiased logits
  max |diff| 1.2e-5 (float32 rounding); with each its own scaling ((x-128)/128 vs 2x/255-1) 0.24 on
  features up to 25: torch-fidelity's numbers are not pytorch-fid's, vip follows pytorch-fid;
- IS and KID against torch-fidelity's functions: equal to 10 digits;
- LPIPS against torchmetrics: max |diff| 1.5e-8.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", action="append", default=[], help="folder to put on sys.path (unzipped wheels)")
    parser.add_argument("--shim-torchvision-ops", action="store_true", help="skip torchvision's C-op registration")
    parser.add_argument("--images", type=int, default=12, help="images per folder for the FID comparison")
    args = parser.parse_args()
    sys.path[:0] = args.site
    if args.shim_torchvision_ops:
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    torch.set_grad_enabled(False)

    import pytorch_fid.fid_score as fid_score
    import pytorch_fid.inception as pf_inception
    import skimage.data
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    from vipcli_model.evaluation import metrics
    from vipcli_model.evaluation.inception import FIDInceptionV3, InceptionExtractor, load_inception
    from vipcli_model.evaluation.protocol import PROTOCOLS
    from vipcli_model.evaluation.runner import ScoreConfig, score_pairs

    work = Path(tempfile.mkdtemp(prefix="vip-eval-reference-"))
    torch.manual_seed(0)
    ours = FIDInceptionV3()
    for module in ours.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    # random running statistics and affine terms too, so that batch norm is really exercised
    for module in ours.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.8, 1.2)
            module.bias.data.normal_(0, 0.1)
    ours.fc.weight.data.normal_(0, 0.05)
    weights = work / "random-fid-inception.pth"
    torch.save(ours.state_dict(), weights)
    ours = load_inception(weights)
    state = torch.load(weights, weights_only=True)
    report: list[str] = []

    def line(text: str) -> None:
        print(text, flush=True)
        report.append(text)

    # ---------------------------------------------------------------- images
    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field", "cat"]
    photos = []
    for name in names:
        array = getattr(skimage.data, name)()
        photos.append(Image.fromarray(array).convert("RGB"))
    sizes = [(192, 192), (300, 200), (299, 299)]

    # ---------------------------------------------------------------- 1. pytorch-fid features
    pf_inception.load_state_dict_from_url = lambda *a, **k: state  # its weights = ours
    reference = pf_inception.InceptionV3([pf_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    line("## pytorch-fid InceptionV3 vs vip FIDInceptionV3 (same random weights)")
    for size in sizes:
        batch = np.stack([np.asarray(photo.resize(size, Image.Resampling.BILINEAR)) for photo in photos])
        tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0  # ToTensor
        theirs = reference(tensor)[0].squeeze(3).squeeze(2).numpy()
        mine = InceptionExtractor(ours)(list(batch)).pool
        scale = np.abs(theirs).max()
        line(
            f"- {size[0]}x{size[1]}: max |diff| of 2048-d features {np.abs(theirs - mine).max():.3g} (features up to "
            f"{scale:.3g})"
        )

    # ---------------------------------------------------------------- 1b. pytorch-fid's FID on folders
    line("\n## pytorch-fid calculate_fid_given_paths vs vip score_pairs (two folders)")
    gt_dir, pred_dir = work / "gt", work / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    rng = np.random.default_rng(0)
    count = 0
    for photo in photos:
        for flip in range(4):
            if count >= args.images:
                break
            crop = photo.resize((256, 256)).crop((flip * 16, flip * 16, flip * 16 + 192, flip * 16 + 192))
            crop.save(gt_dir / f"{count:03d}.png")
            noisy = np.clip(np.asarray(crop).astype(np.float64) + rng.normal(0, 12, (192, 192, 3)), 0, 255).astype(
                np.uint8
            )
            Image.fromarray(noisy).save(pred_dir / f"{count:03d}.png")
            count += 1
    start = time.time()
    try:
        theirs_fid = fid_score.calculate_fid_given_paths([str(pred_dir), str(gt_dir)], 50, "cpu", 2048, num_workers=0)
        note = ""
    except ValueError as exc:  # "Imaginary component": pytorch-fid gives up on some singular sets
        theirs_fid, note = float("nan"), f" (pytorch-fid raised: {exc})"
    their_seconds = time.time() - start
    start = time.time()
    report_ = score_pairs(
        pred_dir,
        gt_dir,
        protocol=PROTOCOLS["standard"],
        scoring=ScoreConfig(feature_weights=str(weights), device="cpu"),
        out_dir=work / "out",
    )
    our_seconds = time.time() - start
    ours_fid = next(iter(report_.results["settings"].values()))["fid"]
    line(
        f"- {count} images a folder: pytorch-fid FID {theirs_fid:.6f} ({their_seconds:.0f} s){note}; vip FID "
        f"{ours_fid:.6f} ({our_seconds:.0f} s, all metrics)"
    )
    line(f"- relative difference {abs(theirs_fid - ours_fid) / max(abs(theirs_fid), 1e-12):.2e}")

    # same features, both Fréchet routes
    features_gt = InceptionExtractor(ours)(
        [np.asarray(Image.open(p).convert("RGB")) for p in sorted(gt_dir.glob("*.png"))]
    ).pool
    features_pred = InceptionExtractor(ours)(
        [np.asarray(Image.open(p).convert("RGB")) for p in sorted(pred_dir.glob("*.png"))]
    ).pool
    mu1, s1 = features_pred.mean(0), np.cov(features_pred, rowvar=False)
    mu2, s2 = features_gt.mean(0), np.cov(features_gt, rowvar=False)
    try:
        ref = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    except ValueError as exc:
        ref = float("nan")
        line(f"- pytorch-fid calculate_frechet_distance raised: {exc}")
    line(
        f"- on identical features: pytorch-fid calculate_frechet_distance {ref:.6f}; vip frechet_distance "
        f"{metrics.frechet_distance(mu1, s1, mu2, s2):.6f}; vip fid_from_features (low-rank exact) "
        f"{metrics.fid_from_features(features_pred, features_gt):.6f}"
    )

    # ---------------------------------------------------------------- 2. torch-fidelity
    line("\n## torch-fidelity FeatureExtractorInceptionV3 vs vip (299x299 input, where both resizes are the identity)")
    fidelity = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights)
    )
    batch = np.stack([np.asarray(photo.resize((299, 299), Image.Resampling.BILINEAR)) for photo in photos])
    their_pool, their_logits = fidelity(torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous())
    their_pool, their_logits = their_pool.double().numpy(), their_logits.double().numpy()
    # torch-fidelity scales (x - 128) / 128 (the TF graph), pytorch-fid and vip 2 (x / 255) - 1:
    # feed our network x / 256, which it maps to (x - 128) / 128, to compare the networks alone
    same_input = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 256.0
    pool, logits_ = (t.double().numpy() for t in ours(same_input))
    line(
        f"- same normalisation: 2048-d features max |diff| {np.abs(their_pool - pool).max():.3g}, unbiased logits "
        f"{np.abs(their_logits - logits_).max():.3g}"
    )
    mine = InceptionExtractor(ours)(list(batch))
    line(
        f"- each its own normalisation (torch-fidelity (x-128)/128, pytorch-fid/vip 2x/255-1): features max |diff| "
        f"{np.abs(their_pool - mine.pool).max():.3g} (features up to {np.abs(mine.pool).max():.3g})"
    )
    logits = torch.from_numpy(rng.normal(0, 3, (200, 1008)))
    their_is = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)
    my_is = metrics.inception_score(logits.numpy(), 10)
    line(
        f"- IS on 200 random logit rows: torch-fidelity {their_is['inception_score_mean']:.10f} ± "
        f"{their_is['inception_score_std']:.10f}; vip {my_is[0]:.10f} ± {my_is[1]:.10f}"
    )
    fake, real = rng.normal(0.1, 1, (150, 64)), rng.normal(0, 1, (120, 64))
    their_kid = kid_features_to_metric(
        torch.from_numpy(fake),
        torch.from_numpy(real),
        kid_subsets=50,
        kid_subset_size=100,
        verbose=False,
        kid_kernel="poly",
        kid_kernel_poly_degree=3,
        kid_kernel_poly_gamma=None,
        kid_kernel_poly_coef0=1,
        rng_seed=2020,
    )
    my_kid = metrics.kernel_inception_distance(fake, real, subsets=50, subset_size=100)
    line(
        f"- KID (50 subsets of 100): torch-fidelity {their_kid['kernel_inception_distance_mean']:.10f} ± "
        f"{their_kid['kernel_inception_distance_std']:.10f}; vip {my_kid[0]:.10f} ± {my_kid[1]:.10f}"
    )

    # ---------------------------------------------------------------- 3. LPIPS
    line("\n## torchmetrics LPIPS (alex) vs vip LPIPS (same random AlexNet, packaged lin weights)")
    try:
        from torchmetrics.functional.image.lpips import _LPIPS

        from vipcli_model.evaluation import perceptual

        reference_lpips = _LPIPS(pretrained=True, net="alex", pnet_rand=True).eval()
        mine_lpips = perceptual.LPIPS()
        mine_lpips.net.features.load_state_dict({key: value for key, value in _alexnet_state(reference_lpips).items()})
        lins = torch.load(perceptual.lpips_lin_weights(), map_location="cpu", weights_only=True)
        for index, lin in enumerate(mine_lpips.lins):
            lin.weight.data.copy_(lins[f"lin{index}.model.1.weight"])
        a = (
            torch.from_numpy(np.stack([np.asarray(p.resize((192, 192))) for p in photos[:4]]))
            .permute(0, 3, 1, 2)
            .float()
            / 255
        )
        b = (
            torch.from_numpy(np.stack([np.asarray(p.resize((192, 192))) for p in photos[4:8]]))
            .permute(0, 3, 1, 2)
            .float()
            / 255
        )
        theirs_l = reference_lpips(a, b, normalize=True).flatten().numpy()
        mine_l = mine_lpips.eval()(a, b).numpy()
        line(f"- 4 pairs: max |diff| {np.abs(theirs_l - mine_l).max():.3g} (values {np.round(mine_l, 4).tolist()})")
    except Exception as exc:  # noqa: BLE001 - optional part of the check
        line(f"- skipped: {type(exc).__name__}: {exc}")
    print(f"\n(work files in {work})")


def _alexnet_state(reference) -> dict:
    """torchmetrics splits AlexNet's features into slices; map them back to features.N keys."""
    state = {}
    for slice_name in ("slice1", "slice2", "slice3", "slice4", "slice5"):
        for index, layer in getattr(reference.net, slice_name).named_children():
            for key, value in layer.state_dict().items():
                state[f"{index}.{key}"] = value
    return state


if __name__ == "__main__":
    main()
