"""C-T-S: the Center-Total-Surrounding decoupled cross-attention of VIP, as a diffusers attention processor.

In every cross-attention (``attn2``) of the UNet, image tokens attend to three prompts::

    out = (1 - g) * Attn(x, total) + g * ((1 - m) * Attn_C(x, center) + m * Attn_S(x, surrounding))

``m`` is the outpaint mask (1 = generate) area-averaged to the block's token grid, so tokens on
the seam blend the two branches; ``g`` in [0, 1] is a per-block gate.

Two modes (METHOD.md, section 3, flaws 2 and 3):

* zero-shot: the center and surrounding branches reuse the base ``attn2`` weights, so no new
  parameters are needed and region prompts work with any SD inpainting checkpoint; every gate
  equals ``region_strength``.
* trainable: a :class:`CTSAdapter` adds low-rank deltas to ``to_k`` and ``to_v`` (optionally
  ``to_out``) of each branch (zero-initialised, so a fresh adapter equals zero-shot mode exactly) and a bounded
  gate per block (a sigmoid of a logit initialised at the zero-shot strength).

Only ``attn2`` is decoupled; queries are shared by the three branches (one ``to_q``), and the
shared ``to_out`` projection is applied once to the blended attention (it is affine and the
blend weights sum to 1, so this equals blending three projected outputs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelLoadError, ModelNotFoundError

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
    ``to_out`` (optional) acts on every image token the branch covers. Measured on the full-size
    SD-1.5 UNet at 512 px on CPU (``benchmarks/bench_cts.py``): x1.026 step time with K/V deltas,
    x1.037 with ``to_out`` deltas too (zero-shot: x1.041); K/V deltas are the default as the
    smaller adapter (0.18% of the UNet's parameters against 0.28%) at no measurable loss of speed.
    """

    def __init__(self, cross_dim: int, inner_dim: int, out_dim: int, rank: int, out_delta: bool = False) -> None:
        super().__init__()
        self.to_k = LowRankDelta(cross_dim, inner_dim, rank)
        self.to_v = LowRankDelta(cross_dim, inner_dim, rank)
        self.to_out = LowRankDelta(inner_dim, out_dim, rank) if out_delta else None


class CTSAdapter(nn.Module):
    """Trainable C-T-S weights for one UNet: low-rank branch deltas and one gate per attn2.

    Low-rank deltas rather than full copies of attn2 (the official code triplicates whole
    transformer blocks, +534M parameters): at rank 16 the adapter adds 0.2% of SD-1.5's UNet
    parameters (full attn2 copies would add 10%), see ``benchmarks/bench_cts.py``.
    """

    def __init__(
        self,
        unet: nn.Module,
        rank: int = 16,
        region_strength: float = DEFAULT_REGION_STRENGTH,
        out_delta: bool = False,
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
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / ADAPTER_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in self.state_dict().items()}
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
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path, unet: nn.Module, base_model: str = "") -> "CTSAdapter":
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
                f"'{base_model or 'unknown'}' (UNet {fingerprint}): pass the matching --model"
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
            raise ModelLoadError(f"adapter '{path}' is incomplete or corrupt (missing {len(missing)}, unexpected {len(unexpected)} tensors)")
        adapter.base_model = metadata.get("base_model", "")
        return adapter


def _same_model(first: str, second: str) -> bool:
    """Two model specs naming the same thing (paths compared resolved; hub ids as written)."""
    if first == second:
        return True
    try:
        return Path(first).expanduser().resolve() == Path(second).expanduser().resolve()
    except OSError:
        return False


def resolve_adapter_path(spec: str) -> Path:
    """A local .safetensors file, a folder holding ``cts_adapter.safetensors``, or a hub repo id."""
    from . import hub

    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / ADAPTER_FILENAME
        if candidate.is_file():
            return candidate
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        raise ModelNotFoundError(f"adapter folder '{spec}' holds no {ADAPTER_FILENAME}")
    if hub.is_local(spec):
        raise ModelNotFoundError(f"adapter path '{spec}' does not exist")

    from .model_files import ADAPTER

    return hub.ensure_model(spec, ADAPTER, what="adapter").folder / ADAPTER_FILENAME


# ---------------------------------------------------------------- per-call state


@dataclass
class CTSState:
    """What one pipeline call (or training step) gives every C-T-S processor.

    center, surrounding: text embeddings with the same batch layout as the total embeddings the
                         UNet receives (with classifier-free guidance: ``[negatives; positives]``).
    mask:                (1 or B, 1, h, w) region to generate at latent resolution, soft, 1 = generate.
    """

    center: torch.Tensor
    surrounding: torch.Tensor
    mask: torch.Tensor
    _token_masks: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # Every token grid a UNet level can have (each level halves the latent, rounding up), pooled
        # once here: the processors only look them up, so a compiled UNet sees no cache being filled.
        height, width = self.mask.shape[-2:]
        while True:
            pooled = F.adaptive_avg_pool2d(self.mask.float(), (height, width))
            self._token_masks[height * width] = pooled.flatten(2).transpose(1, 2).clamp(0.0, 1.0)
            if height == 1 and width == 1:
                break
            height, width = math.ceil(height / 2), math.ceil(width / 2)

    def token_mask(self, num_tokens: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The mask area-averaged to a block's token grid: (1 or B, num_tokens, 1)."""
        pooled = self._token_masks.get(num_tokens)
        if pooled is None:
            raise ValueError(f"C-T-S: cannot map {num_tokens} tokens onto the latent mask {tuple(self.mask.shape[-2:])}")
        return pooled.to(device=device, dtype=dtype)


class CTSController:
    """Installs C-T-S processors on a UNet's attn2 layers for the duration of a call, then restores them."""

    def __init__(
        self,
        unet: nn.Module,
        adapter: CTSAdapter | None = None,
        region_strength: float | None = None,
    ) -> None:
        if region_strength is not None and not 0.0 <= region_strength <= 1.0:
            raise ValueError(f"region_strength must be in [0, 1], got {region_strength}")
        if adapter is not None and adapter.fingerprint != unet_fingerprint(unet):
            raise ModelLoadError("the C-T-S adapter does not match this UNet")
        self.unet = unet
        self.adapter = adapter
        self.region_strength = region_strength
        self.block_names = cross_attention_names(unet)
        self.state: CTSState | None = None
        self._saved: dict | None = None

    @property
    def mode(self) -> str:
        return "trainable" if self.adapter is not None else "zero-shot"

    def gate(self, index: int) -> torch.Tensor | float:
        """The gate of block ``index``: the explicit strength, else the adapter's, else the default."""
        if self.region_strength is not None:
            return self.region_strength
        if self.adapter is not None:
            return torch.sigmoid(self.adapter.gate_logits[index])
        return DEFAULT_REGION_STRENGTH

    def gate_values(self) -> list[float]:
        return [float(self.gate(index)) for index in range(len(self.block_names))]

    def install(self) -> None:
        if self._saved is not None:
            return
        current = self.unet.attn_processors
        self._saved = dict(current)
        processors = dict(current)
        for index, name in enumerate(self.block_names):
            processors[name] = CTSAttnProcessor(self, index, base=current[name])
        self.unet.set_attn_processor(processors)

    def remove(self) -> None:
        if self._saved is None:
            return
        self.unet.set_attn_processor(self._saved)
        self._saved = None

    @contextmanager
    def active(self, state: CTSState) -> Iterator["CTSController"]:
        """C-T-S on for the ``with`` body, the UNet's own processors restored after it (even on error)."""
        self.install()
        self.state = state
        try:
            yield self
        finally:
            self.state = None
            self.remove()


# ---------------------------------------------------------------- the processor


class CTSAttnProcessor:
    """The attn2 processor. Without a C-T-S state (or with a zero gate in zero-shot mode) it is the base processor.

    A plain object, not an ``nn.Module``: the trainable weights live in the adapter, so the UNet's
    own ``state_dict`` never changes when C-T-S is installed.
    """

    def __init__(self, controller: CTSController, index: int, base) -> None:
        self.controller = controller
        self.index = index
        self.base = base

    def _branch(
        self,
        attn,
        query: torch.Tensor,
        context: torch.Tensor,
        batch_size: int,
        attention_mask: torch.Tensor | None,
        deltas: BranchDeltas | None,
    ) -> torch.Tensor:
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)
        if deltas is not None:
            key = key + deltas.to_k(context)
            value = value + deltas.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        return out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        controller = self.controller
        state = controller.state
        gate = controller.gate(self.index)
        adapter = controller.adapter
        if state is None or encoder_hidden_states is None or (adapter is None and float(gate) == 0.0):
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        if state.center.shape[0] != batch_size or state.surrounding.shape[0] != batch_size:
            raise ValueError(
                f"C-T-S: region embeddings have batch {state.center.shape[0]}/{state.surrounding.shape[0]}, "
                f"the UNet runs batch {batch_size}"
            )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        head_dim = query.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)

        dtype = query.dtype
        num_tokens = hidden_states.shape[1]
        mask = state.token_mask(num_tokens, dtype, hidden_states.device)  # (1|B, N, 1), 1 = generate
        key_index = str(self.index)
        center_deltas = adapter.center[key_index] if adapter is not None else None
        surround_deltas = adapter.surrounding[key_index] if adapter is not None else None
        if isinstance(gate, torch.Tensor):
            gate = gate.to(dtype)

        # Total for every token (unless the gate shuts it out); Center only for tokens with known
        # area, Surrounding only for tokens with area to generate: region prompts cost attention
        # only where they apply.
        mixed = None
        if not (not isinstance(gate, torch.Tensor) and gate == 1.0):
            total = self._branch(attn, query, encoder_hidden_states, batch_size, attention_mask, None)
            mixed = (1 - gate) * total
        if mixed is None:
            mixed = query.new_zeros(batch_size, num_tokens, query.shape[1] * query.shape[-1])
        projected = None
        # Under torch.compile (``--compile``) every branch runs on every token, weighted by the mask:
        # the same sums without the data-dependent skip, which would split the UNet into many graphs.
        sparse = not torch.compiler.is_compiling()
        for context, deltas, weight in (
            (state.center, center_deltas, gate * (1 - mask)),
            (state.surrounding, surround_deltas, gate * mask),
        ):
            needed = (weight != 0).any(dim=0)[:, 0] if sparse and isinstance(weight, torch.Tensor) else None
            if needed is not None and not bool(needed.any()):
                continue
            out_deltas = deltas.to_out if deltas is not None else None
            if needed is None or bool(needed.all()):
                part = weight * self._branch(attn, query, context.to(dtype), batch_size, attention_mask, deltas)
                mixed = mixed + part
                delta = out_deltas(part) if out_deltas is not None else None
                if delta is not None:
                    projected = delta if projected is None else projected + delta
                continue
            index = needed.nonzero()[:, 0]
            sub_mask = attention_mask[:, :, index] if attention_mask is not None else None
            out = self._branch(attn, query[:, :, index], context.to(dtype), batch_size, sub_mask, deltas)
            part = weight[:, index] * out
            mixed = mixed.index_add(1, index, part)
            if out_deltas is not None:
                delta = out_deltas(part)
                base = projected if projected is not None else delta.new_zeros(batch_size, num_tokens, delta.shape[-1])
                projected = base.index_add(1, index, delta)
        hidden_states = attn.to_out[0](mixed)
        if projected is not None:  # the branches' own output projections (low-rank deltas)
            hidden_states = hidden_states + projected
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
