"""Caption text: an MLLM's answer cleaned of chat artefacts, then fitted to the model's text window (CLIP's 77
tokens unless the model's prompt stream is longer: FLUX Fill's T5 takes 512)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from vipcli_model.models.hub import DEFAULT_INPAINT_MODEL, find_cached
from vipcli_model.prompts import RegionPrompts, join_total

logger = logging.getLogger(__name__)

CLIP_MAX_TOKENS = 77  # CLIP's window, start and end tokens included: the default where the model gives none


def excerpt(text: str, limit: int = 120) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
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


def drop_unfinished_sentence(text: str) -> str:
    """ "A cat on a mat. It looks at the" -> "A cat on a mat." (for a generation cut by its token limit)."""
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
    whole words. Returns (text, True when something was cut). ``tokenizer``: the tokenizer of the
    inpainting model's prompt stream (``Outpainter.prompt_window``); ``None`` uses a word-count estimate.
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

            cached = find_cached(DEFAULT_INPAINT_MODEL, configs_only=True)
            if cached is None:
                raise FileNotFoundError(DEFAULT_INPAINT_MODEL)
            _default_tokenizer = CLIPTokenizer.from_pretrained(str(cached.folder / "tokenizer"))
        except Exception:  # noqa: BLE001 - not cached: fall back to the estimate
            logger.info("%s tokenizer not cached: prompt lengths are estimated", DEFAULT_INPAINT_MODEL)
            _default_tokenizer = None
    return _default_tokenizer
