"""Tiny real models built in code, saved like real ones, for tests that never touch the network.

The shapes follow diffusers' own inpainting tests (9-channel UNet with block_out_channels (32, 64),
a 2-block VAE, a CLIP text encoder with hidden size 32). The CLIP tokenizer is built locally from
a byte-level vocabulary, so nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

# LCM-LoRA-SD1.5's modules (diffusers' LCM-LoRA distillation script): rank 64 on attention, projections, feed-forward
# AND the ResNet convolutions, time embeddings and resamplers. At rank 64 that is 67.3 M parameters on SD-1.5's UNet
# (published: 67.5 M, arXiv 2311.05556; the hub file, fp16 with webui-style keys, within 32 bytes of
# benchmarks/bench_outpaint.py's rebuild) and 196.8 M on SDXL's (hub: 394 MB in fp16). The tests' tiny LoRA and the
# benchmarks' full-size ones all use it.
LCM_LORA_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
]


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


def _tiny_clip_text_config(**overrides):
    """A 5-layer, 32-wide CLIP text encoder's config (diffusers' test shapes); `overrides`: other fields."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
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
        **overrides,
    )


def _tiny_unet(layers_per_block: int = 2, sample_size: int = 32, in_channels: int = 9):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=layers_per_block,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
    )


def build_other_tiny_unet():
    """A 9-channel UNet like the tiny model's with one layer per block, unseeded: another base model, to which a
    C-T-S adapter trained on the tiny model does not fit."""
    return _tiny_unet(layers_per_block=1)


def build_tiny_inpaint_components(seed: int = 0, sample_size: int = 32, in_channels: int = 9) -> dict:
    """The components of a 9-channel SD inpainting pipeline (8: InstructPix2Pix), tiny, seeded."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = _tiny_unet(sample_size=sample_size, in_channels=in_channels)
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
    text_encoder = CLIPTextModel(_tiny_clip_text_config())
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


def build_tiny_sdxl_inpaint_components(
    seed: int = 0, sample_size: int = 32, in_channels: int = 9, width_2: int = 32
) -> dict:
    """The components of a 9-channel SDXL inpainting pipeline, tiny, seeded (diffusers' SDXL inpaint test shapes).

    Two CLIP text encoders (the second with a projection: the pooled embedding), cross_attention_dim 64 = 32 + 32
    (their hidden states concatenated), ``addition_embed_type="text_time"`` with 6 time ids (no aesthetic score,
    as the real inpainting-0.1 model): 6 * 8 + 32 = 80 added embedding inputs. ``width_2``: the second encoder's
    width (another than the first's, as in the real model, for diffusers' single-file loader to tell them apart).
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=48 + width_2,
        cross_attention_dim=32 + width_2,
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
    text_config = _tiny_clip_text_config(hidden_act="gelu", projection_dim=32)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config)
    torch.manual_seed(seed + 1)
    text_config_2 = copy.deepcopy(text_config)
    text_config_2.hidden_size = text_config_2.projection_dim = width_2
    text_encoder_2 = CLIPTextModelWithProjection(text_config_2)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
        tokenizer_2 = CLIPTokenizer.from_pretrained(tmp)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
        "requires_aesthetics_score": False,
        "force_zeros_for_empty_prompt": True,
    }


def save_tiny_sdxl_inpaint_model(folder: Path, seed: int = 0) -> Path:
    """Save a tiny SDXL inpainting model as a diffusers folder (``_class_name`` StableDiffusionXLInpaintPipeline)."""
    from diffusers import StableDiffusionXLInpaintPipeline

    pipe = StableDiffusionXLInpaintPipeline(**build_tiny_sdxl_inpaint_components(seed))
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def save_tiny_sdxl_base_model(folder: Path, seed: int = 0, width_2: int = 32) -> Path:
    """Save a tiny text-to-image SDXL model (4-channel UNet, ``_class_name`` StableDiffusionXLPipeline): what
    ``controlnet`` turns into an outpainting model."""
    from diffusers import StableDiffusionXLPipeline

    components = build_tiny_sdxl_inpaint_components(seed, in_channels=4, width_2=width_2)
    pipe = StableDiffusionXLPipeline(**{k: v for k, v in components.items() if k != "requires_aesthetics_score"})
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def build_tiny_controlnet_union(seed: int = 0, num_control_type: int = 8, width_2: int = 32):
    """A tiny ``ControlNetUnionModel`` matching the tiny SDXL UNet (ProMax: 8 control types, the 8th inpaint /
    outpaint). Its zero-initialised convolutions get small random weights, so the control image reaches the UNet
    (a trained ControlNet's are not zero either)."""
    from diffusers import ControlNetUnionModel

    torch.manual_seed(seed)
    controlnet = ControlNetUnionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=48 + width_2,
        cross_attention_dim=32 + width_2,
        norm_num_groups=8,
        conditioning_embedding_out_channels=(16, 32),
        num_control_type=num_control_type,
        num_trans_channel=32,
        num_trans_head=2,
        num_proj_channel=32,
    )
    with torch.no_grad():
        zeroed = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
        for block in [*zeroed, controlnet.controlnet_cond_embedding.conv_out]:
            torch.nn.init.normal_(block.weight, std=0.05)
    return controlnet


def save_tiny_controlnet_union(folder: Path, seed: int = 0, num_control_type: int = 8, width_2: int = 32) -> Path:
    """Save a tiny ControlNet Union as a diffusers model folder (config.json + weights), as OzzyGT's repository."""
    build_tiny_controlnet_union(seed, num_control_type, width_2).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def build_tiny_flux_fill_components(seed: int = 0) -> dict:
    """The components of a FLUX Fill pipeline, tiny, seeded (diffusers' FluxFill test shapes).

    One-block VAE (scale factor 1, 2 latent channels), so the transformer takes 2*4 packed latent channels, as many
    for the masked image and 1*1*4 for the mask: in_channels 20, out_channels 8 (the real model: 384 and 64).
    The T5 encoder is a tiny ``T5EncoderModel``; its tokenizer here is the local CLIP BPE (any tokenizer that pads
    to ``max_sequence_length`` serves: T5 has relative positions).
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=20,
        out_channels=8,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_tiny_clip_text_config(hidden_act="gelu", projection_dim=32))
    torch.manual_seed(seed)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=1000,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=2,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
        tokenizer_2 = CLIPTokenizer.from_pretrained(tmp, model_max_length=512)
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "transformer": transformer,
        "vae": vae,
    }


def save_tiny_flux_fill_model(folder: Path, seed: int = 0) -> Path:
    """Save a tiny FLUX Fill model as a diffusers folder (``_class_name`` FluxFillPipeline)."""
    from diffusers import FluxFillPipeline

    pipe = FluxFillPipeline(**build_tiny_flux_fill_components(seed))
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


def save_tiny_lcm_lora(model_dir: Path, folder: Path, seed: int = 0) -> Path:
    """A random, non-zero LoRA of a tiny model's UNet saved like published LCM-LoRAs: the same modules (3x3
    convolutions included), webui-style keys with alphas, fp16."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=LCM_LORA_TARGETS, init_lora_weights=False))
    layers = {f"unet.{name}": value for name, value in get_peft_model_state_dict(unet).items()}
    save_file(
        {name: value.to(torch.float16) for name, value in convert_state_dict_to_kohya(layers).items()},
        str(folder / "pytorch_lora_weights.safetensors"),
    )
    return folder


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


def save_tiny_autoencoder_tiny(folder: Path, seed: int = 0, downsamplings: int = 1) -> Path:
    """A tiny ``AutoencoderTiny`` (TAESD's class) for the tiny pipelines: 4 latent channels, 1/2 size (one
    downsampling)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    blocks = downsamplings + 1
    tiny = AutoencoderTiny(
        encoder_block_out_channels=(8,) * blocks,
        decoder_block_out_channels=(8,) * blocks,
        num_encoder_blocks=(1,) * blocks,
        num_decoder_blocks=(1,) * blocks,
        latent_channels=4,
    )
    tiny.save_pretrained(folder)
    return Path(folder)
