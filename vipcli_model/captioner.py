"""Captioners: a multimodal LLM turns an image into Center / Surrounding / Total prompts (VIP stage 1).

Two backends speak the same small protocol (``Captioner.generate(image, instruction)``):

- ``TransformersCaptioner``: any transformers image-text-to-text model (``AutoProcessor`` +
  ``AutoModelForImageTextToText``, no remote code), greedy decoding, fp32 on CPU. The default is
  SmolVLM-256M-Instruct (see ``benchmarks/bench_captioner.py`` for why not -500M).
- ``HttpCaptioner``: an OpenAI-compatible chat-completions server (llama.cpp, vLLM, Ollama...),
  the image sent inline as a base64 PNG, using only the standard library.

On top of the backends, in the order a caption is made:

1. ``caption_for_outpaint`` / ``caption_for_training`` ask the questions of ``caption_templates``;
2. ``clean_answer`` strips chat artefacts from each answer;
3. ``fit_to_token_window`` cuts each prompt to CLIP's 77 tokens at a sentence boundary;
4. ``CaptionCache`` keeps the answers, keyed by pixels + model + template version + mode, so a
   repeated run costs nothing;
5. ``read_caption_jsonl`` / ``CaptionJsonlWriter`` keep the JSON Lines file ``vip train`` reads;
6. ``caption_images`` runs all of it over many images: resumable, one bad image does not stop
   the rest, progress reported through callbacks.

The library never prints: it logs, raises ``VipError`` subclasses, and calls callbacks.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import logging
import math
import os
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import platformdirs
from PIL import Image

from . import caption_templates as templates
from .errors import CaptionerError, InputError, ModelLoadError, ModelNotFoundError, OptionError, OutputError
from .files import atomic_write_text, image_key, read_jsonl
from .hub import (
    DEFAULT_CAPTIONER_MODEL,
    DEFAULT_INPAINT_MODEL,
    cache_dir,
    load_cached_first,
    load_with_errors,
    resolve_spec,
)
from .prompts import RegionPrompts, join_total, merge_keywords

logger = logging.getLogger(__name__)

CLIP_MAX_TOKENS = 77  # the text encoder's window, start and end tokens included

# Idefics3 / SmolVLM processors upscale every image to 4x4 tiles of 512 px plus a global view
# (17 x 64 = 1088 image tokens per question). One 512-px view (64 tokens) describes a scene well
# enough for a prompt and is about 10x cheaper on a CPU (benchmarks/bench_captioner.py).
IDEFICS3_TILES_PER_SIDE = 1

# Images sent to a server are shrunk to this longest side first (servers resize anyway).
HTTP_MAX_IMAGE_SIDE = 1024

MODE_OUTPAINT = "outpaint"
MODE_TRAINING = "training"

Box = tuple[int, int, int, int]


# ============================================================================== the protocol


@runtime_checkable
class Captioner(Protocol):
    """Anything that answers an instruction about an image."""

    name: str  # model id, or "model@url" for a server; recorded in outputs and cache keys

    def generate(self, image: Image.Image, instruction: str, *, max_new_tokens: int) -> str:
        """The model's raw answer (cleaning happens in ``clean_answer``)."""
        ...


class EmptyAnswerError(CaptionerError):
    """The captioner answered, but nothing usable was left after cleaning (this image only)."""


@dataclass(frozen=True)
class CaptionerSpec:
    """Which captioner to use. Knows its ``name`` without loading anything (cache keys need it)."""

    model: str | None = None  # transformers model: preset, hub id or local folder; None = the default
    url: str | None = None  # base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1
    server_model: str | None = None  # the model name that server serves
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (transformers backend only)
    timeout: float = 60.0  # seconds to wait for a server's answer
    api_key: str | None = field(default=None, repr=False)  # sent as "Authorization: Bearer ..."

    def __post_init__(self) -> None:
        if self.url is not None and self.model is not None:
            raise OptionError(
                "--captioner and --captioner-url name two different captioners: give one of them "
                "(--captioner for a local transformers model, --captioner-url with --captioner-model for a server)"
            )
        if self.url is not None and not (self.server_model or "").strip():
            raise OptionError(
                f"--captioner-url {self.url} needs --captioner-model NAME: the model name the server serves"
            )
        if self.url is None and self.server_model is not None:
            raise OptionError(
                "--captioner-model names a model on a server: give --captioner-url URL too "
                "(or use --captioner for a local transformers model)"
            )
        if self.url is not None and not re.match(r"^https?://[^/\s]+", self.url.strip()):
            raise OptionError(
                f"--captioner-url '{self.url}' is not an http:// or https:// URL "
                "(e.g. http://127.0.0.1:8080/v1)"
            )
        if not (isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout) and self.timeout > 0):
            raise OptionError(f"--captioner-timeout must be a number of seconds above 0, got {self.timeout!r}")
        if self.url is None:
            from .device import pick_device

            pick_device(self.device)  # a bad --device is reported now, not after the first cache miss

    @property
    def is_server(self) -> bool:
        return self.url is not None

    @property
    def model_id(self) -> str:
        """The transformers model to load: presets expanded, local paths made absolute."""
        spec = resolve_spec(self.model or DEFAULT_CAPTIONER_MODEL)
        local = Path(spec).expanduser()
        return str(local.resolve()) if local.exists() else spec

    @property
    def name(self) -> str:
        if self.is_server:
            return f"{self.server_model}@{_base_url(self.url or '')}"
        return self.model_id

    def load(self) -> Captioner:
        if self.is_server:
            return HttpCaptioner(
                self.url or "", self.server_model or "", timeout=self.timeout, api_key=self.api_key
            )
        return TransformersCaptioner.load(self.model_id, device=self.device)


def load_captioner(
    model: str | None = None,
    *,
    url: str | None = None,
    server_model: str | None = None,
    device: str = "auto",
    timeout: float = 60.0,
    api_key: str | None = None,
) -> Captioner:
    """Load a transformers captioner (``model``: preset, hub id or folder; default SmolVLM-256M-Instruct),
    or connect to an OpenAI-compatible server (``url`` + ``server_model``).

    Raises ``OptionError`` for contradictory arguments, ``ModelNotFoundError`` / ``ModelLoadError``
    when a model cannot be had.
    """
    spec = CaptionerSpec(
        model=model, url=url, server_model=server_model, device=device, timeout=timeout, api_key=api_key
    )
    return spec.load()


# ============================================================================== transformers


class TransformersCaptioner:
    """A transformers image-text-to-text model with its processor; greedy decoding."""

    def __init__(self, model: Any, processor: Any, *, name: str, device: Any, dtype: Any) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.device = device
        self.dtype = dtype

    @classmethod
    def load(cls, model_id: str, *, device: str = "auto") -> "TransformersCaptioner":
        import torch

        from .device import pick_device, pick_dtype

        torch_device = pick_device(device)
        if torch_device.type == "cuda" and torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16  # VLMs are trained in bf16; fp16 can overflow
        else:
            dtype = pick_dtype(torch_device)  # fp32 on CPU and MPS

        def load_parts(local_files_only: bool) -> tuple[Any, Any]:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            where = {"cache_dir": str(cache_dir()), "local_files_only": local_files_only}
            processor = AutoProcessor.from_pretrained(model_id, **where)
            model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=dtype, **where)
            return processor, model

        logger.info("loading captioner %s on %s (%s)", model_id, torch_device, dtype)
        try:
            if Path(model_id).expanduser().exists():
                processor, model = load_with_errors(model_id, "captioner", lambda: load_parts(True))
            else:
                processor, model = load_cached_first(model_id, "captioner", load_parts)
        except ModelNotFoundError as exc:  # hub's advice names the inpainting model's option
            advice = str(exc).replace(
                "pass a local folder or .safetensors file with --model",
                "pass a local model folder with --captioner (or a server with --captioner-url)",
            )
            raise ModelNotFoundError(advice) from exc
        if getattr(processor, "image_processor", None) is None:
            raise ModelLoadError(
                f"captioner '{model_id}' has no image processor: it is not an image-text-to-text model"
            )
        if not getattr(processor, "chat_template", None):
            raise ModelLoadError(
                f"captioner '{model_id}' has no chat template: use an instruction-tuned (chat) model, "
                "e.g. smolvlm-256m or qwen2-vl-2b"
            )
        _limit_image_tiles(processor)
        model.to(torch_device).eval()
        return cls(model, processor, name=model_id, device=torch_device, dtype=dtype)

    def generate(self, image: Image.Image, instruction: str, *, max_new_tokens: int) -> str:
        import torch

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        try:
            prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = self.processor(text=[prompt], images=[image.convert("RGB")], return_tensors="pt")
        except Exception as exc:  # noqa: BLE001 - a processor that cannot take this input
            raise CaptionerError(f"captioner '{self.name}' cannot prepare its input: {_first_line(exc)}") from exc
        inputs = {
            key: value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
            for key, value in inputs.items()
            if isinstance(value, torch.Tensor)
        }
        try:
            with torch.inference_mode():
                output = self.model.generate(
                    **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1
                )
        except torch.OutOfMemoryError as exc:
            raise CaptionerError(
                f"captioner '{self.name}' ran out of memory on {self.device}: try --device cpu or a smaller --captioner"
            ) from exc
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]


def _limit_image_tiles(processor: Any) -> None:
    """Idefics3 / SmolVLM: tile images at most ``IDEFICS3_TILES_PER_SIDE`` per side (see the constant)."""
    image_processor = processor.image_processor
    tile = getattr(image_processor, "max_image_size", None)
    if not (isinstance(tile, dict) and tile.get("longest_edge")):
        return  # not an Idefics3-style processor: leave its resolution alone
    size = getattr(image_processor, "size", None)
    longest = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    limit = tile["longest_edge"] * IDEFICS3_TILES_PER_SIDE
    if longest and longest > limit:
        image_processor.size = {"longest_edge": limit}
        logger.info("captioner images resized to %d px (%d tile(s) per side)", limit, IDEFICS3_TILES_PER_SIDE)


# ============================================================================== HTTP server


def _base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url[: -len("/chat/completions")] if url.endswith("/chat/completions") else url


class HttpCaptioner:
    """An OpenAI-compatible chat-completions server: ``POST {url}/chat/completions``."""

    def __init__(self, url: str, server_model: str, *, timeout: float = 60.0, api_key: str | None = None) -> None:
        self.base_url = _base_url(url)
        self.endpoint = self.base_url + "/chat/completions"
        self.server_model = server_model
        self.timeout = timeout
        self.api_key = api_key
        self.name = f"{server_model}@{self.base_url}"

    def generate(self, image: Image.Image, instruction: str, *, max_new_tokens: int) -> str:
        body = {
            "model": self.server_model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": instruction},
                        {"type": "image_url", "image_url": {"url": _png_data_url(image)}},
                    ],
                }
            ],
            "max_tokens": max_new_tokens,
            "temperature": 0,
            "stream": False,
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "vip"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.endpoint, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        logger.info("asking %s (%s)", self.endpoint, self.server_model)
        return _answer_text(self._post(request), self.endpoint)

    def _post(self, request: urllib.request.Request) -> bytes:
        where = f"captioner server {self.endpoint}"
        too_slow = (
            f"{where} did not answer within {self.timeout:g} s: "
            "check that it is up, or allow more time with --captioner-timeout"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc)
            raise CaptionerError(
                f"{where} answered HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
            ) from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise CaptionerError(too_slow) from exc
            reason = getattr(exc.reason, "strerror", None) or str(exc.reason)
            raise CaptionerError(
                f"cannot reach {where}: {reason} (is the server running? check --captioner-url)"
            ) from exc
        except (TimeoutError, socket.timeout) as exc:
            raise CaptionerError(too_slow) from exc
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            raise CaptionerError(f"{where} broke off the answer: {_first_line(exc)}") from exc


def _png_data_url(image: Image.Image, max_side: int = HTTP_MAX_IMAGE_SIDE) -> str:
    image = image.convert("RGB")
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The server's own words about an HTTP error, on one short line."""
    try:
        raw = exc.read()
    except Exception:  # noqa: BLE001 - the body is a courtesy
        return ""
    try:
        answer = json.loads(raw)
        error = answer.get("error", answer) if isinstance(answer, dict) else answer
        message = error.get("message", error) if isinstance(error, dict) else error
        return _excerpt(str(message))
    except (ValueError, UnicodeDecodeError):
        return _excerpt(raw.decode("utf-8", "replace"))


def _answer_text(raw: bytes, endpoint: str) -> str:
    """``choices[0].message.content`` of a chat-completions answer, or a one-line CaptionerError."""
    where = f"captioner server {endpoint}"
    try:
        answer = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CaptionerError(
            f"{where} answered something that is not JSON ({_excerpt(raw.decode('utf-8', 'replace'))!r}): "
            "is it an OpenAI-compatible chat-completions server?"
        ) from exc
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        if isinstance(answer, dict) and answer.get("error"):
            error = answer["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise CaptionerError(f"{where} answered an error: {_excerpt(str(message))}") from exc
        raise CaptionerError(
            f"{where} answered JSON without choices[0].message.content ({_excerpt(json.dumps(answer))}): "
            "is it an OpenAI-compatible chat-completions server?"
        ) from exc
    if isinstance(content, list):  # content parts
        content = " ".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    if not isinstance(content, str):
        raise CaptionerError(f"{where} answered a message whose content is not text ({_excerpt(repr(content))})")
    return content


def _excerpt(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ============================================================================== cleaning answers

_THINKING = re.compile(r"<think>.*?(?:</think>|$)", re.S | re.I)
_SPECIAL_TOKENS = re.compile(
    r"<\|[^|<>\s]{1,40}\|>|</?s>|<end_of_utterance>|<fake_token_around_image>|<global-img>|<image>"
    r"|<row_\d+_col_\d+>|<(?:eos|bos|pad|unk|start_of_turn|end_of_turn)>|\[/?INST\]",
    re.I,
)
_LAST_ASSISTANT_TURN = re.compile(r"(?:^|\n|\s)(?:assistant|ASSISTANT|Assistant)\s*:\s*")
_LABEL = re.compile(
    r"^\s*(?:assistant|user|answer|response|output|caption|description|prompt|center(?: region)?"
    r"|centre|surroundings?|the surroundings|total)\s*:\s*",
    re.I,
)
_ROLE_LINE = re.compile(r"^\s*(?:assistant|model)\s*\n", re.I)
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok)[,!.]?\s*)?"
    r"(?:here(?:'s| is) (?:a |the |my )?(?:short |brief )?(?:description|caption)[^:.\n]*[:.]\s*)",
    re.I,
)
_LEAD_IN = re.compile(
    r"^\s*(?:(?:the|this) (?:image|photo|photograph|picture|scene) (?:shows|depicts|features|captures|"
    r"portrays|contains|is of)\s+|in (?:the|this) (?:image|photo|picture),?\s+)",
    re.I,
)
_BULLET = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+")
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`"}


def clean_answer(text: str) -> str:
    """Strip chat artefacts from a model's answer: role labels ("Assistant:", "Center:"), special
    tokens (``<end_of_utterance>``, ``<|im_end|>``...), thinking blocks, markdown, bullets,
    surrounding quotes and "The image shows" lead-ins. Lines are joined into one paragraph.
    """
    text = _THINKING.sub(" ", text or "")
    text = _SPECIAL_TOKENS.sub(" ", text)
    turns = list(_LAST_ASSISTANT_TURN.finditer(text))
    if turns:  # the whole conversation was decoded: keep the last assistant turn
        text = text[turns[-1].end() :]
    text = _ROLE_LINE.sub("", text)
    text = re.sub(r"\*\*|__|`+|^#+\s*", "", text, flags=re.M)
    text = re.sub(r"(?<![\w*])\*(?=\S)([^*\n]+)(?<=\S)\*(?![\w*])", r"\1", text)  # *emphasis*
    lines = [_BULLET.sub("", line).strip() for line in text.splitlines()]
    text = ""
    for line in filter(None, lines):
        if text and not text.endswith((".", "!", "?", ";", ":", ",")):
            text += ","
        text = f"{text} {line}" if text else line
    for _ in range(4):  # labels and preambles can stack ("Answer: Center: ...")
        before = text
        text = _PREAMBLE.sub("", _LABEL.sub("", text)).strip()
        text = _strip_quotes(text)
        if text == before:
            break
    lead_in = _LEAD_IN.match(text)
    if lead_in and len(text) > lead_in.end():
        text = text[lead_in.end() :]
        text = text[0].upper() + text[1:]
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    return text.strip(" ,;:-")


def _strip_quotes(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]]:
        text = text[1:-1].strip()
    return text


def _drop_unfinished_sentence(text: str) -> str:
    """"A cat on a mat. It looks at the" -> "A cat on a mat." (for a generation cut by its token limit)."""
    if not text or text.endswith((".", "!", "?")):
        return text
    ends = [match.end() for match in re.finditer(r"[.!?](?=\s)", text)]
    return text[: ends[-1]] if ends else text


# ============================================================================== 77-token window

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ESTIMATE_PIECES = re.compile(r"[^\W\d_]+|\d|[^\w\s]")


def count_tokens(text: str, tokenizer: Any = None) -> int:
    """Tokens ``text`` takes in the text encoder, start and end tokens included.

    Without a tokenizer, an estimate close to CLIP's BPE: a token per digit and punctuation mark,
    and one per word, plus one per 8 letters beyond the first 8 (long words split).
    """
    if tokenizer is None:
        pieces = _ESTIMATE_PIECES.findall(text)
        return 2 + sum(1 + (len(piece) - 1) // 8 if piece.isalpha() else 1 for piece in pieces)
    return len(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])


def fit_to_token_window(text: str, tokenizer: Any = None, max_tokens: int = CLIP_MAX_TOKENS) -> tuple[str, bool]:
    """Cut ``text`` to at most ``max_tokens`` tokens: whole sentences if at least one fits, else
    whole words. Returns (text, True when something was cut). ``tokenizer``: the inpainting model's
    CLIP tokenizer; ``None`` uses a word-count estimate (``count_tokens``).
    """
    text = " ".join(text.split())
    if not text or count_tokens(text, tokenizer) <= max_tokens:
        return text, False

    def fits(candidate: str) -> bool:
        return count_tokens(candidate, tokenizer) <= max_tokens

    sentences = _SENTENCE_END.split(text)
    kept = _longest_fitting_prefix(sentences, fits)
    if kept:
        return " ".join(sentences[:kept]), True
    words = text.split(" ")
    kept = _longest_fitting_prefix(words, fits)
    if kept:
        return " ".join(words[:kept]).rstrip(",;:-"), True
    characters = list(text)  # one giant "word": cut anywhere
    kept = _longest_fitting_prefix(characters, fits, joiner="")
    return text[:kept], True


def _longest_fitting_prefix(parts: list[str], fits: Callable[[str], bool], joiner: str = " ") -> int:
    """The largest k with ``fits(joiner.join(parts[:k]))`` (binary search; fitting is monotonic)."""
    low, high = 0, len(parts)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(joiner.join(parts[:middle])):
            low = middle
        else:
            high = middle - 1
    return low


def fit_prompts(
    center: str, surrounding: str, tokenizer: Any = None, max_tokens: int = CLIP_MAX_TOKENS
) -> tuple[RegionPrompts, list[str]]:
    """Center, Surrounding and their joined Total, each fitted to the token window.

    When the Total of the fitted parts is too long, it is joined from shorter versions of both
    parts (the Center gets at least half of the window), so neither part disappears from it.
    Returns the prompts and the names of the prompts that were cut.
    """
    truncated: list[str] = []
    center, cut = fit_to_token_window(center, tokenizer, max_tokens)
    if cut:
        truncated.append("center")
    surrounding, cut = fit_to_token_window(surrounding, tokenizer, max_tokens)
    if cut:
        truncated.append("surrounding")
    total = join_total(center, surrounding)
    if center and surrounding and count_tokens(total, tokenizer) > max_tokens:
        truncated.append("total")
        surrounding_need = count_tokens("Surrounding: " + surrounding, tokenizer)
        center_budget = max(max_tokens // 2 + 1, max_tokens - surrounding_need)
        short_center, _ = fit_to_token_window(center, tokenizer, center_budget)
        surrounding_budget = max_tokens
        short_surrounding = surrounding
        while surrounding_budget > 2:
            short_surrounding, _ = fit_to_token_window(surrounding, tokenizer, surrounding_budget)
            total = join_total(short_center, short_surrounding)
            if count_tokens(total, tokenizer) <= max_tokens:
                break
            surrounding_budget -= max(1, count_tokens(total, tokenizer) - max_tokens)
        else:
            total, _ = fit_to_token_window(join_total(short_center, ""), tokenizer, max_tokens)
    return RegionPrompts.build(center=center, surrounding=surrounding, total=total), truncated


_DEFAULT_TOKENIZER_UNSET = object()
_default_tokenizer: Any = _DEFAULT_TOKENIZER_UNSET


def default_clip_tokenizer() -> Any:
    """The default inpainting model's CLIP tokenizer when it is already in the local cache, else None.

    Never downloads: without it, prompts are fitted with the word-count estimate.
    """
    global _default_tokenizer
    if _default_tokenizer is _DEFAULT_TOKENIZER_UNSET:
        try:
            from transformers import CLIPTokenizer

            _default_tokenizer = CLIPTokenizer.from_pretrained(
                DEFAULT_INPAINT_MODEL, subfolder="tokenizer", cache_dir=str(cache_dir()), local_files_only=True
            )
        except Exception:  # noqa: BLE001 - not cached: fall back to the estimate
            logger.info("%s tokenizer not cached: prompt lengths are estimated", DEFAULT_INPAINT_MODEL)
            _default_tokenizer = None
    return _default_tokenizer


# ============================================================================== captions


@dataclass
class CaptionResult:
    """The prompts made for one image, and how they were made."""

    prompts: RegionPrompts
    truncated: list[str]  # prompts cut to fit the token window: "center", "surrounding", "total"
    model: str  # the captioner's name
    template_version: str  # caption_templates.TEMPLATE_VERSION of the questions asked
    mode: str  # "outpaint" (a photo to extend) or "training" (center crop + border)
    center_box: Box | None = None  # training mode: the center region (x0, y0, x1, y1)
    cached: bool = False  # the answers came from the caption cache (no model work)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: prompts first, then provenance."""
        record: dict[str, Any] = self.prompts.to_dict()
        if self.center_box is not None:
            record["center_box"] = list(self.center_box)
        record.update(
            model=self.model,
            template_version=self.template_version,
            mode=self.mode,
            truncated=list(self.truncated),
            cached=self.cached,
        )
        return record


def caption_for_outpaint(
    captioner: Captioner,
    image: Image.Image,
    *,
    keywords: str = "",
    tokenizer: Any = None,
    cache: "CaptionCache | None" = None,
    max_tokens: int = CLIP_MAX_TOKENS,
) -> CaptionResult:
    """Prompts for a photo to extend: the photo is the Center; the Surrounding is what plausibly lies
    beyond the frame, with ``keywords`` asked for and put first; Total = "Center: ...; Surrounding: ...".
    """
    image = _rgb(image)
    key = cache.key(image, model=captioner.name, mode=MODE_OUTPAINT, keywords=keywords) if cache else ""
    answers = cache.get(key) if cache is not None else None
    cached = answers is not None
    if answers is None:
        answers = {
            "center": _ask(captioner, image, templates.outpaint_center_instruction(), "Center"),
            "surrounding": _ask(
                captioner, image, templates.outpaint_surrounding_instruction(keywords), "Surrounding"
            ),
        }
        if cache is not None:
            cache.put(key, answers, model=captioner.name, mode=MODE_OUTPAINT)
    prompts, truncated = fit_prompts(
        answers["center"], merge_keywords(answers["surrounding"], keywords), tokenizer, max_tokens
    )
    return CaptionResult(
        prompts=prompts,
        truncated=truncated,
        model=captioner.name,
        template_version=templates.TEMPLATE_VERSION,
        mode=MODE_OUTPAINT,
        cached=cached,
    )


def caption_for_training(
    captioner: Captioner,
    image: Image.Image,
    center_box: Box,
    *,
    tokenizer: Any = None,
    cache: "CaptionCache | None" = None,
    max_tokens: int = CLIP_MAX_TOKENS,
) -> CaptionResult:
    """Prompts for a training image whose full content is known: the Center describes the crop
    ``center_box``; the Surrounding describes the image with that box painted grey.
    """
    image = _rgb(image)
    box = check_center_box(center_box, image.size)
    key = cache.key(image, model=captioner.name, mode=MODE_TRAINING, center_box=box) if cache else ""
    answers = cache.get(key) if cache is not None else None
    cached = answers is not None
    if answers is None:
        masked = image.copy()
        masked.paste(templates.MASK_GREY, box)
        answers = {
            "center": _ask(captioner, image.crop(box), templates.training_center_instruction(), "Center"),
            "surrounding": _ask(captioner, masked, templates.training_surrounding_instruction(), "Surrounding"),
        }
        if cache is not None:
            cache.put(key, answers, model=captioner.name, mode=MODE_TRAINING)
    prompts, truncated = fit_prompts(answers["center"], answers["surrounding"], tokenizer, max_tokens)
    return CaptionResult(
        prompts=prompts,
        truncated=truncated,
        model=captioner.name,
        template_version=templates.TEMPLATE_VERSION,
        mode=MODE_TRAINING,
        center_box=box,
        cached=cached,
    )


def _ask(captioner: Captioner, image: Image.Image, instruction: str, what: str) -> str:
    raw = captioner.generate(image, instruction, max_new_tokens=templates.MAX_NEW_TOKENS)
    if not isinstance(raw, str):
        raise CaptionerError(f"captioner '{captioner.name}' answered {type(raw).__name__}, not text")
    text = clean_answer(raw)
    if count_tokens(raw) - 2 >= 0.8 * templates.MAX_NEW_TOKENS:  # probably stopped by the token limit
        text = _drop_unfinished_sentence(text)
    if not text:
        raise EmptyAnswerError(
            f"captioner '{captioner.name}' gave no usable {what} description (raw answer: {_excerpt(raw, 60)!r})"
        )
    logger.debug("%s answer: %s", what, text)
    return text


def _rgb(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        inner = getattr(image, "image", None)  # an image_io.LoadedImage
        if not isinstance(inner, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        image = inner
    return image if image.mode == "RGB" else image.convert("RGB")


# ============================================================================== center box


def parse_ratio(value: str | float) -> float:
    """``--ratio`` for training captions: how much larger the full image is than its center (above 1)."""
    from .canvas import parse_ratio as parse_canvas_ratio

    ratio = parse_canvas_ratio(value)
    if ratio <= 1.0:
        raise OptionError(f"--ratio '{value}' is out of range: it must be above 1 (a border to describe), e.g. 2x")
    return ratio


def center_box_for_ratio(size: tuple[int, int], ratio: float) -> Box:
    """The middle 1/ratio of each side: 256x256 at 2x -> (64, 64, 192, 192)."""
    width, height = size
    box_width = max(1, round(width / ratio))
    box_height = max(1, round(height / ratio))
    left = (width - box_width) // 2
    top = (height - box_height) // 2
    return (left, top, left + box_width, top + box_height)


def check_center_box(box: Sequence[int], size: tuple[int, int]) -> Box:
    """``box`` as (x0, y0, x1, y1) ints, checked to be a non-empty region inside an image of ``size``."""
    try:
        left, top, right, bottom = (int(value) for value in box)
    except (TypeError, ValueError):
        raise OptionError(f"center box {box!r} is not four integers (x0, y0, x1, y1)") from None
    width, height = size
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise OptionError(
            f"center box {box!r} is not a non-empty region inside the {width}x{height} image "
            "(0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height)"
        )
    return (left, top, right, bottom)


# ============================================================================== cache


def caption_cache_dir() -> Path:
    """``$VIP_CACHE_DIR/captions`` when set, else ``<user cache>/vip/captions``."""
    if os.environ.get("VIP_CACHE_DIR"):
        return Path(os.environ["VIP_CACHE_DIR"]).expanduser() / "captions"
    return Path(platformdirs.user_cache_dir("vip", appauthor=False)) / "captions"


def image_digest(image: Image.Image) -> str:
    """sha256 of the decoded pixels (mode, size, bytes): the same picture gives the same digest."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class CaptionCache:
    """The captioner's cleaned answers, one JSON file per key, so repeated runs cost nothing.

    The key covers everything the answers depend on: the pixels, the captioner's name, the
    template version, the mode, and the keywords or center box. Prompts are fitted to the token
    window after reading, so one cached answer serves every text encoder. A file that cannot be
    read or written is logged and ignored: the cache never fails a run.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else caption_cache_dir()

    @staticmethod
    def key(
        image: Image.Image,
        *,
        model: str,
        mode: str,
        keywords: str = "",
        center_box: Box | None = None,
    ) -> str:
        parts = {
            "image": image_digest(image),
            "model": model,
            "template_version": templates.TEMPLATE_VERSION,
            "mode": mode,
            "keywords": " ".join(keywords.split()),
            "center_box": list(center_box) if center_box is not None else None,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, str] | None:
        path = self.path(key)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            answers = {"center": record["center"], "surrounding": record["surrounding"]}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable caption cache entry %s: %s", path, _first_line(exc))
            return None
        if not all(isinstance(value, str) and value for value in answers.values()):
            return None
        return answers

    def put(self, key: str, answers: dict[str, str], *, model: str = "", mode: str = "") -> None:
        path = self.path(key)
        record = {**answers, "model": model, "mode": mode, "template_version": templates.TEMPLATE_VERSION}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(record, ensure_ascii=False), durable=False)
        except OSError as exc:
            logger.warning("cannot write caption cache entry %s: %s", path, _first_line(exc))


# ============================================================================== JSON Lines


def read_caption_jsonl(path: str | Path) -> dict[str, dict[str, Any]]:
    """The records of a captions JSON Lines file, by their "image" path (a later line wins).

    A missing file is empty. A torn last line (a run killed mid-write) is ignored with a logged
    warning; a bad line elsewhere is an ``InputError`` naming the line (``files.read_jsonl``).
    """
    path = Path(path)
    try:
        lines = read_jsonl(path, _check_caption_record, what="a captions record")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InputError(f"cannot read captions file {path}: {exc.strerror or exc}") from exc
    return {record["image"]: record for _number, record in lines}


def _check_caption_record(record: Any) -> None:
    if not (isinstance(record, dict) and isinstance(record.get("image"), str)):
        raise ValueError('not an object with an "image" path')


class CaptionJsonlWriter:
    """Appends whole records to a JSON Lines file: one line each, flushed and fsynced, so an
    interrupted run leaves a valid file. A torn last line left by a crash is removed on open.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._repair_tail()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise OutputError(f"cannot write captions file {self.path}: {exc.strerror or exc}") from exc

    def _repair_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if data.endswith(b"\n"):
                return
            start = data.rfind(b"\n") + 1
            try:
                json.loads(data[start:].decode("utf-8"))
                handle.write(b"\n")  # a whole record that only lacks its newline
            except (UnicodeDecodeError, ValueError):
                logger.warning("%s: removing an incomplete last line (an interrupted run?)", self.path)
                handle.truncate(start)
            handle.flush()
            os.fsync(handle.fileno())

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write captions file {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "CaptionJsonlWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def jsonl_record(image_key: str, result: CaptionResult) -> dict[str, Any]:
    """The JSON Lines record ``vip train`` reads: image path, prompts, center box, provenance."""
    record: dict[str, Any] = {"image": image_key, **result.prompts.to_dict()}
    if result.center_box is not None:
        record["center_box"] = list(result.center_box)
    record["model"] = result.model
    record["template_version"] = result.template_version
    return record


# ============================================================================== many images


@dataclass
class CaptionItem:
    """What happened to one image of a run."""

    path: Path
    image_key: str  # the path as written in the JSON Lines file (relative to the data folder)
    status: str  # "captioned", "cached" (answers from the cache), "skipped" (already in the JSONL), "failed"
    result: CaptionResult | None = None
    error: str | None = None  # one line, for "failed"


@dataclass
class CaptionRun:
    """The outcome of ``caption_images``."""

    items: list[CaptionItem] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def failed(self) -> int:
        return self.count("failed")


def data_root_for(paths: Sequence[Path], specs: Sequence[str] = ()) -> Path:
    """The folder JSON Lines paths are relative to: the folder given when exactly one folder was
    given, else the deepest folder holding every image."""
    if len(specs) == 1 and Path(specs[0]).expanduser().is_dir():
        return Path(specs[0]).expanduser().resolve()
    if not paths:
        return Path.cwd()
    return Path(os.path.commonpath([str(Path(path).resolve().parent) for path in paths]))


class _LazyCaptioner:
    """Loads the captioner on first use, so a run that only hits the cache loads nothing."""

    def __init__(self, spec: CaptionerSpec, on_loading: Callable[[str], None] | None) -> None:
        self.spec = spec
        self.name = spec.name
        self.on_loading = on_loading
        self.loaded: Captioner | None = None

    def generate(self, image: Image.Image, instruction: str, *, max_new_tokens: int) -> str:
        if self.loaded is None:
            if self.on_loading is not None:
                self.on_loading(self.name)
            self.loaded = self.spec.load()
        return self.loaded.generate(image, instruction, max_new_tokens=max_new_tokens)


def caption_images(
    paths: Sequence[Path],
    spec: CaptionerSpec,
    *,
    for_training: bool = False,
    ratio: float = 2.0,
    keywords: str = "",
    jsonl: Path | None = None,
    data_root: Path | None = None,
    use_cache: bool = True,
    tokenizer: Any = None,
    captioner: Captioner | None = None,
    on_item: Callable[[CaptionItem, int, int], None] | None = None,
    on_loading: Callable[[str], None] | None = None,
) -> CaptionRun:
    """Caption many images, the way ``vip caption`` does.

    - ``for_training``: describe the center box (the middle 1/``ratio`` of each side) and the border;
      otherwise prompts for a photo to extend, steered by ``keywords``.
    - ``jsonl``: append one record per image; images already in it are skipped (resume).
    - ``use_cache``: reuse and store answers in ``CaptionCache``.
    - ``tokenizer``: CLIP tokenizer for the 77-token window (default: the default inpainting
      model's when cached, else the estimate).
    - ``captioner``: an already loaded captioner; by default ``spec`` is loaded on first need.
    - ``on_item(item, done, total)`` after each image; ``on_loading(name)`` before loading a model.

    An unreadable image, or an empty answer, fails that image only. A captioner that cannot be
    loaded or reached raises (``CaptionerError``, ``ModelNotFoundError``...): the records written
    so far stay, and the next run resumes after them.
    """
    if for_training:
        ratio = parse_ratio(ratio)
    if keywords.strip() and for_training:
        raise OptionError(
            "--keywords steer the invented Surrounding of a photo to extend; with --for-training the "
            "Surrounding is described from the image itself"
        )
    from .image_io import load_image

    data_root = Path(data_root).resolve() if data_root is not None else data_root_for(paths)
    done_before = read_caption_jsonl(jsonl) if jsonl is not None else {}
    if tokenizer is None:
        tokenizer = default_clip_tokenizer()
    cache = CaptionCache() if use_cache else None
    active: Captioner = captioner if captioner is not None else _LazyCaptioner(spec, on_loading)
    writer = CaptionJsonlWriter(jsonl) if jsonl is not None else None
    run = CaptionRun()
    try:
        for index, path in enumerate(paths, start=1):
            item = CaptionItem(path=Path(path), image_key=image_key(path, data_root), status="captioned")
            if item.image_key in done_before:
                item.status = "skipped"
            else:
                try:
                    image = load_image(path).image
                    if for_training:
                        box = center_box_for_ratio(image.size, ratio)
                        result = caption_for_training(active, image, box, tokenizer=tokenizer, cache=cache)
                    else:
                        result = caption_for_outpaint(
                            active, image, keywords=keywords, tokenizer=tokenizer, cache=cache
                        )
                except (InputError, EmptyAnswerError) as exc:
                    item.status, item.error = "failed", str(exc)
                    logger.info("%s: %s", path, exc)
                else:
                    item.result = result
                    item.status = "cached" if result.cached else "captioned"
                    if writer is not None:
                        writer.write(jsonl_record(item.image_key, result))
                        done_before[item.image_key] = {}
            run.items.append(item)
            if on_item is not None:
                on_item(item, index, len(paths))
    finally:
        if writer is not None:
            writer.close()
    return run
