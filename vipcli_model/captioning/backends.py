"""Captioner backends: the small protocol every captioner speaks, which one to use, and the two that exist.

- ``TransformersCaptioner``: any transformers image-text-to-text model (``AutoProcessor`` +
  ``AutoModelForImageTextToText``, no remote code), greedy decoding, fp32 on CPU. The default is
  SmolVLM-256M-Instruct (see ``benchmarks/bench_captioner.py`` for why not -500M).
- ``HttpCaptioner``: an OpenAI-compatible chat-completions server (llama.cpp, vLLM, Ollama...),
  the image sent inline as a base64 PNG, using only the standard library.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import math
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from vipcli_model.captioning.text import excerpt as _excerpt
from vipcli_model.captioning.text import first_line as _first_line
from vipcli_model.errors import CaptionerError, ModelLoadError, ModelNotFoundError, OptionError
from vipcli_model.models.catalog import VLM
from vipcli_model.models.hub import DEFAULT_CAPTIONER_MODEL, ensure_model, load_with_errors, resolve_spec

logger = logging.getLogger(__name__)

# Idefics3 / SmolVLM processors upscale every image to 4x4 tiles of 512 px plus a global view
# (17 x 64 = 1088 image tokens per question). One 512-px view (64 tokens) describes a scene well
# enough for a prompt at a fraction of the cost on a CPU (benchmarks/bench_captioner.py measures it).
IDEFICS3_TILES_PER_SIDE = 1
# Qwen2-VL processors take any resolution up to a pixel budget (its repository allows 12.8 MP, ~16k visual tokens
# for a 12 MP photo); 28 x 28 x 768 pixels give at most 768 visual tokens, plenty for a prompt.
MAX_IMAGE_PIXELS = 28 * 28 * 768

# Images sent to a server are shrunk to this longest side first (servers resize anyway).
HTTP_MAX_IMAGE_SIDE = 1024


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
                "`captioner` and `captioner_url` name two different captioners: give one of them "
                "(`captioner` for a local transformers model, `captioner_url` with `captioner_model` for a server)"
            )
        if self.url is not None and not (self.server_model or "").strip():
            raise OptionError(
                f"`captioner_url` {self.url} needs `captioner_model` NAME: the model name the server serves"
            )
        if self.url is None and self.server_model is not None:
            raise OptionError(
                "`captioner_model` names a model on a server: give `captioner_url` URL too "
                "(or use `captioner` for a local transformers model)"
            )
        if self.url is not None and not re.match(r"^https?://[^/\s]+", self.url.strip()):
            raise OptionError(
                f"`captioner_url` '{self.url}' is not an http:// or https:// URL (e.g. http://127.0.0.1:8080/v1)"
            )
        if not (isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout) and self.timeout > 0):
            raise OptionError(f"`captioner_timeout` must be a number of seconds above 0, got {self.timeout!r}")
        if self.url is None:
            from vipcli_model.device import pick_device

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

    def load(self, *, tqdm_class: Any = None) -> Captioner:
        """The captioner, loaded (``tqdm_class`` draws its download when a model is fetched on first use)."""
        if self.is_server:
            return HttpCaptioner(self.url or "", self.server_model or "", timeout=self.timeout, api_key=self.api_key)
        return TransformersCaptioner.load(self.model_id, device=self.device, tqdm_class=tqdm_class)


def load_captioner(
    model: str | None = None,
    *,
    url: str | None = None,
    server_model: str | None = None,
    device: str = "auto",
    timeout: float = 60.0,
    api_key: str | None = None,
    tqdm_class: Any = None,
) -> Captioner:
    """Load a transformers captioner (``model``: preset, hub id or folder; default SmolVLM-256M-Instruct),
    or connect to an OpenAI-compatible server (``url`` + ``server_model``). ``tqdm_class`` draws the model's
    download when it is fetched on first use.

    Raises ``OptionError`` for contradictory arguments, ``ModelNotFoundError`` / ``ModelLoadError``
    when a model cannot be had.
    """
    spec = CaptionerSpec(
        model=model, url=url, server_model=server_model, device=device, timeout=timeout, api_key=api_key
    )
    return spec.load(tqdm_class=tqdm_class)


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
    def load(cls, model_id: str, *, device: str = "auto", tqdm_class: Any = None) -> TransformersCaptioner:
        import torch

        from vipcli_model.device import pick_device, pick_dtype

        torch_device = pick_device(device)
        if torch_device.type == "cuda" and torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16  # VLMs are trained in bf16; fp16 can overflow
        else:
            dtype = pick_dtype(torch_device)  # fp32 on CPU and MPS

        def load_parts(folder: str) -> tuple[Any, Any]:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            processor = AutoProcessor.from_pretrained(folder)
            model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype)
            return processor, model

        logger.info("loading captioner %s on %s (%s)", model_id, torch_device, dtype)
        if Path(model_id).expanduser().exists():
            folder = str(Path(model_id).expanduser())
        else:
            try:
                folder = str(
                    ensure_model(
                        model_id, VLM, what="captioner", option="captioner", single_file=False, tqdm_class=tqdm_class
                    ).folder
                )
            except ModelNotFoundError as exc:
                raise ModelNotFoundError(f"{exc} (or caption with a server: `captioner_url`)") from exc
        processor, model = load_with_errors(model_id, "captioner", lambda: load_parts(folder))
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
                output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        except torch.OutOfMemoryError as exc:
            raise CaptionerError(
                f"captioner '{self.name}' ran out of memory on {self.device}: try `device` cpu or a smaller `captioner`"
            ) from exc
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]


def _limit_image_tiles(processor: Any) -> None:
    """Idefics3 / SmolVLM: tile images at most ``IDEFICS3_TILES_PER_SIDE`` per side (see the constant)."""
    image_processor = processor.image_processor
    tile = getattr(image_processor, "max_image_size", None)
    if not (isinstance(tile, dict) and tile.get("longest_edge")):
        _limit_image_pixels(image_processor)  # Qwen2-VL style: a pixel budget instead of tiles
        return
    size = getattr(image_processor, "size", None)
    longest = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    limit = tile["longest_edge"] * IDEFICS3_TILES_PER_SIDE
    if longest and longest > limit:
        image_processor.size = {"longest_edge": limit}
        logger.info("captioner images resized to %d px (%d tile(s) per side)", limit, IDEFICS3_TILES_PER_SIDE)


def _limit_image_pixels(image_processor: Any) -> None:
    """Qwen2-VL: at most ``MAX_IMAGE_PIXELS`` pixels (its repository allows 12.8 MP: ~16k visual tokens)."""
    size = getattr(image_processor, "size", None)
    longest = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    shortest = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
    if shortest and longest and longest > MAX_IMAGE_PIXELS:  # Qwen2-VL's size = {shortest/longest_edge: pixels}
        image_processor.size = {"shortest_edge": shortest, "longest_edge": MAX_IMAGE_PIXELS}
        if hasattr(image_processor, "max_pixels"):
            image_processor.max_pixels = MAX_IMAGE_PIXELS
        logger.info("captioner images limited to %d pixels", MAX_IMAGE_PIXELS)


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
            "check that it is up, or allow more time with `captioner_timeout`"
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
                f"cannot reach {where}: {reason} (is the server running? check `captioner_url`)"
            ) from exc
        except TimeoutError as exc:
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
