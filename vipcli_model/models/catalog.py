"""Which files of a hub repository vip downloads and loads: one table for the models vip names, one rule for the rest.

Both ``vip models download`` and first use read :data:`MODEL_FILES`; a hub id that is not in the table gets
its files chosen by :func:`select_files` from the repository's listing, with the same rule that produced the
table (``tests/test_hub.py`` checks the table against the real repositories' listings recorded in
``tests/hub_listings/``). The rule, per part of the model:

- weights in safetensors; the fp32 file where the repository has one, else the fp16 variant (loaded as fp32
  where fp32 runs), pickles (``.bin``) only where a part has no safetensors at all;
- never original-layout checkpoints (``.ckpt`` / top-level ``.safetensors`` of a diffusers repo), the safety
  checker, ONNX / Flax / TensorFlow exports, READMEs or images;
- every configuration, tokenizer and processor file the loader reads (``feature_extractor/`` too: diffusers
  needs it when ``model_index.json`` names it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# What a repository holds, as vip loads it.
INPAINT = "inpaint"  # a diffusers inpainting pipeline (model_index.json + one folder per part)
LORA = "lora"  # one LoRA file (the --fast LCM-LoRAs)
VLM = "captioner"  # a transformers image-text-to-text model with its processor
CLIP = "clip"  # a transformers CLIP model with its processor (vip eval's CLIP score)
ADAPTER = "adapter"  # a vip C-T-S adapter (cts_adapter.safetensors)
EDIT = "edit"  # a diffusers InstructPix2Pix pipeline (vip edit): the same layout as INPAINT, chosen by the same rule
TINY_VAE = "tiny-vae"  # a diffusers AutoencoderTiny (TAESD): config.json + weights at the top level (--vae tiny)
CONTROLNET = "controlnet"  # a diffusers ControlNetUnionModel: config.json + weights at the top level (`controlnet`)

# xinsir's repository keeps the ProMax (the union with the inpaint / outpaint type) beside the first release under
# names diffusers does not load by itself; vip loads these two where present.
PROMAX_FILES = ("config_promax.json", "diffusion_pytorch_model_promax.safetensors")

ADAPTER_FILENAME = "cts_adapter.safetensors"

# Parts of a diffusers pipeline vip never loads.
SKIPPED_PARTS = frozenset({"safety_checker"})
_CONFIG_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
_WEIGHT = re.compile(
    r"^(?P<stem>[^/.]+?)(?P<shard>-\d{5}-of-\d{5})?(?P<variant>(\.[a-z0-9_]+)?)\.(?P<fmt>safetensors|bin)$"
)
_WEIGHT_INDEX = re.compile(r"^(?P<stem>[^/.]+)\.(?P<fmt>safetensors|bin)\.index(?P<variant>(\.[a-z0-9_]+)?)\.json$")
_WEIGHT_STEMS = {"diffusion_pytorch_model", "model", "pytorch_model"}


@dataclass(frozen=True)
class ModelFiles:
    """The files vip fetches from one repository, and how it loads them."""

    repo_id: str
    kind: str
    files: tuple[str, ...]
    variant: str | None = None  # diffusers ``variant=`` to load with ("fp16" when only fp16 safetensors exist)
    licence: str = ""
    gated: bool = False
    note: str = ""
    requires: tuple[str, ...] = ()  # Python packages its loader needs beyond vip's own dependencies
    sizes: dict[str, int] = field(default_factory=dict, compare=False)  # bytes, where known (from the hub)

    @property
    def weight_name(self) -> str | None:
        """The single weights file of a LoRA or adapter repository."""
        weights = [name for name in self.files if name.endswith(".safetensors")]
        return weights[0] if len(weights) == 1 else None

    @property
    def total_size(self) -> int | None:
        if not self.sizes or any(name not in self.sizes for name in self.files):
            return None
        return sum(self.sizes[name] for name in self.files)


_SD_TOKENIZER = (
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
)
# A diffusers SD-1.x/2.x folder whose parts all have fp32 safetensors (sd2-community, Paint by Inpaint).
_SD_FP32_FILES = (
    "feature_extractor/preprocessor_config.json",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    *_SD_TOKENIZER,
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
_SMOLVLM = (
    "added_tokens.json",
    "chat_template.json",
    "config.json",
    "generation_config.json",
    "merges.txt",
    "model.safetensors",
    "preprocessor_config.json",
    "processor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
)

_CLIP_TEXT_FILES = (
    "config.json",
    "merges.txt",
    "preprocessor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
)

MODEL_FILES: dict[str, ModelFiles] = {
    entry.repo_id: entry
    for entry in (
        ModelFiles(
            "stable-diffusion-v1-5/stable-diffusion-inpainting",
            INPAINT,
            (
                "feature_extractor/preprocessor_config.json",
                "model_index.json",
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "text_encoder/model.fp16.safetensors",
                *_SD_TOKENIZER,
                "unet/config.json",
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.fp16.safetensors",
            ),
            variant="fp16",
            licence="creativeml-openrail-m",
            note="no fp32 safetensors in unet/, vae/, text_encoder/: the fp16 ones (~2.1 GB) load as fp32",
        ),
        ModelFiles(
            "sd2-community/stable-diffusion-2-inpainting",
            INPAINT,
            _SD_FP32_FILES,
            licence="openrail++",
            note="community mirror of the deleted stabilityai/stable-diffusion-2-inpainting; fp32 safetensors",
        ),
        ModelFiles(
            "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
            INPAINT,
            (
                "model_index.json",
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "text_encoder/model.safetensors",
                "text_encoder_2/config.json",
                "text_encoder_2/model.safetensors",
                *_SD_TOKENIZER,
                *(name.replace("tokenizer/", "tokenizer_2/") for name in _SD_TOKENIZER),
                "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
            ),
            licence="openrail++",
            note="SDXL, 1024 px; fp32 safetensors (~13.9 GB; the fp16 variant is ~6.9 GB)",
        ),
        ModelFiles(
            "black-forest-labs/FLUX.1-Fill-dev",
            INPAINT,
            (
                "model_index.json",
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "text_encoder/model.safetensors",
                "text_encoder_2/config.json",
                "text_encoder_2/model-00001-of-00002.safetensors",
                "text_encoder_2/model-00002-of-00002.safetensors",
                "text_encoder_2/model.safetensors.index.json",
                *_SD_TOKENIZER,
                "tokenizer_2/special_tokens_map.json",
                "tokenizer_2/spiece.model",
                "tokenizer_2/tokenizer.json",
                "tokenizer_2/tokenizer_config.json",
                "transformer/config.json",
                "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
                "transformer/diffusion_pytorch_model-00002-of-00003.safetensors",
                "transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
                "transformer/diffusion_pytorch_model.safetensors.index.json",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
            ),
            licence="FLUX.1-dev non-commercial",
            gated=True,
            note="FLUX.1 Fill [dev], 12B, bf16 safetensors (~34 GB); "
            "the original-layout flux1-fill-dev.safetensors is skipped",
        ),
        ModelFiles(
            "black-forest-labs/FLUX.2-klein-4B",
            INPAINT,
            (
                "model_index.json",
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "text_encoder/generation_config.json",
                "text_encoder/model-00001-of-00002.safetensors",
                "text_encoder/model-00002-of-00002.safetensors",
                "text_encoder/model.safetensors.index.json",
                "tokenizer/added_tokens.json",
                "tokenizer/chat_template.jinja",
                "tokenizer/merges.txt",
                "tokenizer/special_tokens_map.json",
                "tokenizer/tokenizer.json",
                "tokenizer/tokenizer_config.json",
                "tokenizer/vocab.json",
                "transformer/config.json",
                "transformer/diffusion_pytorch_model.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
            ),
            licence="apache-2.0",
            note="FLUX.2 [klein] 4B, step-distilled (4 steps), Qwen3-4B text encoder, bf16 safetensors (~16 GB); "
            "the original-layout flux-2-klein-4b.safetensors is skipped",
        ),
        ModelFiles(
            "latent-consistency/lcm-lora-sdv1-5", LORA, ("pytorch_lora_weights.safetensors",), licence="openrail++"
        ),
        ModelFiles(
            "latent-consistency/lcm-lora-sdxl",
            LORA,
            ("pytorch_lora_weights.safetensors",),
            licence="openrail++",
            note="LCM-LoRA for SDXL (`fast` on SDXL models), ~394 MB",
        ),
        ModelFiles("HuggingFaceTB/SmolVLM-256M-Instruct", VLM, _SMOLVLM, licence="apache-2.0", note="onnx/ is skipped"),
        ModelFiles("HuggingFaceTB/SmolVLM-500M-Instruct", VLM, _SMOLVLM, licence="apache-2.0", note="onnx/ is skipped"),
        ModelFiles(
            "Qwen/Qwen2-VL-2B-Instruct",
            VLM,
            (
                "chat_template.json",
                "config.json",
                "generation_config.json",
                "merges.txt",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
                "preprocessor_config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "vocab.json",
            ),
            licence="apache-2.0",
            requires=("torchvision",),  # its processor (video part included) needs torchvision
        ),
        ModelFiles(
            "openai/clip-vit-large-patch14",
            CLIP,
            _CLIP_TEXT_FILES[:2] + ("model.safetensors",) + _CLIP_TEXT_FILES[2:],
            licence="mit",
        ),
        ModelFiles(
            "openai/clip-vit-base-patch32",
            CLIP,
            _CLIP_TEXT_FILES[:3] + ("pytorch_model.bin",) + _CLIP_TEXT_FILES[3:],
            licence="mit",
            note="main has no safetensors: the PyTorch pickle is loaded (weights only)",
        ),
    )
}


class IncompleteRepository(ValueError):
    """A listing that lacks a part vip needs (``str(exc)`` says which)."""


def detect_kind(paths: list[str]) -> str:
    """What a repository holds, from its file names alone."""
    names = set(paths)
    if "model_index.json" in names:
        return INPAINT
    if ADAPTER_FILENAME in names:
        return ADAPTER
    if "config.json" in names:
        return VLM  # transformers layout (VLM and CLIP repositories select the same files)
    if any(path.endswith(".safetensors") and "/" not in path for path in paths):
        return LORA
    raise IncompleteRepository("it holds no model_index.json, config.json or .safetensors file vip can load")


def _weight_groups(names: list[str]) -> dict[tuple[str, str | None], list[str]]:
    """Weight files (and their shard indexes) of one folder, grouped by (format, variant)."""
    groups: dict[tuple[str, str | None], list[str]] = {}
    for name in names:
        match = _WEIGHT.match(name) or _WEIGHT_INDEX.match(name)
        if match is None or match["stem"] not in _WEIGHT_STEMS:
            continue
        variant = match["variant"].lstrip(".") or None
        groups.setdefault((match["fmt"], variant), []).append(name)
    return groups


def _is_weight(name: str) -> bool:
    return bool(_WEIGHT.match(name) or _WEIGHT_INDEX.match(name))


def _pick_group(groups: dict, variant: str | None) -> tuple[str, str | None] | None:
    order = [("safetensors", None), ("safetensors", "fp16"), ("bin", None), ("bin", "fp16")]
    if variant == "fp16":
        order = [("safetensors", "fp16"), ("safetensors", None), ("bin", "fp16"), ("bin", None)]
    return next((key for key in order if key in groups), None)


def _folder_files(paths: list[str], folder: str) -> list[str]:
    prefix = f"{folder}/" if folder else ""
    return [path[len(prefix) :] for path in paths if path.startswith(prefix) and "/" not in path[len(prefix) :]]


def select_files(kind: str, paths: list[str], parts: list[str] | None = None) -> ModelFiles:
    """The files vip loads from a repository holding ``paths``, by the rule in this module's docstring.

    ``parts`` are the pipeline parts ``model_index.json`` names (diffusers); by default the listing's folders.
    """
    paths = sorted(set(paths))
    if kind == ADAPTER:
        if ADAPTER_FILENAME not in paths:
            raise IncompleteRepository(f"it has no {ADAPTER_FILENAME}")
        return ModelFiles("", kind, (ADAPTER_FILENAME,))
    if kind == LORA:
        weights = [path for path in _folder_files(paths, "") if path.endswith(".safetensors")]
        if not weights:
            raise IncompleteRepository("it has no .safetensors LoRA file")
        preferred = [name for name in weights if name == "pytorch_lora_weights.safetensors"]
        return ModelFiles("", kind, ((preferred or weights)[0],))
    if kind == CONTROLNET and set(PROMAX_FILES) <= set(paths):
        return ModelFiles("", kind, PROMAX_FILES)
    if kind in (VLM, CLIP, TINY_VAE, CONTROLNET):
        top = _folder_files(paths, "")
        group = _pick_group(_weight_groups(top), None)
        if group is None:
            raise IncompleteRepository("it has no model weights (model.safetensors or pytorch_model.bin)")
        configs = [name for name in top if name.endswith(_CONFIG_SUFFIXES) and not _is_weight(name)]
        return ModelFiles("", kind, tuple(sorted(configs + _weight_groups(top)[group])))
    if kind not in (INPAINT, EDIT):
        raise ValueError(f"unknown model kind {kind!r}")
    if "model_index.json" not in paths:
        raise IncompleteRepository("it has no model_index.json (not a diffusers pipeline)")
    folders = sorted({path.split("/", 1)[0] for path in paths if "/" in path})
    parts = [part for part in (parts if parts is not None else folders) if part not in SKIPPED_PARTS]
    groups = {part: _weight_groups(_folder_files(paths, part)) for part in parts}
    # fp16 for all parts as soon as one part has no fp32 safetensors but fp16 ones (diffusers takes one variant)
    variant = (
        "fp16"
        if any(("safetensors", None) not in found and ("safetensors", "fp16") in found for found in groups.values())
        else None
    )
    files = ["model_index.json"]
    for part in parts:
        names = _folder_files(paths, part)
        if not names:
            raise IncompleteRepository(f"model_index.json names '{part}', which has no files")
        files += [f"{part}/{name}" for name in names if name.endswith(_CONFIG_SUFFIXES) and not _is_weight(name)]
        group = _pick_group(groups[part], variant)
        if group is not None:
            files += [f"{part}/{name}" for name in groups[part][group]]
        elif "config.json" in names or any(
            name.endswith((".bin", ".safetensors", ".ckpt", ".pt", ".pth")) for name in names
        ):
            raise IncompleteRepository(f"'{part}/' has no weights vip can load")
    return ModelFiles("", kind, tuple(sorted(files)), variant=variant)


# vip edit: the Paint by Inpaint checkpoints (one upload each, the same file set; fp16 tensors under plain names,
# loaded as fp32 on CPU). timbrooks/instruct-pix2pix has no entry: only part of its listing was recorded
# (tests/hub_listings/timbrooks--instruct-pix2pix.json), so the rule picks its files from the hub's listing.
for _name in ("add-base", "add-finetuned-mb", "general-base", "general-finetuned-mb"):
    MODEL_FILES[f"paint-by-inpaint/{_name}"] = ModelFiles(
        f"paint-by-inpaint/{_name}",
        EDIT,
        _SD_FP32_FILES,
        note="Paint by Inpaint (arXiv 2404.18212); ~2.1 GB of fp16 weights",
    )


# --vae tiny (and --fast): TAESD, the tiny autoencoders distilled from SD's and SDXL's VAEs (~10 MB each)
for _name, _note in (("taesd", "TAESD for SD-1.x/2.x latents"), ("taesdxl", "TAESD for SDXL latents")):
    MODEL_FILES[f"madebyollin/{_name}"] = ModelFiles(
        f"madebyollin/{_name}",
        TINY_VAE,
        ("config.json", "diffusion_pytorch_model.safetensors"),
        licence="mit",
        note=f"{_note} (AutoencoderTiny); ~10 MB of fp32 safetensors",
    )


# `controlnet`: ControlNet Union ProMax for SDXL (xinsir, Apache-2.0), in xinsir's repository and a diffusers-layout
# copy; the TCD-SDXL LoRA of the fast preset with a ControlNet.
MODEL_FILES["OzzyGT/controlnet-union-promax-sdxl-1.0"] = ModelFiles(
    "OzzyGT/controlnet-union-promax-sdxl-1.0",
    CONTROLNET,
    ("config.json", "diffusion_pytorch_model.fp16.safetensors"),
    licence="apache-2.0",
    note="xinsir's ControlNet Union ProMax under diffusers' file names; fp16 safetensors only (~2.5 GB)",
)
MODEL_FILES["xinsir/controlnet-union-sdxl-1.0"] = ModelFiles(
    "xinsir/controlnet-union-sdxl-1.0",
    CONTROLNET,
    PROMAX_FILES,
    licence="apache-2.0",
    note="the ProMax files only (~2.5 GB); the first release beside them has no inpaint / outpaint type",
)
# `model` sdxl-union: the checkpoint of the widely forked outpainting demo, paired there with the ProMax. The rule
# takes its fp32 parts (the UNet's in two shards); the single-file checkpoints at the top level are skipped.
MODEL_FILES["SG161222/RealVisXL_V5.0_Lightning"] = ModelFiles(
    "SG161222/RealVisXL_V5.0_Lightning",
    INPAINT,
    (
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder_2/config.json",
        "text_encoder_2/model.safetensors",
        *_SD_TOKENIZER,
        *(name.replace("tokenizer/", "tokenizer_2/") for name in _SD_TOKENIZER),
        "unet/config.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ),
    licence="openrail++",
    note="RealVisXL V5.0 Lightning: a step-distilled text-to-image SDXL (`model` sdxl-union, with `controlnet` "
    "union); fp32 safetensors (~13.9 GB; the fp16 variant is ~6.9 GB)",
)
MODEL_FILES["h1t/TCD-SDXL-LoRA"] = ModelFiles(
    "h1t/TCD-SDXL-LoRA",
    LORA,
    ("pytorch_lora_weights.safetensors",),
    licence="mit",
    note="TCD LoRA for SDXL (`fast` with a ControlNet), ~394 MB; arXiv 2402.19159",
)


def files_for(repo_id: str, kind: str | None, paths: list[str] | None, parts: list[str] | None = None) -> ModelFiles:
    """The table's entry for ``repo_id``, else the rule applied to its listing."""
    if repo_id in MODEL_FILES:
        return MODEL_FILES[repo_id]
    if paths is None:
        raise IncompleteRepository("its file listing is unknown")
    chosen = select_files(kind or detect_kind(paths), paths, parts)
    return ModelFiles(repo_id, chosen.kind, chosen.files, variant=chosen.variant)
