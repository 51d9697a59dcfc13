"""The numbers of the benchmark, as the reference implementations compute them.

Distribution metrics, on Inception features (``inception.py``):

- ``frechet_distance``: FID, pytorch-fid's ``calculate_frechet_distance`` (scipy ``sqrtm`` of
  sigma1 @ sigma2, an eps offset when the product is singular, the real part when the imaginary
  part is numerical noise); statistics from ``feature_statistics`` (mean, ``np.cov`` rowvar=False,
  float64) as pytorch-fid's ``calculate_activation_statistics``. ``fid_from_features`` takes the
  same trace exactly from the features when there are fewer images than dimensions (2048), much
  faster than ``sqrtm``; it agrees with pytorch-fid up to ``sqrtm``'s own error on the ~2000 zero
  eigenvalues of the singular product (each adds sqrt(rounding noise) to the trace), which
  ``benchmarks/verify_eval_reference.py`` measures.
- ``kernel_inception_distance``: KID, torch-fidelity's estimator (Binkowski et al.): cubic
  polynomial kernel k(x, y) = (x.y / d + 1)^3, the unbiased MMD² over 100 random subsets of 1000,
  mean and standard deviation over subsets, rng seed 2020. Below 2000 images the subsets hold
  half the smaller set (reported as ``kid_subset_size``), so that the standard deviation is not 0.
- ``inception_score``: IS, torch-fidelity's ``isc_features_to_metric``: unbiased logits, rows
  shuffled with seed 2020, 10 splits, exp(E[KL(p(y|x) || p(y))]) per split, mean and std.

Pixel metrics, per image pair (uint8 RGB arrays):

- ``psnr``: 10 log10(255² / MSE) over all channels of the (masked) pixels; ``inf`` when identical.
- ``ssim``: Wang et al.'s SSIM as ``skimage.metrics.structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)``: an 11x11 Gaussian
  window, per channel, averaged, borders of 5 px left out of the mean.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np

from vipcli_model.errors import OptionError

logger = logging.getLogger(__name__)

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10
RNG_SEED = 2020  # torch-fidelity's default for IS shuffling and KID subsets


def _scipy_linalg():
    import scipy.linalg  # on first use: `import vipcli_model.evaluation.metrics` stays light

    return scipy.linalg


# ============================================================================ FID


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of N x D features (float64), as pytorch-fid."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise OptionError(f"FID needs at least 2 images, got {features.shape[0] if features.ndim == 2 else 0}")
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||² + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), pytorch-fid's computation.

    Where pytorch-fid would stop ("imaginary component" above 1e-3, which small sets with fewer
    images than feature dimensions can cause), the trace of the square root is taken from the
    eigenvalues of sqrt(sigma1) sigma2 sqrt(sigma1) instead, which is the same quantity computed
    stably, and a warning is logged.
    """
    linalg = _scipy_linalg()
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise OptionError(f"feature statistics differ in shape: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular products are handled below
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            logger.warning("FID: singular product of covariances; adding %g to the diagonal", eps)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            covmean = covmean.real
        else:
            largest = float(np.max(np.abs(covmean.imag)))
            logger.warning("FID: sqrtm has an imaginary component %.3g; using the eigenvalue form", largest)
            return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * _trace_sqrt_product(sigma1, sigma2))
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr(sqrt(sigma1 sigma2)) for symmetric PSD matrices: sum of sqrt(eig(sqrt(s1) s2 sqrt(s1)))."""
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return float(np.sqrt(np.clip(inner, 0, None)).sum())


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID of two feature sets (N x D each).

    With at least as many images as dimensions (D = 2048: sets of 2049+ images) this is
    ``frechet_distance`` on the statistics, as pytorch-fid. With fewer, both covariances are
    singular, scipy's ``sqrtm`` of their product is slow (minutes on a CPU) and noisy, and the same
    trace is computed exactly from the centered features A1, A2 instead:
    Tr sqrt(S1 S2) = ||A1 A2^T||_* / sqrt((n1 - 1)(n2 - 1)) (the nonzero eigenvalues of S1 S2 are
    the squared singular values of A1 A2^T, scaled).
    """
    features1 = np.asarray(features1, dtype=np.float64)
    features2 = np.asarray(features2, dtype=np.float64)
    mu1, sigma1 = feature_statistics(features1)
    mu2, sigma2 = feature_statistics(features2)
    if min(len(features1), len(features2)) > features1.shape[1]:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    centered1, centered2 = features1 - mu1, features2 - mu2
    singular = np.linalg.svd(centered1 @ centered2.T, compute_uv=False)
    trace_sqrt = float(singular.sum()) / math.sqrt((len(features1) - 1) * (len(features2) - 1))
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


# ============================================================================ KID


def polynomial_kernel(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> np.ndarray:
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """torch-fidelity's "unbiased" MMD²: within-set sums without the diagonal, the cross term over m²."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kid_subset_size(n1: int, n2: int, preferred: int = KID_SUBSET_SIZE) -> int:
    """torch-fidelity's 1000 for large sets; below 2000 images, half the smaller set (at least 2).

    Subsets as large as the set are all the same set (torch-fidelity reports a standard deviation
    of 0 for 1000 test images); half-size subsets differ, so their spread means something. The
    mean is unbiased at any subset size, so it stays comparable.
    """
    smaller = min(n1, n2)
    return min(preferred, smaller, max(2, smaller // 2))


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    *,
    subsets: int = KID_SUBSETS,
    subset_size: int | None = None,
    seed: int = RNG_SEED,
) -> tuple[float, float, int]:
    """KID (mean, std over subsets, subset size used). ``features1`` generated, ``features2`` real
    (torch-fidelity's input order, which fixes the random subsets). ``subset_size`` None:
    ``kid_subset_size``; a number is capped at the smaller set."""
    features1 = np.asarray(features1, dtype=np.float64)
    features2 = np.asarray(features2, dtype=np.float64)
    if subset_size is None:
        size = kid_subset_size(len(features1), len(features2))
    else:
        size = min(subset_size, len(features1), len(features2))
    if size < 2:
        raise OptionError(f"KID needs at least 2 images per set, got {len(features1)} and {len(features2)}")
    rng = np.random.RandomState(seed)
    values = np.zeros(subsets)
    for index in range(subsets):
        x = features1[rng.choice(len(features1), size, replace=False)]
        y = features2[rng.choice(len(features2), size, replace=False)]
        values[index] = mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(x, y), polynomial_kernel(y, y))
    return float(np.mean(values)), float(np.std(values)), size


# ============================================================================ IS


def is_splits_for(count: int, preferred: int = IS_SPLITS) -> int:
    """10 splits (the standard); fewer for small sets so that every split holds at least 10 images."""
    return max(1, min(preferred, count // 10))


def inception_score(
    logits: np.ndarray, splits: int = IS_SPLITS, *, shuffle: bool = True, seed: int = RNG_SEED
) -> tuple[float, float]:
    """IS (mean, std over splits) from N x C class logits."""
    logits = np.asarray(logits, dtype=np.float64)
    count = logits.shape[0]
    if not 1 <= splits <= count:
        raise OptionError(f"IS with {splits} splits needs at least {splits} images, got {count}")
    if shuffle:
        logits = logits[np.random.RandomState(seed).permutation(count)]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for index in range(splits):
        chunk = slice(index * count // splits, (index + 1) * count // splits)
        q = p[chunk].mean(axis=0, keepdims=True)
        kl = (p[chunk] * (log_p[chunk] - np.log(q))).sum(axis=1).mean()
        scores.append(math.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


# ============================================================================ pixels


def psnr(
    prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None, data_range: float = 255.0
) -> float:
    """PSNR in dB over the pixels where ``mask`` (H x W bool) is set; ``inf`` when they are identical."""
    prediction = np.asarray(prediction, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if prediction.shape != target.shape:
        raise OptionError(f"PSNR of images of different shapes {prediction.shape} and {target.shape}")
    error = (prediction - target) ** 2
    if mask is not None:
        error = error[np.asarray(mask, dtype=bool)]
    if error.size == 0:
        return float("nan")
    mse = float(error.mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_WINDOW = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1  # 11


def ssim(prediction: np.ndarray, target: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of two H x W x C images (Gaussian window, skimage's settings); nan below 11x11."""
    from scipy.ndimage import gaussian_filter

    prediction = np.asarray(prediction, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if prediction.shape != target.shape:
        raise OptionError(f"SSIM of images of different shapes {prediction.shape} and {target.shape}")
    if prediction.ndim == 2:
        prediction, target = prediction[..., None], target[..., None]
    if min(prediction.shape[:2]) < SSIM_WINDOW:
        return float("nan")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    pad = (SSIM_WINDOW - 1) // 2

    def blur(values: np.ndarray) -> np.ndarray:
        return gaussian_filter(values, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    scores = []
    for channel in range(prediction.shape[2]):
        x, y = prediction[..., channel], target[..., channel]
        ux, uy = blur(x), blur(y)
        vx = blur(x * x) - ux * ux
        vy = blur(y * y) - uy * uy
        vxy = blur(x * y) - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        scores.append(s[pad:-pad, pad:-pad].mean(dtype=np.float64))
    return float(np.mean(scores))
