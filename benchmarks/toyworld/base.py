"""The stand-in for SD inpainting: a tiny model of the real classes, trained on the toy world.

Real diffusers / transformers classes (``AutoencoderKL``, a 9-channel ``UNet2DConditionModel``,
``CLIPTextModel``, a byte-level ``CLIPTokenizer`` built locally), trained here just enough to be an
inpainting model of this world, the way SD inpainting was made:

1. the VAE learns to reconstruct the pictures (64 px -> 8x8x4 latents, as SD's 512 px -> 64x64x4), and its latent
   scale is measured (``scaling_factor``) as SD's was;
2. the UNet and text encoder learn epsilon prediction on the SD noise schedule with SD's
   inpainting input (noisy latents + mask + masked-image latents), random masks (vip's own
   training mask mix, plus whole-picture masks), and the **Total caption only**, dropped 10% of
   the time for classifier-free guidance.

The result is saved with ``StableDiffusionInpaintPipeline.save_pretrained``: a diffusers folder
that ``vip --model FOLDER`` loads exactly as it loads SD. This is benchmark scaffolding, not part
of vip.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from world import CENTER, SIZE, WORDS  # noqa: E402

LATENT = SIZE // 8  # the VAE downsamples by 8, as SD's does: one latent pixel per 8 px texture cell
VAE_GROUPS = 1  # GroupNorm over all channels: flat colour fields keep their colour (8 groups of 2 channels erase it)


def build_components(tokenizer_dir: Path, seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from tiny_models import write_clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    write_clip_tokenizer(tokenizer_dir, WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[16, 32, 32, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=VAE_GROUPS,
        sample_size=SIZE,
    )
    unet = UNet2DConditionModel(
        sample_size=LATENT,
        in_channels=9,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(  # SD's training schedule; vip swaps in its own sampler from this config
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        num_train_timesteps=1000,
    )
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def load_pictures(folder: Path) -> tuple[torch.Tensor, list[str]]:
    """(N, 3, 64, 64) in [-1, 1] and the Total caption of each picture (captions.jsonl)."""
    records = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines() if line.strip()]
    arrays = [np.asarray(Image.open(folder / record["image"]).convert("RGB"), dtype=np.float32) for record in records]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return pixels.contiguous(), [record["total"] for record in records]


VAE_CROP = 32  # the VAE is fully convolutional: it learns on crops (4x cheaper), aligned to the 8 px grid


def train_vae(vae, pixels: torch.Tensor, steps: int, batch: int, seed: int, log: Callable[[str], None]) -> float:
    """Reconstruction (L1 + MSE) with a small KL term, on random grid-aligned crops; returns the final MSE."""
    generator = torch.Generator().manual_seed(seed)
    peak = 3e-3
    optimizer = torch.optim.AdamW(vae.parameters(), lr=peak, weight_decay=0.0)
    vae.train()
    recent: list[float] = []
    for step in range(steps):
        index = torch.randint(len(pixels), (batch,), generator=generator)
        top, left = (8 * torch.randint((SIZE - VAE_CROP) // 8 + 1, (2,), generator=generator)).tolist()
        x = pixels[index, :, top : top + VAE_CROP, left : left + VAE_CROP]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon, x)
        loss = F.l1_loss(recon, x) + mse + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = peak * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.step()
        recent = (recent + [mse.item()])[-20:]
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"vae step {step + 1}/{steps}: reconstruction mse {np.mean(recent):.4f}")
    vae.eval()
    return float(np.mean(recent))


@torch.no_grad()
def measure_scaling(vae, pixels: torch.Tensor) -> float:
    """1 / std of the latents (SD's 0.18215 was measured the same way)."""
    latents = torch.cat([vae.encode(pixels[i : i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
    return float(1.0 / latents.std())


def encode_texts(tokenizer, text_encoder, texts: list[str]) -> torch.Tensor:
    ids = tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids)[0]


def _training_mask(rng: np.random.Generator, mix: dict) -> torch.Tensor:
    """Half the time the benchmark's own geometry (the center square known), else vip's mask mix or the whole
    picture."""
    from vipcli_model.training.masks import sample_mask

    draw = rng.random()
    if draw < 0.5:
        mask = torch.ones(1, SIZE, SIZE)
        left, top, right, bottom = CENTER
        mask[:, top:bottom, left:right] = 0.0
        return mask
    if draw < 0.6:
        return torch.ones(1, SIZE, SIZE)
    return sample_mask(rng, (SIZE, SIZE), mix)


def train_unet(
    components: dict,
    pixels: torch.Tensor,
    captions: list[str],
    steps: int,
    batch: int,
    seed: int,
    log: Callable[[str], None],
    on_checkpoint: Callable[[int], None] | None = None,
    checkpoint_every: int = 0,
) -> list[float]:
    """SD inpainting training on Total captions; returns the loss of every step."""
    vae, unet, text_encoder, tokenizer = (components[k] for k in ("vae", "unet", "text_encoder", "tokenizer"))
    scale = vae.config.scaling_factor
    alphas = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, 0)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    mix = {"ratio": 0.3, "one_side": 0.1, "two_side": 0.1, "irregular": 0.1}
    with torch.no_grad():
        latents_all = (
            torch.cat([vae.encode(pixels[i : i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)]) * scale
        )
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    unet.train()
    text_encoder.train()
    losses: list[float] = []
    warmup = max(1, steps // 20)
    started = time.perf_counter()
    for step in range(steps):
        index = torch.randint(len(pixels), (batch,), generator=generator).tolist()
        x, latents = pixels[index], latents_all[index]
        masks = torch.stack([_training_mask(rng, mix) for _ in index])
        texts = ["" if rng.random() < 0.1 else captions[i] for i in index]
        with torch.no_grad():
            masked_latents = vae.encode(x * (masks < 0.5)).latent_dist.mean * scale
        small_masks = F.interpolate(masks, size=(LATENT, LATENT))
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, 1000, (batch,), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        context = encode_texts(tokenizer, text_encoder, texts)
        prediction = unet(torch.cat([noisy, small_masks, masked_latents], 1), t, encoder_hidden_states=context).sample
        # min-SNR-5 weighting (Hang et al. 2023): the high-noise steps that decide the global layout count more
        snr = a / (1 - a)
        weight = torch.clamp(snr, max=5.0) / snr
        loss = (weight * (prediction - noise) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        lr = 1e-3 * min(1.0, (step + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            rate = (time.perf_counter() - started) / (step + 1)
            log(f"unet step {step + 1}/{steps}: loss {np.mean(losses[-100:]):.4f} ({rate:.2f} s/step)")
        if on_checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            unet.eval()
            text_encoder.eval()
            on_checkpoint(step + 1)
            unet.train()
            text_encoder.train()
    unet.eval()
    text_encoder.eval()
    return losses


@torch.no_grad()
def vae_round_trip(vae, folder: Path, count: int = 240) -> dict[str, float]:
    """Per colour, how often a picture's surrounding keeps its colour through encode + decode.

    Every score of the toy world is capped by this: a colour the autoencoder cannot render is scored
    wrong whatever the UNet chose (a 500-step autoencoder turned every green frame black)."""
    import world

    kept: dict[str, list[bool]] = {name: [] for name in world.COLOURS}
    records = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines() if line.strip()]
    for record in records[:count]:
        picture = np.asarray(Image.open(folder / record["image"]).convert("RGB"), dtype=np.float32)
        x = torch.from_numpy(picture).permute(2, 0, 1)[None] / 127.5 - 1.0
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample[0].clamp(-1, 1)
        decoded = ((y.permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        colour = record["surrounding"].split()[0]
        kept[colour].append(world.classify(decoded).colour == colour)
    return {name: round(sum(values) / len(values), 3) for name, values in kept.items() if values}


def make_base_model(
    train_dir: Path,
    out_dir: Path,
    *,
    vae_steps: int,
    unet_steps: int,
    batch: int = 32,
    seed: int = 0,
    log: Callable[[str], None] = print,
    vae_from: Path | None = None,
) -> dict:
    """Train the stand-in on ``train_dir`` and save it as a diffusers folder in ``out_dir``.

    ``vae_from``: an earlier base model folder whose trained autoencoder is reused as is (``vae_steps`` is then
    ignored; its own summary's figures are kept): only the UNet and text encoder train.
    """
    from diffusers import AutoencoderKL, StableDiffusionInpaintPipeline

    torch.manual_seed(seed)
    components = build_components(out_dir.parent / (out_dir.name + "-tokenizer"), seed)
    pixels, captions = load_pictures(train_dir)
    started = time.perf_counter()
    if vae_from is None:
        vae_mse = train_vae(components["vae"], pixels, vae_steps, batch, seed, log)
        scaling = measure_scaling(components["vae"], pixels)
        components["vae"].register_to_config(scaling_factor=scaling)
        log(f"vae latent scaling_factor {scaling:.4f}")
        round_trip = vae_round_trip(components["vae"], train_dir)
        log(f"vae round trip, surrounding colour kept: {json.dumps(round_trip)}")
    else:
        components["vae"] = AutoencoderKL.from_pretrained(vae_from / "vae")
        earlier = json.loads((vae_from / "toyworld_base.json").read_text())
        vae_steps, vae_mse = earlier["vae_steps"], earlier["vae_reconstruction_mse"]
        scaling, round_trip = components["vae"].config.scaling_factor, earlier["vae_round_trip_colour"]
        log(f"autoencoder of {vae_from} reused")
    losses = train_unet(components, pixels, captions, unet_steps, batch, seed + 1, log)
    pipe = StableDiffusionInpaintPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    summary = {
        "vae_steps": vae_steps,
        "vae_reconstruction_mse": vae_mse,
        "scaling_factor": scaling,
        "vae_round_trip_colour": round_trip,
        "unet_steps": unet_steps,
        "unet_loss_first_100": float(np.mean(losses[:100])),
        "unet_loss_last_100": float(np.mean(losses[-100:])),
        "batch": batch,
        "seconds": round(time.perf_counter() - started, 1),
        **({"vae_from": str(vae_from)} if vae_from is not None else {}),
    }
    (out_dir / "toyworld_base.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
