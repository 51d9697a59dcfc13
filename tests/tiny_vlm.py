"""Captioner doubles for tests: a tiny random SmolVLM built in code, and a stub chat-completions server.

A tiny random SmolVLM (Idefics3 architecture), built in code and saved like the real one:

The default captioner, ``HuggingFaceTB/SmolVLM-256M-Instruct``, is an ``Idefics3ForConditionalGeneration``
(SigLIP vision tower + pixel-shuffle connector + Llama text model) with an ``Idefics3Processor``
(image splitting into tiles, ``<image>`` placeholders, row/col tokens) and SmolVLM's chat template.
This module builds every one of those pieces at toy size: 32-px tiles cut into 8-px patches, two
layers each side, hidden size 32, and a byte-level BPE tokenizer trained here on a few sentences.
Saved with ``save_pretrained`` and loaded back with ``load_captioner(model=FOLDER)``, it takes the
same code path as the real model, and captions an image in a few hundred milliseconds on a CPU.

Random weights produce random text, and greedy decoding soon repeats one word forever, which would
make every answer run to ``max_new_tokens`` (about a second here). Three edits make the answers short
and deterministic without training anything:

- the connector's projection is zeroed, so the answer depends on the instruction only (the image
  still goes through the processor, the vision tower and the connector, as with the real model);
- only the output rows of whole-word tokens (a leading space then letters) keep their random
  weights, so it answers with words rather than special tokens or punctuation;
- the ``<end_of_utterance>`` row copies the row of the first word it would repeat (later loop words
  are never generated), so each of vip's questions gets a few words and a stop.
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
        model_input_names=["input_ids", "attention_mask"],  # as SmolVLM's: no token_type_ids (transformers 4 adds them)
    )
    tokenizer.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS})
    return tokenizer


def build_tiny_processor(longest_edge: int = 2 * TILE_SIZE):
    """An ``Idefics3Processor``: images resized to ``longest_edge``, cut into ``TILE_SIZE`` tiles."""
    from transformers import Idefics3Processor

    try:  # transformers 5 names the torchvision-free processor apart; before, it was the only one
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    except ImportError:
        from transformers import Idefics3ImageProcessor as Idefics3ImageProcessorPil

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


def build_tiny_model(processor, seed: int = 0):
    """``Idefics3ForConditionalGeneration`` with tiny vision and text towers, seeded (see the module doc)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    tokenizer = processor.tokenizer
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
        model.model.connector.modality_projection.proj.weight.zero_()
        head = model.get_output_embeddings().weight
        for token, token_id in tokenizer.get_vocab().items():
            if not (token.startswith("\u0120") and token[1:].isalpha() and len(token) > 2):
                head[token_id].zero_()
    model.generation_config.eos_token_id = end_of_utterance
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.generation_config.bos_token_id = ids("<|im_start|>")
    _stop_where_it_repeats(model, end_of_utterance)
    return model


def _greedy_answer(model, processor, instruction: str, max_new_tokens: int) -> list[int]:
    from PIL import Image

    image = Image.new("RGB", (48, 40), (90, 120, 150))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def _stop_where_it_repeats(model, end_of_utterance: int, max_words: int = 16) -> None:
    """Make every answer to vip's questions stop after a few words (see the module docstring).

    The answers are computed as vip will ask them: with the image resized to the tiles vip allows
    (the number of image tokens shifts the positions of the text, hence the answer).
    """
    from vipcli_model.captioning import templates
    from vipcli_model.captioning.captioner import IDEFICS3_TILES_PER_SIDE

    processor = build_tiny_processor(longest_edge=TILE_SIZE * IDEFICS3_TILES_PER_SIDE)

    instructions = [
        templates.outpaint_center_instruction(),
        templates.outpaint_surrounding_instruction(),
        templates.outpaint_surrounding_instruction("snowy mountains"),
        templates.training_center_instruction(),
        templates.training_surrounding_instruction(),
    ]
    head = model.get_output_embeddings().weight
    stop_set = False
    for _ in range(16):
        looping = None
        for instruction in instructions:
            answer = _greedy_answer(model, processor, instruction, max_words)
            if len(answer) > 1 and answer[-1] == end_of_utterance:
                continue
            repeated = [token for index, token in enumerate(answer) if token in answer[:index]]
            looping = repeated[0] if repeated else answer[0]
            break
        if looping is None:
            return
        with torch.no_grad():
            if not stop_set and looping != end_of_utterance:
                head[end_of_utterance] = head[looping] * 1.5
                stop_set = True
            else:
                head[looping].zero_()
    raise RuntimeError("tiny VLM: could not make its answers stop; try another seed")


def save_tiny_vlm(folder: Path, seed: int = 0) -> Path:
    """Save a tiny SmolVLM-like captioner (model + processor) that ``--captioner FOLDER`` loads."""
    folder = Path(folder)
    processor = build_tiny_processor()
    model = build_tiny_model(processor, seed=seed)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


_saved_folder: Path | None = None


def shared_tiny_vlm(tmp_path_factory) -> Path:
    """One saved tiny VLM per test session, whichever test module asks first."""
    global _saved_folder
    if _saved_folder is None or not (_saved_folder / "config.json").exists():
        _saved_folder = save_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))
    return _saved_folder


# ------------------------------------------------------------------ a stub OpenAI-compatible server


class ChatCompletionsStub:
    """``POST /v1/chat/completions`` on 127.0.0.1 (a free port), in a thread.

    ``behaviour``: "ok" (answers ``answer`` as the message content), "error" (HTTP 500 with an
    OpenAI-style error body), "slow" (sleeps ``delay`` seconds first), "garbage" (not JSON),
    "no-choices" (JSON of the wrong shape). Every request body is kept in ``requests``.
    """

    def __init__(self, behaviour: str = "ok", answer: str = "A red barn in a green field.", delay: float = 2.0):
        import http.server
        import json
        import threading
        import time

        stub = self
        self.behaviour = behaviour
        self.answer = answer
        self.requests: list[dict] = []
        self.headers: list[dict] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stub.requests.append(json.loads(body))
                stub.headers.append(dict(self.headers))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, b'{"error": {"message": "no such route"}}')
                if stub.behaviour == "error":
                    return self._send(500, b'{"error": {"message": "model crashed", "type": "server_error"}}')
                if stub.behaviour == "garbage":
                    return self._send(200, b"<html>Bad Gateway</html>")
                if stub.behaviour == "no-choices":
                    return self._send(200, b'{"id": "x", "object": "chat.completion"}')
                if stub.behaviour == "slow":
                    time.sleep(delay)
                answer = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": stub.requests[-1].get("model"),
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": stub.answer}, "finish_reason": "stop"}
                    ],
                }
                return self._send(200, json.dumps(answer).encode())

            def _send(self, status: int, payload: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args):  # keep test output clean
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
