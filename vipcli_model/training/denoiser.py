"""The module that trains (``CTSDenoiser``, the UNet with C-T-S attention and its adapter) and the
pieces of its loss: the text conditioning, the seeded generator of each micro-batch and the Min-SNR loss weights."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vipcli_model.cts.attention import CTSAdapter, CTSController, CTSState


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The CPU generator of one micro-batch's noise, timesteps and VAE samples."""
    state = np.random.SeedSequence([seed, step, micro, rank, 0x7EA1]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state) & ((1 << 63) - 1))


class CTSDenoiser(nn.Module):
    """The module that trains (and that DDP wraps): the UNet with C-T-S attention and its adapter.

    C-T-S processors stay installed for the whole run; the per-step state (region prompts and mask) reaches them
    through ``cross_attention_kwargs``, which gradient checkpointing keeps for the attention it runs again during
    backward.
    """

    def __init__(self, unet: nn.Module, adapter: CTSAdapter, controller: CTSController) -> None:
        super().__init__()
        self.unet = unet
        self.adapter = adapter
        self.controller = controller

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        total: torch.Tensor,
        center: torch.Tensor,
        surrounding: torch.Tensor,
        region_mask: torch.Tensor,
        added_cond_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """``added_cond_kwargs``: SDXL's pooled text embedding and time ids (global: the Total's); None for SD."""
        attention_kwargs = self.controller.attention_kwargs(
            CTSState(center=center, surrounding=surrounding, mask=region_mask)
        )
        return self.unet(
            sample,
            timesteps,
            encoder_hidden_states=total,
            added_cond_kwargs=added_cond_kwargs,
            cross_attention_kwargs=attention_kwargs,
        ).sample


def region_weighted_mean(errors: torch.Tensor, mask: torch.Tensor, known_weight: float) -> torch.Tensor:
    """Per-example mean of ``errors`` (B, C, h, w) where the generated latents (``mask`` 1) count fully
    and the known ones (``mask`` 0) by ``known_weight``: 1 is the plain mean, 0 only the generated region.

    The known latents are given to the inpainting UNet, so their noise is nearly free to predict: they
    add little but dilute the signal of the region the prompts are about."""
    if known_weight == 1.0:
        return errors.mean(dim=(1, 2, 3))
    weights = mask.float() + known_weight * (1 - mask.float())
    return (errors * weights).mean(dim=(1, 2, 3)) / weights.mean(dim=(1, 2, 3)).clamp_min(1e-6)


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon targets,
    min(SNR, gamma) / (SNR + 1) for v targets. High-noise steps, where the layout and the colours of
    the generated region are decided, keep weight 1; nearly clean steps count less."""
    alphas = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if v_prediction else clipped / snr


def encode_texts(pipe, tokenizer, text_encoder, texts: list[str], device: torch.device, sdxl: bool) -> torch.Tensor:
    """Per-token embeddings of ``texts``: CLIP's last hidden state (SD), both encoders' as SDXL's pipeline does."""
    if sdxl:  # pooled embedding and time ids: ``sdxl_conditioning``
        return pipe.encode_prompt(prompt=texts, device=device, do_classifier_free_guidance=False)[0]
    tokens = tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return text_encoder(tokens.input_ids.to(device))[0]


def sdxl_conditioning(
    pipe, text_encoder_2, totals: list[str], size: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> dict:
    """SDXL's global conditioning of the Total prompts: pooled embedding and time ids (no crop, scores 6 / 2.5)."""
    pooled = pipe.encode_prompt(prompt=totals, device=device, do_classifier_free_guidance=False)[2]
    projection_dim = int(text_encoder_2.config.projection_dim)
    time_ids, _ = pipe._get_add_time_ids(
        size, (0, 0), size, 6.0, 2.5, size, (0, 0), size, dtype, text_encoder_projection_dim=projection_dim
    )
    return {"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(device).repeat(len(totals), 1)}
