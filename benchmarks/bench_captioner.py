"""CPU time per image of the default captioner candidates, with random weights of their real architectures.

Why: the default captioner must run on a laptop CPU. The candidates are
``HuggingFaceTB/SmolVLM-256M-Instruct`` and ``-500M-Instruct`` (PEERS.md). Weights cannot be
downloaded here, and speed does not depend on weight values, so this builds each model from its
published configuration (``config.json`` / ``preprocessor_config.json`` on the hub, values below)
with random weights, and times what ``vip caption`` does per image: the two questions of
``caption_for_outpaint`` (Center, Surrounding), each a full greedy generation of
``MAX_NEW_TOKENS`` new tokens (end-of-answer disabled, so this is an upper bound: real answers of
one or two sentences stop earlier), fp32, through ``TransformersCaptioner.generate``.

It compares the processors' published image tiling (4x4 tiles of 512 px + a global view: 17 x 64 =
1088 image tokens per question) with the one-view tiling vip uses (one 512-px view: 64 tokens).
The tokenizer is a small BPE trained here (the real one is a download); the prompt text is a few
dozen tokens either way, small next to the image tokens.

Run:  .venv/bin/python benchmarks/bench_captioner.py            # all three configurations
      .venv/bin/python benchmarks/bench_captioner.py --only 256m-1 --images 2

Results on the development machine (2 AMD EPYC cores shared with other jobs, load average 5-7
during the runs, so wall times are inflated and process CPU time is the steadier figure; torch 2.13
CPU, 2 threads, fp32), one 512x512 photo, seconds per image, two runs each where given:

    configuration                                       process CPU        wall
    SmolVLM-256M, one 512-px view (vip's default)       89.3 / 75.4    93.4 / 177.1
    SmolVLM-500M, one 512-px view                      134.3 / 127.3  166.7 / 195.7
    SmolVLM-256M, published 4x4 tiling + global view   213.8           305.0

Where the time goes (256M, one view, same machine): the SigLIP tower ~7 s per question, then
~0.3 s per generated token (30 decoder layers, fp32); the 144 new tokens dominate. Real answers of
one or two sentences stop near 40 tokens, so expect roughly half of these figures; a laptop with
more free cores is faster still.

Decision: SmolVLM-256M-Instruct with one 512-px view is the default (``hub.DEFAULT_CAPTIONER_MODEL``,
``captioner.IDEFICS3_TILES_PER_SIDE = 1``). The 500M model costs 1.5-1.7x the CPU time per image,
and the published 4x4 tiling about 2.5x, for detail a 77-token prompt cannot carry; users who want
better text pick ``--captioner smolvlm-500m`` or ``qwen2-vl-2b``, or a GPU server with
``--captioner-url``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vipcli_model.captioning import templates as templates  # noqa: E402
from vipcli_model.captioning.captioner import TransformersCaptioner  # noqa: E402

# Published values (HuggingFaceTB/SmolVLM-{256M,500M}-Instruct config.json): an Idefics3 model with a
# SigLIP-base-patch16-512 vision tower (93M), a pixel-shuffle connector (scale factor 4) and a
# SmolLM2 text model (135M or 360M).
VISION_CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 512,
    "patch_size": 16,
    "layer_norm_eps": 1e-6,
}
TEXT_CONFIGS = {
    "256m": {  # SmolLM2-135M
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
    },
    "500m": {  # SmolLM2-360M
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
    },
}
COMMON_TEXT = {
    "model_type": "llama",
    "vocab_size": 49280,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "head_dim": 64,
}
SCALE_FACTOR = 4
IMAGE_SEQ_LEN = 64  # (512 / 16)^2 / 4^2
PUBLISHED_LONGEST_EDGE = 2048  # preprocessor_config.json "size": resize to 4 tiles per side
TILE = 512  # preprocessor_config.json "max_image_size"

CONFIGURATIONS = {"256m-1": ("256m", 1), "500m-1": ("500m", 1), "256m-4": ("256m", 4)}


def build_processor(tiles_per_side: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Idefics3Processor, PreTrainedTokenizerFast
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_vlm import BASE_SPECIAL_TOKENS, IMAGE_TOKENS, SMOLVLM_CHAT_TEMPLATE

    corpus = [
        templates.OUTPAINT_CENTER,
        templates.OUTPAINT_SURROUNDING,
        templates.TRAINING_CENTER,
        templates.TRAINING_SURROUNDING,
    ]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        corpus * 8,
        trainers.BpeTrainer(
            vocab_size=1000,
            special_tokens=BASE_SPECIAL_TOKENS + IMAGE_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS})
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": TILE * tiles_per_side},
        max_image_size={"longest_edge": TILE},
        do_image_splitting=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )


def build_model(size: str, tokenizer):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    config = Idefics3Config(
        text_config={**COMMON_TEXT, **TEXT_CONFIGS[size], "pad_token_id": 2, "bos_token_id": 1, "eos_token_id": 2},
        vision_config=VISION_CONFIG,
        scale_factor=SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None  # run every answer to MAX_NEW_TOKENS (upper bound)
    model.generation_config.pad_token_id = 2
    return model


def test_image():
    from PIL import Image

    try:
        from skimage import data

        return Image.fromarray(data.astronaut())  # 512 x 512 photo
    except ImportError:
        import numpy as np

        return Image.fromarray(np.random.RandomState(0).randint(0, 256, (512, 512, 3), dtype=np.uint8))


def bench(name: str, images: int) -> tuple[float, float, int]:
    size, tiles = CONFIGURATIONS[name]
    processor = build_processor(tiles)
    model = build_model(size, processor.tokenizer)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    captioner = TransformersCaptioner(model, processor, name=name, device=torch.device("cpu"), dtype=torch.float32)
    image = test_image()
    instructions = [templates.outpaint_center_instruction(), templates.outpaint_surrounding_instruction()]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instructions[0]}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    prompt_tokens = len(processor(text=[prompt], images=[image])["input_ids"][0])
    print(f"{name}: {parameters / 1e6:.0f}M parameters, {prompt_tokens} prompt tokens per question", flush=True)
    captioner.generate(image, "Describe this photo.", max_new_tokens=2)  # warm-up (allocations, kernels)
    wall_times, cpu_times = [], []
    for _ in range(images):
        wall, cpu = time.perf_counter(), time.process_time()
        for instruction in instructions:
            captioner.generate(image, instruction, max_new_tokens=templates.MAX_NEW_TOKENS)
        wall_times.append(time.perf_counter() - wall)
        cpu_times.append(time.process_time() - cpu)
        print(f"  image: {wall_times[-1]:.1f} s wall, {cpu_times[-1]:.1f} s CPU", flush=True)
    del model, captioner
    return min(wall_times), min(cpu_times), parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CONFIGURATIONS), action="append", help="configuration(s) to run")
    parser.add_argument("--images", type=int, default=1, help="images timed per configuration (best is kept)")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, {templates.MAX_NEW_TOKENS} new tokens x "
        "2 questions"
    )
    results = {name: bench(name, args.images) for name in (args.only or list(CONFIGURATIONS))}
    print("\nseconds per image (best of runs): wall / process CPU")
    for name, (wall, cpu, parameters) in results.items():
        size, tiles = CONFIGURATIONS[name]
        tiling = "one 512-px view" if tiles == 1 else f"{tiles}x{tiles} tiles + global view"
        print(f"  SmolVLM-{size.upper()} ({parameters / 1e6:.0f}M), {tiling:28s}: {wall:6.1f} / {cpu:6.1f}")


if __name__ == "__main__":
    main()
