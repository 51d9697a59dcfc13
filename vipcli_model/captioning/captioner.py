"""Captioners: a multimodal LLM turns an image into Center / Surrounding / Total prompts (VIP stage 1).

The names of this module live in five modules, one job each, in the order a caption is made:

- ``caption_backends``: the ``Captioner`` protocol (``generate(image, instruction)``), ``CaptionerSpec``
  and ``load_captioner``, and the two backends: ``TransformersCaptioner`` (any transformers
  image-text-to-text model, greedy decoding, fp32 on CPU) and ``HttpCaptioner`` (an
  OpenAI-compatible chat-completions server, standard library only);
- ``caption_questions``: ``caption_for_outpaint`` / ``caption_for_training`` ask the questions of
  ``caption_templates`` and return a ``CaptionResult``; the training center box;
- ``caption_text``: ``clean_answer`` strips chat artefacts from each answer, ``fit_to_token_window`` /
  ``fit_prompts`` cut each prompt to CLIP's 77 tokens at a sentence boundary;
- ``caption_files``: ``CaptionCache`` keeps the answers, keyed by pixels + model + template version +
  mode, so a repeated run costs nothing; ``read_caption_jsonl`` / ``CaptionJsonlWriter`` keep the
  JSON Lines file ``vip train`` reads;
- ``caption_batch``: ``caption_images`` runs all of it over many images: resumable, one bad image does
  not stop the rest, progress reported through callbacks.

Import from here (``vipcli_model.captioning.captioner``); the split is an implementation detail.
The library never prints: it logs, raises ``VipError`` subclasses, and calls callbacks.
"""

from __future__ import annotations

from vipcli_model.captioning.backends import (
    HTTP_MAX_IMAGE_SIDE,
    IDEFICS3_TILES_PER_SIDE,
    MAX_IMAGE_PIXELS,
    Captioner,
    CaptionerSpec,
    EmptyAnswerError,
    HttpCaptioner,
    TransformersCaptioner,
    _limit_image_tiles,
    load_captioner,
)
from vipcli_model.captioning.batch import CaptionItem, CaptionRun, caption_images, data_root_for
from vipcli_model.captioning.files import (
    CaptionCache,
    CaptionJsonlWriter,
    caption_cache_dir,
    image_digest,
    jsonl_record,
    read_caption_jsonl,
)
from vipcli_model.captioning.questions import (
    MODE_OUTPAINT,
    MODE_TRAINING,
    Box,
    CaptionResult,
    _ask,
    caption_for_outpaint,
    caption_for_training,
    center_box_for_ratio,
    check_center_box,
    parse_ratio,
)
from vipcli_model.captioning.text import (
    CLIP_MAX_TOKENS,
    clean_answer,
    count_tokens,
    default_clip_tokenizer,
    fit_prompts,
    fit_to_token_window,
)

__all__ = [
    "Box",
    "CLIP_MAX_TOKENS",
    "CaptionCache",
    "CaptionItem",
    "CaptionJsonlWriter",
    "CaptionResult",
    "CaptionRun",
    "Captioner",
    "CaptionerSpec",
    "EmptyAnswerError",
    "HTTP_MAX_IMAGE_SIDE",
    "HttpCaptioner",
    "IDEFICS3_TILES_PER_SIDE",
    "MODE_OUTPAINT",
    "MODE_TRAINING",
    "TransformersCaptioner",
    "_ask",
    "MAX_IMAGE_PIXELS",
    "_limit_image_tiles",
    "caption_cache_dir",
    "caption_for_outpaint",
    "caption_for_training",
    "caption_images",
    "center_box_for_ratio",
    "check_center_box",
    "clean_answer",
    "count_tokens",
    "data_root_for",
    "default_clip_tokenizer",
    "fit_prompts",
    "fit_to_token_window",
    "image_digest",
    "jsonl_record",
    "load_captioner",
    "parse_ratio",
    "read_caption_jsonl",
]
