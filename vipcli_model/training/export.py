"""What a finished run exports besides the adapter: the UNet's LoRA weights (``--mode lora``) and a
diffusers model folder that ``vip outpaint --model RUN_DIR/model`` loads (``--mode lora / full``)."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

from torch import nn

from vipcli_model.training.checkpoint import discard_folder

MODEL_FOLDER = "model"
LORA_FOLDER = "unet_lora"


def save_lora(unet: nn.Module, run_dir: Path) -> Path:
    """``RUN_DIR/unet_lora``: the LoRA weights, unmerged (diffusers format); then merges them into ``unet``."""
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    folder = run_dir / LORA_FOLDER
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionInpaintPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    # The saved model folder holds the LoRA merged in, so `vip outpaint --model RUN/model` needs nothing else.
    unet.fuse_lora()
    unet.unload_lora()
    return folder


def save_model_folder(run_dir: Path, *, vae, text_encoder, tokenizer, unet, scheduler) -> Path:
    """``RUN_DIR/model``, a diffusers folder, written to a temp folder and renamed into place."""
    from diffusers import StableDiffusionInpaintPipeline

    final = run_dir / MODEL_FOLDER
    temporary = run_dir / f".tmp-{MODEL_FOLDER}-{secrets.token_hex(4)}"
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    try:
        pipe.save_pretrained(temporary, safe_serialization=True)
        if final.exists():
            discard_folder(final)
        temporary.rename(final)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return final
