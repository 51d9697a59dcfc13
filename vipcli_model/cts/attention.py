"""C-T-S: the Center-Total-Surrounding decoupled cross-attention of VIP, as a diffusers attention processor.

In every cross-attention (``attn2``) of the UNet, image tokens attend to three prompts::

    out = (1 - g) * Attn(x, total) + g * ((1 - m) * Attn_C(x, center) + m * Attn_S(x, surrounding))

``m`` is the outpaint mask (1 = generate) area-averaged to the block's token grid, so tokens on
the seam blend the two branches; ``g`` in [0, 1] is a per-block gate.

Two modes:

* zero-shot: the center and surrounding branches reuse the base ``attn2`` weights, so no new
  parameters are needed and region prompts work with any SD inpainting checkpoint; every gate
  equals ``region_strength``.
* trainable: a :class:`CTSAdapter` adds low-rank deltas to ``to_k`` and ``to_v`` (optionally
  ``to_out``) of each branch (zero-initialised, so a fresh adapter equals zero-shot mode exactly) and a bounded
  gate per block (a sigmoid of a logit initialised at the zero-shot strength).
  The adapter, its file and the UNet geometry it is tied to are in ``adapter.py``.

Only ``attn2`` is decoupled; queries are shared by the three branches (one ``to_q``), and the
shared ``to_out`` projection is applied once to the blended attention (it is affine and the
blend weights sum to 1, so this equals blending three projected outputs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.hooks import ModelHook
from torch import nn

from vipcli_model.cts.adapter import (
    ADAPTER_FILENAME,
    ADAPTER_FORMAT,
    ADAPTER_FORMAT_VERSION,
    DEFAULT_REGION_STRENGTH,
    BranchDeltas,
    CTSAdapter,
    LowRankDelta,
    adapter_metadata,
    cross_attention_names,
    unet_fingerprint,
)
from vipcli_model.cts.hooks import hooks_held
from vipcli_model.errors import ModelLoadError

# The adapter's names, imported from here by the pipeline, the recipe and the CLI.
__all__ = [
    "ADAPTER_FILENAME",
    "ADAPTER_FORMAT",
    "ADAPTER_FORMAT_VERSION",
    "DEFAULT_REGION_STRENGTH",
    "BranchDeltas",
    "CTSAdapter",
    "CTSAttnProcessor",
    "CTSCall",
    "CTSController",
    "CTSState",
    "LowRankDelta",
    "TokenRouting",
    "adapter_metadata",
    "cross_attention_names",
    "unet_fingerprint",
]


# ---------------------------------------------------------------- per-call state


@dataclass
class TokenRouting:
    """Which image tokens of one token grid each region branch must attend for (one pipeline call).

    center:      token indices with some known area (m < 1 for some example), None = every token
    surrounding: token indices with some area to generate (m > 0 for some example), None = every token
    """

    center: torch.Tensor | None
    surrounding: torch.Tensor | None


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
    _routings: dict[int, TokenRouting] = field(default_factory=dict, repr=False)

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

    def _pooled(self, num_tokens: int) -> torch.Tensor:
        pooled = self._token_masks.get(num_tokens)
        if pooled is None:
            grid = tuple(self.mask.shape[-2:])
            raise ValueError(f"C-T-S: cannot map {num_tokens} tokens onto the latent mask {grid}")
        return pooled

    def token_mask(self, num_tokens: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The mask area-averaged to a block's token grid: (1 or B, num_tokens, 1)."""
        return self._pooled(num_tokens).to(device=device, dtype=dtype)

    def token_routing(self, num_tokens: int) -> TokenRouting:
        """The tokens each region branch covers on this grid, computed once per grid per call.

        The mask is the same for every block of a level and every denoising step, so the one host
        synchronisation this needs (reading the mask) happens once per grid size, not per branch,
        block and step. Eager mode only: a compiled UNet runs every branch on every token.
        """
        routing = self._routings.get(num_tokens)
        if routing is None:
            pooled = self._pooled(num_tokens)
            host = pooled.detach().cpu()[..., 0]  # (1|B, N): the one synchronisation
            routing = TokenRouting(
                center=_token_subset((host < 1.0).any(dim=0), pooled.device),
                surrounding=_token_subset((host > 0.0).any(dim=0), pooled.device),
            )
            self._routings[num_tokens] = routing
        return routing


def _token_subset(needed: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """Indices of the needed tokens on ``device``; None when every token is needed."""
    if bool(needed.all()):
        return None
    return needed.nonzero()[:, 0].to(device)


@dataclass(frozen=True)
class CTSCall:
    """What the C-T-S processors read from ``cross_attention_kwargs["cts"]`` during one call: the settings (gates,
    adapter) and the state (region embeddings, mask). Without it every processor is its base processor."""

    controller: CTSController
    state: CTSState


class CTSController:
    """The C-T-S settings of a UNet (zero-shot gate or trained adapter); holds nothing of any one call.

    Per call, :meth:`attention_kwargs` gives what the pipeline passes in ``cross_attention_kwargs``; the processors
    are installed on the UNet once (:meth:`install`) and equal the UNet's own without that entry.
    """

    def __init__(
        self, unet: nn.Module, adapter: CTSAdapter | None = None, region_strength: float | None = None
    ) -> None:
        if region_strength is not None and not 0.0 <= region_strength <= 1.0:
            raise ValueError(f"region_strength must be in [0, 1], got {region_strength}")
        if adapter is not None and adapter.fingerprint != unet_fingerprint(unet):
            raise ModelLoadError("the C-T-S adapter does not match this UNet")
        self.unet = unet
        self.adapter = adapter
        self.region_strength = region_strength
        self.block_names = cross_attention_names(unet)

    @property
    def mode(self) -> str:
        return "adapter" if self.adapter is not None else "zero-shot"

    @property
    def fixed_gate(self) -> float | None:
        """The gate every block shares when none is learned: the explicit strength, else the default
        in zero-shot mode; None when the adapter's learned gates apply."""
        if self.region_strength is not None:
            return self.region_strength
        if self.adapter is None:
            return DEFAULT_REGION_STRENGTH
        return None

    def gate(self, index: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The gate of block ``index`` as a 0-d tensor: the fixed gate, else the adapter's (differentiable)."""
        fixed = self.fixed_gate
        if fixed is not None:
            return torch.full((), fixed, device=device, dtype=dtype)  # a fill, no host-to-device copy
        return torch.sigmoid(self.adapter.gate_logits[index]).to(dtype)

    def gate_values(self) -> list[float]:
        fixed = self.fixed_gate
        if fixed is not None:
            return [fixed] * len(self.block_names)
        return [float(gate) for gate in self.adapter.gates().detach()]

    def adapter_on(self, device: torch.device) -> CTSAdapter | None:
        """The adapter, on ``device`` (the UNet's execution device).

        With model CPU offload the UNet moves to the GPU only while it runs, so the adapter cannot
        be placed once at load time: it follows the hidden states on first use (a no-op after).
        """
        adapter = self.adapter
        if adapter is not None and adapter.gate_logits.device != device:
            adapter.to(device)
        return adapter

    def deltas(self, index: int, device: torch.device) -> tuple[BranchDeltas | None, BranchDeltas | None]:
        """The center and surrounding deltas of block ``index`` on ``device`` (None, None in zero-shot mode)."""
        adapter = self.adapter_on(device)
        if adapter is None:
            return None, None
        return adapter.center[str(index)], adapter.surrounding[str(index)]

    def attention_kwargs(self, state: CTSState) -> dict[str, CTSCall]:
        """The ``cross_attention_kwargs`` entry that turns C-T-S on for one UNet call with ``state``."""
        return {"cts": CTSCall(self, state)}

    def install(self) -> None:
        """Put C-T-S processors on the UNet, around its own, where they are not yet (idempotent).

        Every processor is wrapped, not only attn2's: ``cross_attention_kwargs`` reach the self-attentions too, and
        diffusers warns about each keyword a processor does not take.
        """
        current = self.unet.attn_processors
        if all(isinstance(processor, CTSAttnProcessor) for processor in current.values()):
            return
        indices = {name: index for index, name in enumerate(self.block_names)}
        self.unet.set_attn_processor(
            {
                name: processor
                if isinstance(processor, CTSAttnProcessor)
                else CTSAttnProcessor(base=processor, index=indices.get(name))
                for name, processor in current.items()
            }
        )

    def remove(self) -> None:
        """Give the UNet its own processors back."""
        current = self.unet.attn_processors
        if any(isinstance(processor, CTSAttnProcessor) for processor in current.values()):
            self.unet.set_attn_processor(
                {
                    name: processor.base if isinstance(processor, CTSAttnProcessor) else processor
                    for name, processor in current.items()
                }
            )

    @contextmanager
    def active(self, state: CTSState) -> Iterator[CTSController]:
        """C-T-S on for the UNet calls of the ``with`` body, for code that calls the UNet itself (a pipeline passes
        :meth:`attention_kwargs` instead): a diffusers hook adds them to every call, and goes after."""
        self.install()
        with hooks_held([(self.unet, _AttentionKwargsHook(self.attention_kwargs(state)))], "vip_cts_state"):
            yield self


class _AttentionKwargsHook(ModelHook):
    """Adds entries to the ``cross_attention_kwargs`` of every call of the module it is on."""

    def __init__(self, entries: dict) -> None:
        super().__init__()
        self.entries = entries

    def pre_forward(self, module: nn.Module, *args, **kwargs):
        kwargs["cross_attention_kwargs"] = {**(kwargs.get("cross_attention_kwargs") or {}), **self.entries}
        return args, kwargs


# ---------------------------------------------------------------- the processor


class CTSAttnProcessor:
    """The processor around a UNet's own. Without a C-T-S call in its keywords, on a self-attention (``index``
    None), or with a fixed zero gate, it is the base processor, exactly.

    A plain object, not an ``nn.Module``: the trainable weights live in the adapter, so the UNet's
    own ``state_dict`` never changes when C-T-S is installed.
    """

    def __init__(self, base, index: int | None) -> None:
        self.base = base
        self.index = index  # the cross-attention's place in ``cross_attention_names``; None: not a region one

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        cts: CTSCall | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if cts is None or self.index is None or encoder_hidden_states is None or cts.controller.fixed_gate == 0.0:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        controller, state = cts.controller, cts.state
        residual, hidden_states, grid = self._enter(attn, hidden_states, temb)
        query, attention_mask = self._query(attn, hidden_states, encoder_hidden_states, attention_mask, state)
        dtype, device, num_tokens = query.dtype, query.device, hidden_states.shape[1]
        center_deltas, surround_deltas = controller.deltas(self.index, device)
        routing = self._routing(state, num_tokens)

        # out = (1 - g) * T + g * ((1 - m) * C + m * S); C and S only computed where their weight is non-zero
        gate = controller.gate(self.index, device, dtype)  # g: a 0-d tensor
        mask = state.token_mask(num_tokens, dtype, device)  # m: (1|B, N, 1), 1 = generate
        total = self._attend(
            attn, query, encoder_hidden_states, attention_mask, None, skip=controller.fixed_gate == 1.0
        )
        center = self._attend(attn, query, state.center.to(dtype), attention_mask, center_deltas, routing.center)
        surrounding = self._attend(
            attn, query, state.surrounding.to(dtype), attention_mask, surround_deltas, routing.surrounding
        )
        mixed = (1 - gate) * total + gate * ((1 - mask) * center + mask * surrounding)
        hidden_states = attn.to_out[0](mixed)

        # adapters with output deltas: each branch's own low-rank change of the (linear) output projection
        branches = ((center_deltas, gate * (1 - mask) * center), (surround_deltas, gate * mask * surrounding))
        for deltas, weighted in branches:
            if deltas is not None and deltas.to_out is not None:
                hidden_states = hidden_states + deltas.to_out(weighted)
        hidden_states = attn.to_out[1](hidden_states)
        return self._exit(attn, hidden_states, residual, grid)

    # ---- the steps, in the order of diffusers' AttnProcessor2_0

    @staticmethod
    def _enter(attn, hidden_states: torch.Tensor, temb: torch.Tensor | None):
        """Spatial norm, then (B, C, H, W) to (B, H*W, C); returns the residual and the grid to restore."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        grid = None
        if hidden_states.ndim == 4:
            grid = hidden_states.shape
            batch_size, channel, height, width = grid
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        return residual, hidden_states, grid

    @staticmethod
    def _exit(attn, hidden_states: torch.Tensor, residual: torch.Tensor, grid) -> torch.Tensor:
        if grid is not None:
            hidden_states = hidden_states.transpose(-1, -2).reshape(grid)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @staticmethod
    def _query(attn, hidden_states, encoder_hidden_states, attention_mask, state: CTSState):
        """Shared queries (B, heads, N, head_dim) and the attention mask as (B, heads, 1 or N, keys)."""
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
        return query, attention_mask

    @staticmethod
    def _routing(state: CTSState, num_tokens: int) -> TokenRouting:
        # Under torch.compile (``compile``) every branch runs on every token, weighted by the mask:
        # the same sums without the data-dependent subsets, which would split the UNet into many graphs.
        if torch.compiler.is_compiling():
            return TokenRouting(center=None, surrounding=None)
        return state.token_routing(num_tokens)

    def _attend(
        self,
        attn,
        query: torch.Tensor,
        context: torch.Tensor,
        attention_mask: torch.Tensor | None,
        deltas: BranchDeltas | None,
        tokens: torch.Tensor | None = None,
        skip: bool = False,
    ) -> torch.Tensor:
        """One branch, (B, N, inner): attention of the queries at ``tokens`` (all when None) to
        ``context``, zero at every other token (and everywhere when ``skip``).

        The token subset is the optimisation that makes region prompts cost attention only where
        they apply: the Center branch for tokens with known area, the Surrounding branch for tokens
        with area to generate.
        """
        batch_size, heads, num_tokens, head_dim = query.shape
        if tokens is None and not skip:
            return self._branch(attn, query, context, attention_mask, deltas)
        out = query.new_zeros(batch_size, num_tokens, heads * head_dim)
        if skip or tokens.numel() == 0:
            return out
        if attention_mask is not None and attention_mask.shape[2] != 1:  # a per-query mask follows the subset
            attention_mask = attention_mask[:, :, tokens]
        return out.index_copy(1, tokens, self._branch(attn, query[:, :, tokens], context, attention_mask, deltas))

    @staticmethod
    def _branch(
        attn,
        query: torch.Tensor,
        context: torch.Tensor,
        attention_mask: torch.Tensor | None,
        deltas: BranchDeltas | None,
    ) -> torch.Tensor:
        """Attention of ``query`` (B, heads, n, head_dim) to one text: (B, n, inner)."""
        batch_size = query.shape[0]
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
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        return out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
