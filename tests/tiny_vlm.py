"""A tiny random SmolVLM (Idefics3 architecture), built in code and saved like the real one.

The default captioner, ``HuggingFaceTB/SmolVLM-256M-Instruct``, is an ``Idefics3ForConditionalGeneration``
(SigLIP vision tower + pixel-shuffle connector + Llama text model) with an ``Idefics3Processor``
(image splitting into tiles, ``<image>`` placeholders, row/col tokens) and SmolVLM's chat template.
This module builds every one of those pieces at toy size: 32-px tiles cut into 8-px patches, two
layers each side, hidden size 32, and a byte-level BPE tokenizer trained here on a few sentences.
Saved with ``save_pretrained`` and loaded back with ``load_captioner(model=FOLDER)``, it takes the
same code path as the real model, and captions an image in a few hundred milliseconds on a CPU.

Random weights produce random text. To make it look like words (a real captioner answers with words,
not with special tokens or runs of punctuation), only the output rows of whole-word tokens (a leading
space then letters) keep their random weights; the others are zeroed, so greedy decoding picks words.
"""

from __future__ import annotations

from pathlib import Path

import torch

# SmolVLM's chat template (from the model's processor/tokenizer configuration): a "User:" turn with an
# image placeholder and text, closed by <end_of_utterance>, then "Assistant:".
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Special tokens, in SmolLM2's order for the first three.
BASE_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)
]

_CORPUS = [
    "A woman in a space suit stands in front of a flag and a model of a shuttle.",
    "A cup of coffee on a saucer, on a wooden table, seen from above.",
    "An orange tabby cat lies on a windowsill; the room behind it is dark.",
    "Blue sky with white clouds, green hills, a road, trees and a river in the distance.",
    "The surroundings continue with a grey wall, a floor, a window and soft light.",
    "Describe this photo in one or two sentences. What lies beyond the frame?",
    "The image shows a city street at night with cars, lights, people and buildings.",
    "Mountains, a lake, a beach with sand and waves, a forest of pine trees.",
]

TILE_SIZE = 32  # vision encoder input (the real model: 512)
PATCH_SIZE = 8  # (the real model: 16)
SCALE_FACTOR = 2  # pixel-shuffle factor (the real model: 4)
IMAGE_SEQ_LEN = (TILE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2  # <image> tokens per tile (real: 64)


def build_tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on a few sentences, with SmolVLM's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BASE_SPECIAL_TOKENS + IMAGE_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=2048,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS})
    return tokenizer


def build_tiny_processor(longest_edge: int = 2 * TILE_SIZE):
    """An ``Idefics3Processor``: images resized to ``longest_edge``, cut into ``TILE_SIZE`` tiles."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": longest_edge},
        max_image_size={"longest_edge": TILE_SIZE},
        do_image_splitting=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=build_tiny_tokenizer(),
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )


def build_tiny_model(tokenizer, seed: int = 0):
    """``Idefics3ForConditionalGeneration`` with tiny vision and text towers, seeded."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    end_of_utterance = ids("<end_of_utterance>")
    config = Idefics3Config(
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-5,
            "bos_token_id": ids("<|im_start|>"),
            "eos_token_id": end_of_utterance,
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": TILE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        scale_factor=SCALE_FACTOR,
        image_token_id=ids("<image>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        for token, token_id in tokenizer.get_vocab().items():
            if not (token.startswith("\u0120") and token[1:].isalpha() and len(token) > 2):
                head[token_id].zero_()
    model.generation_config.eos_token_id = end_of_utterance
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.generation_config.bos_token_id = ids("<|im_start|>")
    return model


def save_tiny_vlm(folder: Path, seed: int = 0) -> Path:
    """Save a tiny SmolVLM-like captioner (model + processor) that ``--captioner FOLDER`` loads."""
    folder = Path(folder)
    processor = build_tiny_processor()
    model = build_tiny_model(processor.tokenizer, seed=seed)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder
