"""Tiny real weights laid out under the real repositories' file names, for the stand-in hub (``fake_hub.py``)."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_models import build_tiny_inpaint_components, write_clip_tokenizer


def save_tiny_inpaint_repo(folder: Path, *, variant: str | None) -> Path:
    """A tiny SD inpainting pipeline saved like stable-diffusion-v1-5/stable-diffusion-inpainting.

    fp16-variant file names when ``variant="fp16"`` (the weights stay fp32: only the layout matters), the
    old-style CLIP tokenizer files (vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json),
    a feature extractor, and a model_index.json that names the safety checker, as the real one does.
    """
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import CLIPImageProcessor

    folder = Path(folder)
    components = build_tiny_inpaint_components(seed=0)
    components["feature_extractor"] = CLIPImageProcessor(crop_size=224, size=224)
    pipe = StableDiffusionInpaintPipeline(**components, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True, variant=variant)
    _write_old_style_tokenizer(folder / "tokenizer")
    index = json.loads((folder / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["requires_safety_checker"] = True
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def save_tiny_lora_repo(folder: Path, model_dir: Path, variant: str | None = "fp16") -> Path:
    """A LoRA for the tiny UNet saved as pytorch_lora_weights.safetensors, as LCM-LoRA is published."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", variant=variant)
    torch.manual_seed(0)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    StableDiffusionInpaintPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet))
    return Path(folder)


def save_tiny_vlm_repo(folder: Path, source: Path) -> Path:
    """The tiny SmolVLM (``tiny_vlm.py``) with the file names of the real SmolVLM repositories."""
    import shutil

    folder = Path(folder)
    shutil.copytree(source, folder, dirs_exist_ok=True)
    template = folder / "chat_template.jinja"
    if template.exists() and not (folder / "chat_template.json").exists():
        (folder / "chat_template.json").write_text(json.dumps({"chat_template": template.read_text()}))
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    model = tokenizer.get("model", {})
    if not (folder / "vocab.json").exists():
        (folder / "vocab.json").write_text(json.dumps(model.get("vocab", {})))
    if not (folder / "merges.txt").exists():
        merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in model.get("merges", [])]
        (folder / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    added = {token["content"]: token["id"] for token in tokenizer.get("added_tokens", [])}
    (folder / "added_tokens.json").exists() or (folder / "added_tokens.json").write_text(json.dumps(added))
    (folder / "special_tokens_map.json").exists() or (folder / "special_tokens_map.json").write_text("{}")
    (folder / "processor_config.json").exists() or (folder / "processor_config.json").write_text("{}")
    return folder


def save_tiny_clip_repo(folder: Path) -> Path:
    """A tiny CLIP model and processor (old-style tokenizer files, as openai/clip-vit-* ship them)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

    folder = Path(folder)
    text = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 1000,
        "max_position_embeddings": 77,
        "projection_dim": 16,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "image_size": 32,
        "patch_size": 8,
        "projection_dim": 16,
    }
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    tokenizer_dir = write_clip_tokenizer(folder / "_tokenizer")
    tokenizer = CLIPTokenizerFast.from_pretrained(tokenizer_dir)  # writes tokenizer.json, as the real repository has
    image_processor = CLIPImageProcessor(crop_size=32, size=32)
    CLIPProcessor(image_processor, tokenizer).save_pretrained(folder)
    image_processor.save_pretrained(folder)  # preprocessor_config.json, as the real repositories have it
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((tokenizer_dir / name).read_bytes())
    (folder / "special_tokens_map.json").exists() or (folder / "special_tokens_map.json").write_text("{}")
    return folder


def save_tiny_sdxl_repo(folder: Path) -> Path:
    """A tiny SDXL inpainting pipeline saved like diffusers/stable-diffusion-xl-1.0-inpainting-0.1 (fp32 safetensors,
    old-style tokenizer files in tokenizer/ and tokenizer_2/)."""
    from tiny_models import save_tiny_sdxl_inpaint_model

    return write_old_style_tokenizers(save_tiny_sdxl_inpaint_model(Path(folder)))


def _write_old_style_tokenizer(tokenizer: Path) -> None:
    """The files a hub repository's CLIP tokenizer folder holds, in place of what `save_pretrained` wrote."""
    for old in tokenizer.iterdir():
        old.unlink()
    write_clip_tokenizer(tokenizer)
    (tokenizer / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            }
        )
    )


def write_old_style_tokenizers(folder: Path) -> Path:
    """Replace an SDXL folder's tokenizer/ and tokenizer_2/ with the files the hub's SDXL repositories hold
    (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json)."""
    for name in ("tokenizer", "tokenizer_2"):
        _write_old_style_tokenizer(folder / name)
    return folder


def save_tiny_taesd_repo(folder: Path) -> Path:
    """A tiny AutoencoderTiny saved as madebyollin/taesd is (config.json + diffusion_pytorch_model.safetensors)."""
    from tiny_models import save_tiny_autoencoder_tiny

    return save_tiny_autoencoder_tiny(folder)
