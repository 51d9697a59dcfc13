"""Tiny real models built in code, saved like real ones, for tests that never touch the network.

The shapes follow diffusers' own inpainting tests (9-channel UNet with block_out_channels (32, 64),
a 2-block VAE, a CLIP text encoder with hidden size 32). The CLIP tokenizer is built locally from
a byte-level vocabulary, so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _bytes_to_unicode() -> dict[int, str]:
    # The byte -> printable unicode table used by GPT-2 and CLIP BPE tokenizers.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_clip_tokenizer(folder: Path, words: tuple[str, ...] = ()) -> Path:
    """Write vocab.json / merges.txt for a byte-level CLIP tokenizer (with merges for ``words``)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
    for symbol in symbols:
        vocab[symbol + "</w>"] = len(vocab)
    merges: list[str] = []
    for word in words:  # whole-word merges so that test words become single tokens
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            merged = pieces[0] + pieces[1]
            vocab.setdefault(merged, len(vocab))
            pieces = [merged] + pieces[2:]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n", encoding="utf-8")
    # from_pretrained reads vocab.json / merges.txt on both transformers 4 and 5.
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77, pad_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_inpaint_components(seed: int = 0, sample_size: int = 32, in_channels: int = 9) -> dict:
    """The components of a 9-channel SD inpainting pipeline (8: InstructPix2Pix), tiny, seeded."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=8,
        sample_size=sample_size * 2,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            pad_token_id=1,
            vocab_size=1000,
            max_position_embeddings=77,
        )
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
    }


def save_tiny_inpaint_model(folder: Path, seed: int = 0) -> Path:
    """Save a tiny inpainting model as a diffusers folder that ``--model FOLDER`` loads."""
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline(**build_tiny_inpaint_components(seed), requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def save_tiny_ip2p_model(folder: Path, seed: int = 0) -> Path:
    """Save a tiny InstructPix2Pix model (8-channel UNet: latents + image latents) as a diffusers folder."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        **build_tiny_inpaint_components(seed, in_channels=8), requires_safety_checker=False
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def save_random_inception(path: Path, seed: int = 0) -> Path:
    """The FID Inception with random weights, saved as pytorch-fid's weights file is (a state dict).

    He-initialised convolutions keep the activations of the 94 layers at a usable scale."""
    from vipcli_model.evaluation.inception import FIDInceptionV3

    torch.manual_seed(seed)
    model = FIDInceptionV3()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(model.state_dict(), path)
    return Path(path)
