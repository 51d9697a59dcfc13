"""The instructions vip gives a multimodal LLM, in one place, with a version.

Two modes:

- a photo to extend: the whole photo is the Center; the Surrounding is what plausibly lies beyond
  the frame, steered by the user's keywords;
- training data: the full image is known, so the Center is the center crop and the Surrounding is
  the border region, shown to the model with the center painted grey.

Each answer becomes one CLIP prompt (77 tokens, about 55 words), so every instruction asks for one
or two plain sentences without preamble. ``TEMPLATE_VERSION`` is part of every caption cache key and
is written into JSON Lines outputs: change it whenever an instruction changes, so old answers are not
reused for new questions.
"""

from __future__ import annotations

TEMPLATE_VERSION = "vip-caption-1"

# Enough new tokens for two sentences (a 77-token CLIP prompt is about 55 words); more only costs time.
MAX_NEW_TOKENS = 72

# Grey used to hide the center box when describing the border region of a training image.
MASK_GREY = (128, 128, 128)

_ANSWER_STYLE = (
    "Answer with one or two plain sentences of description only, as a caption for an image generator: "
    "no preamble, no lists, no markdown."
)

OUTPAINT_CENTER = "Describe this photo: the main subject, the setting, the lighting and the style. " + _ANSWER_STYLE

OUTPAINT_SURROUNDING = (
    "This photo will be extended beyond its borders. Describe what most plausibly lies just outside "
    "the frame on every side (how the scene, the ground, the sky, walls or background continue). "
    "Do not describe the main subject again. " + _ANSWER_STYLE
)

OUTPAINT_SURROUNDING_KEYWORDS = " The surroundings should include: {keywords}."

TRAINING_CENTER = "Describe this image: the main subject, the setting, the lighting and the style. " + _ANSWER_STYLE

TRAINING_SURROUNDING = (
    "The grey rectangle in the middle of this image hides its center. Describe only what is visible "
    "around the grey rectangle (the background, the ground, the sky, objects at the edges, the lighting); "
    "do not mention the grey rectangle. " + _ANSWER_STYLE
)

_MAX_KEYWORD_CHARS = 300


def outpaint_center_instruction() -> str:
    """What to ask about a photo to extend, for its Center prompt."""
    return OUTPAINT_CENTER


def outpaint_surrounding_instruction(keywords: str = "") -> str:
    """What to ask about a photo to extend, for its Surrounding prompt; ``keywords`` steer it."""
    keywords = " ".join(keywords.split())[:_MAX_KEYWORD_CHARS]
    if not keywords:
        return OUTPAINT_SURROUNDING
    return OUTPAINT_SURROUNDING + OUTPAINT_SURROUNDING_KEYWORDS.format(keywords=keywords)


def training_center_instruction() -> str:
    """What to ask about the center crop of a training image."""
    return TRAINING_CENTER


def training_surrounding_instruction() -> str:
    """What to ask about a training image whose center is painted grey."""
    return TRAINING_SURROUNDING
