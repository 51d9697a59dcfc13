"""Metrics that need a second network, each optional: LPIPS and the CLIP score.

Both are skipped (with a note in the results) when their weights cannot be had, never failing a run.

LPIPS (Zhang et al. 2018, v0.1, AlexNet): the ``lpips`` package's computation, without torchvision:
inputs scaled to [-1, 1] then shifted/scaled per channel, the five ReLU outputs of AlexNet's
``features``, each unit-normalised over channels, squared differences weighted by the learned
1x1 "lin" layers, averaged over space, summed over layers. The lin weights ship inside the
torchmetrics and lpips packages (``alex.pth``); the AlexNet backbone is torchvision's ImageNet
checkpoint ``alexnet-owt-7be5be79.pth``, read from the vip metrics cache or torch hub's checkpoint
folder, or downloaded from download.pytorch.org when the network is on.

CLIP score (Hessel et al. 2021, torchmetrics' ``CLIPScore`` convention): 100 * max(cos(image, text), 0)
between the CLIP embeddings of the output with its known center painted grey (so only the
generated surrounding is seen, the grey of ``vip caption``'s training prompts) and the Surrounding
prompt it was generated from. Needs ``--clip-model`` (a transformers CLIP: hub id or folder).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from vipcli_model.errors import ModelLoadError, VipError
from vipcli_model.evaluation.inception import metrics_cache_dir, torch_hub_checkpoints
from vipcli_model.models import hub
from vipcli_model.models.catalog import CLIP

logger = logging.getLogger(__name__)

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"
ALEXNET_SHA256_PREFIX = "7be5be79"  # torchvision names its files by their sha256 prefix
LPIPS_CHANNELS = (64, 192, 384, 256, 256)
MASK_GREY = (128, 128, 128)


class Unavailable(Exception):
    """A metric's weights cannot be had; the message says what is missing and how to provide it."""


# ============================================================================ LPIPS


class AlexNetFeatures(nn.Module):
    """torchvision's ``alexnet().features`` (same indices, so its checkpoint loads), returning the 5 ReLU outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.taps = (1, 4, 7, 9, 11)  # relu1..relu5

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
            if index == self.taps[-1]:
                break
        return outputs


class LPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone; ``forward`` takes two N x 3 x H x W batches in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = AlexNetFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(channels, 1, kernel_size=1, bias=False) for channels in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        first = ((2 * first - 1) - self.shift) / self.scale
        second = ((2 * second - 1) - self.shift) / self.scale
        total = torch.zeros(first.shape[0], device=first.device, dtype=first.dtype)
        for lin, a, b in zip(self.lins, self.net(first), self.net(second)):
            a = a / (torch.sqrt(torch.sum(a**2, dim=1, keepdim=True)) + 1e-10)
            b = b / (torch.sqrt(torch.sum(b**2, dim=1, keepdim=True)) + 1e-10)
            total = total + lin((a - b) ** 2).mean(dim=(1, 2, 3))
        return total


def lpips_lin_weights() -> Path | None:
    """``alex.pth`` (the learned lin layers) from an installed torchmetrics or lpips package."""
    for package, relative in (
        ("torchmetrics", "functional/image/lpips_models/alex.pth"),
        ("lpips", "weights/v0.1/alex.pth"),
    ):
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / relative
            if candidate.is_file():
                return candidate
    return None


def alexnet_weights(download: bool = True) -> Path | None:
    for candidate in (metrics_cache_dir() / ALEXNET_FILE, torch_hub_checkpoints() / ALEXNET_FILE):
        if candidate.is_file():
            return candidate
    if hub.offline() or not download:
        return None
    target = metrics_cache_dir() / ALEXNET_FILE
    try:
        hub.download_url(ALEXNET_URL, target, what="the LPIPS AlexNet weights", sha256_prefix=ALEXNET_SHA256_PREFIX)
    except VipError as exc:  # LPIPS is optional: any failure means "skip it"
        logger.info("%s", exc)
        return None
    return target


def load_lpips(device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS with its weights, or ``Unavailable`` saying which file is missing."""
    lin_path = lpips_lin_weights()
    if lin_path is None:
        raise Unavailable(
            "LPIPS skipped: its lin weights ship with torchmetrics (reinstall vip: pip install vip-outpaint)"
        )
    backbone_path = alexnet_weights()
    if backbone_path is None:
        raise Unavailable(
            f"LPIPS skipped: AlexNet weights {ALEXNET_FILE} not cached and not downloadable "
            f"(get {ALEXNET_URL} into {metrics_cache_dir()})"
        )
    model = LPIPS()
    try:
        backbone = torch.load(backbone_path, map_location="cpu", weights_only=True)
        model.net.load_state_dict({k: v for k, v in backbone.items() if k.startswith("features.")})
        lins = torch.load(lin_path, map_location="cpu", weights_only=True)
        for index, lin in enumerate(model.lins):
            lin.weight.data.copy_(lins[f"lin{index}.model.1.weight"])
    except Exception as exc:  # noqa: BLE001 - a bad file is reported, not fatal
        raise Unavailable(
            f"LPIPS skipped: cannot load {backbone_path} / {lin_path} ({' '.join(str(exc).split())[:120]})"
        ) from exc
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def lpips_distances(
    model: LPIPS, first: Sequence[np.ndarray], second: Sequence[np.ndarray], batch_size: int = 16
) -> list[float]:
    """LPIPS of each pair of uint8 H x W x 3 arrays (pairs of one size per batch)."""
    device = next(model.parameters()).device
    results = [float("nan")] * len(first)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(first):
        by_size.setdefault(tuple(image.shape), []).append(index)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            a = torch.from_numpy(np.stack([first[i] for i in chunk])).to(device).permute(0, 3, 1, 2).float() / 255.0
            b = torch.from_numpy(np.stack([second[i] for i in chunk])).to(device).permute(0, 3, 1, 2).float() / 255.0
            for i, value in zip(chunk, model(a, b).cpu().tolist()):
                results[i] = float(value)
    return results


# ============================================================================ CLIP score


class ClipScorer:
    """A transformers CLIP model that scores images against texts."""

    def __init__(self, model, processor, name: str, device: torch.device | str = "cpu") -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.device = torch.device(device)

    @classmethod
    def load(cls, spec: str, device: torch.device | str = "cpu") -> ClipScorer:
        from transformers import CLIPModel, CLIPProcessor

        spec = hub.resolve_spec(spec)
        local = Path(spec).expanduser()
        source = (
            str(local)
            if local.exists()
            else str(hub.ensure_model(spec, CLIP, what="CLIP model", option="clip_model", single_file=False).folder)
        )

        def load():
            return CLIPModel.from_pretrained(source), CLIPProcessor.from_pretrained(source)

        model, processor = hub.load_with_errors(spec, "CLIP model", load)
        if not hasattr(model, "get_image_features"):
            raise ModelLoadError(f"`clip_model` '{spec}' is not a CLIP model")
        return cls(model.to(device).eval().requires_grad_(False), processor, spec, device)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], texts: Sequence[str], batch_size: int = 16) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(images), batch_size):
            batch_images = list(images[start : start + batch_size])
            batch_texts = list(texts[start : start + batch_size])
            inputs = self.processor(
                text=batch_texts, images=batch_images, return_tensors="pt", padding=True, truncation=True
            ).to(self.device)
            image_embeds = _as_tensor(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
            text_embeds = _as_tensor(
                self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
            )
            cosine = F.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
            scores.extend((100.0 * cosine.clamp(min=0)).cpu().tolist())
        return scores


def _as_tensor(output) -> torch.Tensor:
    # transformers 5 may return a model output object where 4.x returned the pooled embeddings
    if isinstance(output, torch.Tensor):
        return output
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise ModelLoadError("the CLIP model returned no embeddings")


def surrounding_only(image: Image.Image, known_box: tuple[int, int, int, int]) -> Image.Image:
    """The output with its known center painted grey: what the CLIP score looks at."""
    masked = image.convert("RGB").copy()
    masked.paste(MASK_GREY, known_box)
    return masked
