"""The trainable part of C-T-S: low-rank branch deltas and one bounded gate per cross-attention
(``CTSAdapter``), its safetensors file, and the UNet geometry an adapter is tied to.

The processor that uses these weights, and installs itself on the UNet, is in ``cts.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import torch
from torch import nn

from vipcli_model.errors import ModelLoadError
from vipcli_model.files import atomic_write_bytes

logger = logging.getLogger(__name__)

DEFAULT_REGION_STRENGTH = 0.5
ADAPTER_FORMAT = "vip-cts-adapter"
ADAPTER_FORMAT_VERSION = "1"
ADAPTER_FILENAME = "cts_adapter.safetensors"


def cross_attention_names(unet: nn.Module) -> list[str]:
    """Processor names of every cross-attention (attn2) in the UNet, in a stable order."""
    return sorted(name for name in unet.attn_processors if name.endswith("attn2.processor"))


def _attention_module(unet: nn.Module, processor_name: str) -> nn.Module:
    return unet.get_submodule(processor_name[: -len(".processor")])


def unet_fingerprint(unet: nn.Module) -> str:
    """A short hash of the cross-attention geometry: adapters only load onto the UNet shape they were trained on."""
    shapes = []
    for name in cross_attention_names(unet):
        attn = _attention_module(unet, name)
        shapes.append([name, attn.to_k.in_features, attn.to_k.out_features, attn.to_out[0].out_features, attn.heads])
    payload = json.dumps({"in_channels": unet.config.in_channels, "attn2": shapes}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the trainable part


class LowRankDelta(nn.Module):
    """``up(down(x))``: a rank-r update of a linear layer, zero at initialisation."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.normal_(self.down.weight, std=1.0 / rank)
        nn.init.zeros_(self.up.weight)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(inputs))


class BranchDeltas(nn.Module):
    """The learned difference of one branch (center or surrounding) from the base attn2.

    ``to_k`` / ``to_v`` act on the 77 text tokens only, so they cost nothing per image token.
    ``to_out`` (optional) acts on every image token. K/V deltas are the default: the smaller
    adapter, at no measurable loss of speed (``benchmarks/bench_cts.py`` measures both on the
    full-size SD-1.5 UNet).
    """

    def __init__(self, cross_dim: int, inner_dim: int, out_dim: int, rank: int, out_delta: bool = False) -> None:
        super().__init__()
        self.to_k = LowRankDelta(cross_dim, inner_dim, rank)
        self.to_v = LowRankDelta(cross_dim, inner_dim, rank)
        self.to_out = LowRankDelta(inner_dim, out_dim, rank) if out_delta else None


class CTSAdapter(nn.Module):
    """Trainable C-T-S weights for one UNet: low-rank branch deltas and one gate per attn2.

    Low-rank deltas rather than full copies of attn2 (the official code triplicates whole
    transformer blocks): ``benchmarks/bench_cts.py`` counts the parameters each choice adds.
    """

    def __init__(
        self, unet: nn.Module, rank: int = 16, region_strength: float = DEFAULT_REGION_STRENGTH, out_delta: bool = False
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if not 0.0 < region_strength < 1.0:
            raise ValueError(f"initial region_strength must be in (0, 1) for a trainable gate, got {region_strength}")
        self.rank = rank
        self.out_delta = out_delta
        self.block_names = cross_attention_names(unet)
        self.fingerprint = unet_fingerprint(unet)
        self.center = nn.ModuleDict()
        self.surrounding = nn.ModuleDict()
        for index, name in enumerate(self.block_names):
            attn = _attention_module(unet, name)
            dims = (attn.to_k.in_features, attn.to_k.out_features, attn.to_out[0].out_features)
            self.center[str(index)] = BranchDeltas(*dims, rank, out_delta)
            self.surrounding[str(index)] = BranchDeltas(*dims, rank, out_delta)
        logit = math.log(region_strength / (1.0 - region_strength))
        self.gate_logits = nn.Parameter(torch.full((len(self.block_names),), logit))

    def gates(self) -> torch.Tensor:
        """Per-block gates, bounded to (0, 1)."""
        return torch.sigmoid(self.gate_logits)

    def parameter_groups(self, lr: float, gate_lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups: branch deltas with weight decay, gates with their own lr and none."""
        deltas = [p for name, p in self.named_parameters() if name != "gate_logits"]
        return [
            {"params": deltas, "lr": lr, "weight_decay": weight_decay, "name": "cts_deltas"},
            {"params": [self.gate_logits], "lr": gate_lr, "weight_decay": 0.0, "name": "cts_gates"},
        ]

    # ---- files

    def save(self, path: str | Path, base_model: str = "") -> Path:
        """Write the adapter as safetensors with its metadata (atomically)."""
        from safetensors.torch import save

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / ADAPTER_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in self.state_dict().items()
        }
        metadata = {
            "format": ADAPTER_FORMAT,
            "format_version": ADAPTER_FORMAT_VERSION,
            "base_model": base_model,
            "base_fingerprint": self.fingerprint,
            "rank": str(self.rank),
            "out_delta": "1" if self.out_delta else "0",
            "blocks": json.dumps(self.block_names),
            "gates": json.dumps([round(float(g), 6) for g in self.gates().detach()]),
        }
        atomic_write_bytes(path, save(tensors, metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | Path, unet: nn.Module, base_model: str = "") -> CTSAdapter:
        """Load an adapter for ``unet``; refuse one made for another model or format version."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
            raise ModelLoadError(f"adapter '{path}' is not a readable safetensors file ({exc})") from exc
        if metadata.get("format") != ADAPTER_FORMAT:
            raise ModelLoadError(f"'{path}' is not a vip C-T-S adapter (format {metadata.get('format')!r})")
        if metadata.get("format_version") != ADAPTER_FORMAT_VERSION:
            raise ModelLoadError(
                f"adapter '{path}' has format version {metadata.get('format_version')}, this vip reads version "
                f"{ADAPTER_FORMAT_VERSION}: upgrade vip or re-train the adapter"
            )
        fingerprint = unet_fingerprint(unet)
        if metadata.get("base_fingerprint") != fingerprint:
            raise ModelLoadError(
                f"adapter '{path}' was trained for base model '{metadata.get('base_model') or 'unknown'}' "
                f"(UNet {metadata.get('base_fingerprint')}), which does not match this model "
                f"'{base_model or 'unknown'}' (UNet {fingerprint}): pass the matching `model`"
            )
        if base_model and metadata.get("base_model") and not _same_model(metadata["base_model"], base_model):
            logger.warning(
                "adapter %s was trained on '%s', loading it onto '%s' (same UNet shape)",
                path,
                metadata["base_model"],
                base_model,
            )
        adapter = cls(unet, rank=int(metadata["rank"]), out_delta=metadata.get("out_delta") == "1")
        missing, unexpected = adapter.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ModelLoadError(
                f"adapter '{path}' is incomplete or corrupt (missing {len(missing)}, unexpected {len(unexpected)} "
                "tensors)"
            )
        return adapter


def adapter_metadata(path: str | Path) -> dict[str, str]:
    """The metadata an adapter file was saved with (format, base_model, rank, gates, ...)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _same_model(first: str, second: str) -> bool:
    """Two model specs naming the same thing (paths compared resolved; hub ids as written)."""
    if first == second:
        return True
    try:
        return Path(first).expanduser().resolve() == Path(second).expanduser().resolve()
    except OSError:
        return False
