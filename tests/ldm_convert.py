"""Diffusers -> original Stable Diffusion (LDM / CompVis) single-file layout, for tests.

The inverse of diffusers' own ``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint`` and
``convert_ldm_clip_checkpoint`` (``diffusers.loaders.single_file_utils``), for SD-1.x shaped models:
a UNet whose down blocks are ``(DownBlock2D | CrossAttnDownBlock2D)*`` with a cross-attention mid
block and 1x1-conv ``proj_in``/``proj_out`` (``use_linear_projection=False``), a 2-resnet-mid-block VAE
with one mid attention, and a CLIP text encoder. Tests use it to write a checkpoint in the layout
users download (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``)
and load it through ``from_single_file``; the round trip through diffusers' loader is the proof.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# resnet sub-module names: diffusers -> LDM (UNet ResBlock)
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's embedding of the pooled text and the time ids
    "add_embedding.linear_2": "label_emb.0.2",
}
# VAE mid attention: diffusers (linear) -> LDM (1x1 conv)
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_resnet(rest: str) -> str:
    name, _, param = rest.rpartition(".")
    return f"{_UNET_RESNET[name]}.{param}"


def unet_to_ldm(state_dict: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel weights -> ``model.diffusion_model.*`` keys."""
    per_block = layers_per_block + 1  # input blocks per down level (resnets + downsampler)
    up_with_attention = {int(m.group(1)) for k in state_dict if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        module, _, param = key.rpartition(".")
        if module in _UNET_TOP:
            ldm = f"{_UNET_TOP[module]}.{param}"
        elif m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            block, layer, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            ldm = f"input_blocks.{1 + block * per_block + layer}.0.{_unet_resnet(rest)}"
        elif m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$", key):
            block, layer, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            ldm = f"input_blocks.{1 + block * per_block + layer}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key):
            block, rest = int(m.group(1)), m.group(2)
            ldm = f"input_blocks.{(block + 1) * per_block}.0.op.{rest}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)$", key):
            ldm = f"middle_block.{2 * int(m.group(1))}.{_unet_resnet(m.group(2))}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.+)$", key):
            ldm = f"middle_block.1.{m.group(1)}"
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            block, layer, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            ldm = f"output_blocks.{block * per_block + layer}.0.{_unet_resnet(rest)}"
        elif m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$", key):
            block, layer, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            ldm = f"output_blocks.{block * per_block + layer}.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key):
            block, rest = int(m.group(1)), m.group(2)
            slot = 2 if block in up_with_attention else 1  # the upsampler follows the attention when there is one
            ldm = f"output_blocks.{block * per_block + layers_per_block}.{slot}.conv.{rest}"
        else:
            raise KeyError(f"no LDM name for UNet key {key!r}")
        out[UNET_PREFIX + ldm] = tensor
    return out


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def vae_to_ldm(state_dict: dict[str, torch.Tensor], num_up_blocks: int) -> dict[str, torch.Tensor]:
    """AutoencoderKL weights -> ``first_stage_model.*`` keys (mid attention as 1x1 convs)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.+)$", key):
            ldm = f"{m.group(1)}.norm_out.{m.group(2)}"
        elif re.match(r"(encoder|decoder)\.conv_(in|out)\.|(post_)?quant_conv\.", key):
            ldm = key
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            ldm = f"encoder.down.{m.group(1)}.block.{m.group(2)}.{_vae_resnet(m.group(3))}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key):
            ldm = f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            level = num_up_blocks - 1 - int(m.group(1))  # LDM numbers decoder levels from the bottom
            ldm = f"decoder.up.{level}.block.{m.group(2)}.{_vae_resnet(m.group(3))}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key):
            level = num_up_blocks - 1 - int(m.group(1))
            ldm = f"decoder.up.{level}.upsample.conv.{m.group(2)}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$", key):
            ldm = f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{_vae_resnet(m.group(3))}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", key):
            ldm = f"{m.group(1)}.mid.attn_1.{_VAE_ATTENTION[m.group(2)]}.{m.group(3)}"
            if m.group(2) != "group_norm" and tensor.ndim == 2:
                tensor = tensor[:, :, None, None].contiguous()  # linear -> 1x1 conv
        else:
            raise KeyError(f"no LDM name for VAE key {key!r}")
        out[VAE_PREFIX + ldm] = tensor
    return out


def clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel weights -> ``cond_stage_model.transformer.text_model.*`` keys.

    transformers >= 5.6 flattened ``CLIPTextModel`` (no ``text_model.`` level); older ones keep it.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.endswith("position_ids"):
            continue
        out[CLIP_PREFIX + (key if key.startswith("text_model.") else f"text_model.{key}")] = tensor
    return out


def pipeline_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """A Stable Diffusion (inpainting) pipeline's weights as one LDM-layout state dict."""
    checkpoint: dict[str, torch.Tensor] = {}
    checkpoint.update(unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config.layers_per_block))
    checkpoint.update(vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.up_block_types)))
    checkpoint.update(clip_to_ldm(pipe.text_encoder.state_dict()))
    return {key: tensor.detach().contiguous().clone() for key, tensor in checkpoint.items()}


def save_ldm_checkpoint(diffusers_folder: Path, path: Path) -> Path:
    """Write the diffusers folder's pipeline as one original-layout ``.safetensors`` file."""
    from diffusers import StableDiffusionInpaintPipeline
    from safetensors.torch import save_file

    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        str(diffusers_folder), safety_checker=None, requires_safety_checker=False
    )
    save_file(pipeline_to_ldm(pipe), str(path))
    return Path(path)


# the original SDXL layout: two text encoders under ``conditioner.embedders``, the second in OpenCLIP's names
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
_OPEN_CLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2"}
_OPEN_CLIP_LAYER.update({"mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"})


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str = SDXL_OPEN_CLIP_PREFIX) -> dict:
    """CLIPTextModelWithProjection weights -> OpenCLIP's names (``transformer.resblocks.N``, q/k/v fused into
    ``attn.in_proj_*``, ``text_projection`` transposed): the inverse of diffusers' ``convert_open_clip_checkpoint``."""
    state = {key.removeprefix("text_model."): value for key, value in state_dict.items()}
    out = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T,
    }
    for key in [key for key in state if key.endswith(("q_proj.weight", "q_proj.bias"))]:
        layer, param = re.match(r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)$", key).groups()
        parts = [state.pop(key.replace("q_proj", name)) for name in ("q_proj", "k_proj", "v_proj")]
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat(parts)
    for key, tensor in state.items():
        if key.endswith("position_ids"):
            continue
        layer, module, param = re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key).groups()
        out[f"transformer.resblocks.{layer}.{_OPEN_CLIP_LAYER[module]}.{param}"] = tensor
    return {prefix + key: tensor for key, tensor in out.items()}


def save_sdxl_checkpoint(diffusers_folder: Path, path: Path) -> Path:
    """Write a text-to-image SDXL diffusers folder as one original-layout ``.safetensors`` file (the layout of the
    SDXL checkpoints users download: ``model.diffusion_model``, ``first_stage_model``, ``conditioner.embedders``)."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    pipe = StableDiffusionXLPipeline.from_pretrained(str(diffusers_folder))
    checkpoint = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config.layers_per_block)
    checkpoint.update(vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.up_block_types)))
    clip = clip_to_ldm(pipe.text_encoder.state_dict())
    checkpoint.update({SDXL_CLIP_PREFIX + key.removeprefix(CLIP_PREFIX): value for key, value in clip.items()})
    checkpoint.update(open_clip_to_ldm(pipe.text_encoder_2.state_dict()))
    save_file({key: tensor.detach().contiguous().clone() for key, tensor in checkpoint.items()}, str(path))
    return Path(path)
