"""The Inception network of FID and IS, as pytorch-fid runs it, without torchvision.

Published outpainting FIDs (QueryOTR, PQDiff, VIP) come from pytorch-fid: the TensorFlow
Inception graph of 2015-12-05 ported to PyTorch (weights ``pt_inception-2015-12-05-6726825d.pth``),
images scaled to [0, 1], resized to 299x299 with ``F.interpolate(mode="bilinear",
align_corners=False)``, scaled to [-1, 1], and the 2048-d output of the final average pool used as
features. ``FIDInceptionV3`` below is that network, module for module:

- the stem and ``Mixed_*`` blocks of torchvision's ``Inception3`` with the FID patches of
  pytorch-fid (``FIDInceptionA/C/E_1/E_2``: TensorFlow's average pool ignores padded zeros; the
  last block max-pools), which are also torch-fidelity's ``FeatureExtractorInceptionV3``;
- the same parameter names, so the standard weights file loads with ``load_state_dict`` unchanged;
- ``fc`` (2048 -> 1008 classes) for the Inception Score, on the *unbiased* logits
  (``pool @ fc.weight.T``, no bias) as torch-fidelity and torchmetrics compute IS.

torchvision is not needed (pytorch-fid and torch-fidelity both import it, and a PyPI torchvision
often does not match the installed torch). ``benchmarks/verify_eval_reference.py`` compares these
features with pytorch-fid's and torch-fidelity's own modules on the same weights.

The weights come from, in order: ``--feature-weights PATH``; the vip metrics cache
(``$VIP_CACHE_DIR/metrics`` or ``<user cache>/vip/metrics``); torch hub's checkpoint folder, where
pytorch-fid and torch-fidelity put them; else they are downloaded into the vip metrics cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs
import torch
import torch.nn as nn
import torch.nn.functional as F

from vipcli_model.errors import InputError, ModelLoadError, ModelNotFoundError
from vipcli_model.models import hub

logger = logging.getLogger(__name__)

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # the file name's hash part (torch.hub's convention)
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILE}"
# torch-fidelity's copy of the same file (same converted TF graph), under its own name.
TORCH_FIDELITY_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299
POOL_DIM = 2048
NUM_CLASSES = 1008


def metrics_cache_dir() -> Path:
    """``$VIP_CACHE_DIR/metrics`` when set, else ``<user cache>/vip/metrics`` (beside the model cache)."""
    if os.environ.get("VIP_CACHE_DIR"):
        return Path(os.environ["VIP_CACHE_DIR"]).expanduser() / "metrics"
    return Path(platformdirs.user_cache_dir("vip", appauthor=False)) / "metrics"


def torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


# ============================================================================ the network


class BasicConv2d(nn.Module):
    """Conv (no bias) + batch norm (eps 1e-3, as TensorFlow) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 3x3 average pool does not count the padded zeros (pytorch-fid's FID patch).
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class InceptionE(nn.Module):
    """``max_pool=False``: pytorch-fid's FIDInceptionE_1; ``True``: FIDInceptionE_2 (the TF graph max-pools)."""

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        branch_pool = self.branch_pool(pooled)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's ``InceptionV3(use_fid_inception=True)`` plus the 1008-class ``fc`` for IS.

    ``forward`` takes images in [0, 1] (N x 3 x H x W, any size) and returns
    ``(pool, logits_unbiased)``: the 2048-d final average pool (FID, KID) and the class logits
    without the fc bias (IS).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(POOL_DIM, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # [0, 1] -> [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        pool = F.adaptive_avg_pool2d(x, output_size=(1, 1)).flatten(1)
        return pool, pool @ self.fc.weight.T


# ============================================================================ weights


def weights_help() -> str:
    return (
        f"the FID Inception weights {FID_WEIGHTS_FILE} come from {FID_WEIGHTS_URL}: download that file "
        "once with network access and pass it as `feature_weights` (or put it in "
        f"{metrics_cache_dir()})"
    )


def find_inception_weights(path: str | Path | None = None, *, download: bool = True) -> Path:
    """The weights file to use: ``path``, else a cached copy, else a download into the metrics cache.

    Raises ``ModelNotFoundError`` with one line naming the file, its URL and ``--feature-weights``
    when none is local and the network is off or fails.
    """
    if path is not None:
        given = Path(path).expanduser()
        if not given.is_file():
            raise InputError(f"`feature_weights` {path}: no such file ({'a folder' if given.is_dir() else 'missing'})")
        return given
    for candidate in (
        metrics_cache_dir() / FID_WEIGHTS_FILE,
        torch_hub_checkpoints() / FID_WEIGHTS_FILE,
        torch_hub_checkpoints() / TORCH_FIDELITY_WEIGHTS_FILE,
    ):
        if candidate.is_file():
            return candidate
    if hub.offline() or not download:
        raise ModelNotFoundError(f"offline and not cached: {weights_help()}")
    target = metrics_cache_dir() / FID_WEIGHTS_FILE
    logger.info("downloading %s into %s", FID_WEIGHTS_URL, target)
    try:
        hub.download_url(
            FID_WEIGHTS_URL, target, what="the FID Inception weights", sha256_prefix=FID_WEIGHTS_SHA256_PREFIX
        )
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc}: {weights_help()}") from exc
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_inception(path: Path, device: torch.device | str = "cpu") -> FIDInceptionV3:
    """``FIDInceptionV3`` with the weights of ``path`` (a state dict as pytorch-fid ships it), in eval mode."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable or not a torch file
        raise ModelLoadError(f"cannot read Inception weights {path}: {' '.join(str(exc).split())[:160]}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"Inception weights {path} hold a {type(state).__name__}, not a state dict")
    model = FIDInceptionV3()
    result = model.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        problems = missing[:2] + result.unexpected_keys[:2]
        raise ModelLoadError(
            f"{path} is not the FID Inception network ({len(missing)} missing, {len(result.unexpected_keys)} "
            f"unexpected keys, e.g. {', '.join(problems)}): use {FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL}"
        )
    return model.to(device).eval().requires_grad_(False)


# ============================================================================ feature extraction


@dataclass
class InceptionFeatures:
    """Features of a set of images, in the order they were given."""

    pool: np.ndarray  # N x 2048 float64: FID, KID
    logits: np.ndarray  # N x 1008 float64: unbiased logits, IS


class InceptionExtractor:
    """Runs ``FIDInceptionV3`` over uint8 RGB arrays in batches (images of one size per batch).

    ``model`` may be a weights file: the network is then loaded on the first call only (a run
    whose features are all cached loads nothing).
    """

    def __init__(self, model: FIDInceptionV3 | Path, device: torch.device | str = "cpu", batch_size: int = 32) -> None:
        self._model = model
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))

    @property
    def model(self) -> FIDInceptionV3:
        if not isinstance(self._model, FIDInceptionV3):
            self._model = load_inception(Path(self._model), self.device)
        return self._model

    @torch.no_grad()
    def __call__(
        self, images: Sequence[np.ndarray], progress: Callable[[int], None] | None = None
    ) -> InceptionFeatures:
        pool = np.zeros((len(images), POOL_DIM), dtype=np.float64)
        logits = np.zeros((len(images), NUM_CLASSES), dtype=np.float64)
        # Group by size so that every batch stacks; per-image results do not depend on the batch.
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(index)
        with _full_fp32():
            for indices in by_size.values():
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    batch = torch.from_numpy(np.stack([images[i] for i in chunk])).to(self.device)
                    batch = batch.permute(0, 3, 1, 2).float() / 255.0  # as torchvision's ToTensor
                    batch_pool, batch_logits = self.model(batch)
                    pool[chunk] = batch_pool.double().cpu().numpy()
                    logits[chunk] = batch_logits.double().cpu().numpy()
                    if progress is not None:
                        progress(len(chunk))
        return InceptionFeatures(pool=pool, logits=logits)


class _full_fp32:
    """Turn TF32 off on CUDA while features are computed (full fp32 convolutions, as on CPU)."""

    def __enter__(self) -> None:
        self.saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc) -> None:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved
