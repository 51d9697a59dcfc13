"""A tiny FLUX.2 [klein] pipeline built in code: transformer, Qwen3 text encoder, tokenizer, autoencoder.

The real classes at toy size, seeded, saved as a diffusers folder like the real repository (``model_index.json``
names ``Flux2KleinPipeline``, ``is_distilled``). The Qwen3 encoder has 28 layers (the pipeline stacks the hidden
states of layers 9, 18 and 27) of width 16, so the transformer's text input is 3 x 16 = 48 wide. The tokenizer is
a byte-level ``Qwen2Tokenizer`` made here (one token per byte, no merges) with the chat template's special tokens;
the template is Qwen3's shape (a user turn, then an open assistant turn), without the thinking markup.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_models import _bytes_to_unicode

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def build_tiny_qwen_tokenizer():
    """A byte-level Qwen2 tokenizer: each byte one token, the special tokens after them."""
    from transformers import Qwen2Tokenizer

    vocab = {symbol: index for index, symbol in enumerate(_bytes_to_unicode().values())}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=512)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_flux2_klein_components(seed: int = 0, num_layers: int = 1, num_single_layers: int = 1) -> dict:
    """The components of a FLUX.2 [klein] pipeline, tiny and seeded.

    A one-block autoencoder (scale factor 1, 2 latent channels, patchified 2x2: 8 channels per token), so sizes
    are multiples of 2 and an image of S x S pixels is (S/2)^2 tokens, and as many reference tokens.
    """
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=8,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,
    )
    torch.manual_seed(seed)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=28,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
        )
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        block_out_channels=(4,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1,
        latent_channels=2,
        norm_num_groups=1,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "transformer": transformer,
        "vae": vae.eval(),
    }


def save_tiny_flux2_klein_model(folder: Path, seed: int = 0) -> Path:
    """Save a tiny FLUX.2 [klein] model as a diffusers folder (``_class_name`` Flux2KleinPipeline, distilled)."""
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline(**build_tiny_flux2_klein_components(seed), is_distilled=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def save_tiny_flux2_klein_repo(folder: Path) -> Path:
    """A tiny FLUX.2 [klein] saved as black-forest-labs/FLUX.2-klein-4B is: the text encoder in two shards with
    their index, and every tokenizer file of the real repository (vocab.json, merges.txt, added_tokens.json,
    special_tokens_map.json, chat_template.jinja besides tokenizer.json and tokenizer_config.json)."""
    import json

    from transformers import Qwen3ForCausalLM

    folder = save_tiny_flux2_klein_model(Path(folder))
    encoder_folder = folder / "text_encoder"
    encoder = Qwen3ForCausalLM.from_pretrained(encoder_folder)
    for old in encoder_folder.glob("model*.safetensors*"):
        old.unlink()
    size = sum(p.numel() * p.element_size() for p in encoder.parameters())
    encoder.save_pretrained(encoder_folder, max_shard_size=int(size * 0.6))
    assert {path.name for path in encoder_folder.glob("model-0000*-of-00002.safetensors")} == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    tokenizer_folder = folder / "tokenizer"
    tokenizer = build_tiny_qwen_tokenizer()
    vocab = {token: index for token, index in tokenizer.get_vocab().items() if token not in SPECIAL_TOKENS}
    (tokenizer_folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tokenizer_folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    added = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    (tokenizer_folder / "added_tokens.json").write_text(json.dumps(added), encoding="utf-8")
    specials = {"additional_special_tokens": list(SPECIAL_TOKENS[1:]), "eos_token": SPECIAL_TOKENS[0]}
    (tokenizer_folder / "special_tokens_map.json").write_text(json.dumps(specials), encoding="utf-8")
    if not (tokenizer_folder / "chat_template.jinja").is_file():
        (tokenizer_folder / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    return folder
