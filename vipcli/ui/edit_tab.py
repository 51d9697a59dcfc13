"""The Edit tab of `vip ui`: `vip edit`'s settings as controls, run by the library's warm ``EditSession``."""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vipcli_model.config import ModelConfig, PromptConfig
from vipcli_model.editing.editor import DEFAULT_EDIT_MODEL, EditConfig
from vipcli_model.editing.run import EditJob
from vipcli_model.editing.session import EditSession
from vipcli_model.errors import OptionError, VipError, is_out_of_memory
from vipcli_model.images.io import load_image

from ..options import flag_message
from .progress import RunEnding, status_callbacks, streamed

EDIT_PRESETS = ["pbi-general-mb", "pbi-general", "pbi-add", "pbi-add-mb"]
# the run's parameters (and the API's names); ``painted``: the mask painted on the photo (an ImageEditor's value)
EDIT_CONTROLS = (
    "photo instruction mask expand model steps guidance image_guidance seed num_images feather painted".split()
)


def edit_message(exc: BaseException) -> str:
    """An error as the one line `vip edit` prints."""
    if isinstance(exc, VipError):
        return flag_message(str(exc), "edit")
    if is_out_of_memory(exc):
        return "out of memory: try fewer images, or close other programs"
    from .app import message

    return message(exc)


def painted_mask(painted: dict | None, size: tuple[int, int]) -> Image.Image | None:
    """The mask painted on the photo, as `vip edit --mask` takes it: the photo's ``size``, white where a stroke was
    painted (the stroke layer's opacity), black elsewhere; None when nothing was painted."""
    layers = [layer for layer in (painted or {}).get("layers") or [] if layer is not None]
    if not layers:
        return None
    alpha = np.zeros(size[::-1], dtype=np.uint8)
    for layer in layers:
        with Image.open(layer) if isinstance(layer, (str, Path)) else Image.fromarray(np.asarray(layer)) as opened:
            stroke = opened.convert("RGBA").getchannel("A")
        if stroke.size != size:  # a canvas shown at another size than the photo's: the strokes cover the same places
            stroke = stroke.resize(size, Image.Resampling.NEAREST)
        alpha = np.maximum(alpha, np.asarray(stroke))
    painted_pixels = alpha >= 128  # as `vip edit` reads a mask: a pixel is white from 128 on
    return Image.fromarray(np.where(painted_pixels, 255, 0).astype(np.uint8)) if painted_pixels.any() else None


def mask_from_controls(values: dict) -> str | None:
    """The mask file of a run: the painted mask (saved as a PNG next to Gradio's copy of the strokes, so it goes
    with the uploads when the app stops), or the mask file given; both at once is an error."""
    given = values.get("mask") or None
    painted = values.get("painted") or {}
    layers = [layer for layer in painted.get("layers") or [] if layer is not None]
    mask = painted_mask(painted, load_image(values["photo"]).image.size) if layers and values.get("photo") else None
    if mask is None:
        return given
    if given:
        raise OptionError("`mask`: paint the mask on the photo or give a mask file, not both")
    strokes = layers[0]
    folder = Path(strokes).parent if isinstance(strokes, (str, Path)) else Path(tempfile.mkdtemp(prefix="vip-mask-"))
    path = folder / f"mask-{mask.width}x{mask.height}.png"
    mask.save(path)
    return str(path)


def edit_job_from_controls(values: dict, device: str = "auto") -> EditJob:
    """The ``EditJob`` the controls describe, built as `vip edit` builds it from its flags."""
    from .app import _number

    seed = _number(values.get("seed"), int)
    given = {
        key: value
        for key, value in dict(
            steps=_number(values.get("steps"), int) or None,
            guidance=_number(values.get("guidance")),
            image_guidance=_number(values.get("image_guidance")),
            seed=seed if seed is not None and seed >= 0 else None,
            feather=_number(values.get("feather"), int),
            num_images=_number(values.get("num_images"), int),
        ).items()
        if value is not None
    }
    return EditJob(
        edit=EditConfig(
            instruction=(values.get("instruction") or "").strip(),
            mask=mask_from_controls(values),
            expand=bool(values.get("expand")),
            **given,
        ),
        model=ModelConfig(model=(values.get("model") or "").strip() or DEFAULT_EDIT_MODEL, device=device),
        captioner=PromptConfig(),
    )


def edit_tab(gr, session: EditSession, other: Any, *, device: str = "auto") -> None:
    """The Edit tab's controls and events, inside the app's Blocks. ``other``: the outpaint session, whose model is
    freed before an edit loads one (one model in memory at a time)."""
    ending = RunEnding()  # the edit run, for Cancel's answer

    def run(*args):
        values = dict(zip(EDIT_CONTROLS, args))
        progress = args[len(EDIT_CONTROLS)] if len(args) > len(EDIT_CONTROLS) else None
        if not values["photo"]:
            yield gr.skip(), gr.skip(), "Upload a photo first.", gr.skip()
            return
        try:
            job = edit_job_from_controls(values, device)
        except Exception as exc:  # noqa: BLE001 - every error becomes one line in the page
            yield gr.skip(), gr.skip(), edit_message(exc), gr.skip()
            return
        if other.model is not None:
            other.release()

        def work(put):
            return session.run(values["photo"], job, **status_callbacks(put, progress))

        finished = False
        with ending.going():
            try:
                for kind, payload in streamed(work, "vip-ui-edit"):
                    if kind == "status":
                        yield gr.skip(), gr.skip(), payload, gr.skip()
                        continue
                    finished = True
                    if kind == "error":
                        ending.last = edit_message(payload)
                        yield gr.skip(), gr.skip(), ending.last, gr.skip()
                        return
                    paths = [str(file.path) for file in payload.written]
                    metadata = payload.written[0].metadata
                    folder = Path(paths[0]).parent
                    ending.last = f"Done: {len(paths)} image(s), seed {metadata.get('seed')}, saved in {folder}"
                    yield paths, paths, ending.last, metadata
                    return
            finally:
                if not finished:
                    session.cancel()

    # the controls' names (the API's; each may be left out: the masks are optional, no photo is one line), then the
    # event's gr.Progress (not an API parameter): downloads are reported on it
    run.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for name in EDIT_CONTROLS]
        + [inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress())]
    )

    def show_photo(path):
        """The photo as the painting's background (as vip reads it: EXIF orientation applied), strokes cleared."""
        if not path:
            return None, ""
        try:
            loaded = load_image(path)
        except Exception as exc:  # noqa: BLE001 - every error becomes one line in the page
            return None, edit_message(exc)
        return {"background": loaded.image, "layers": [], "composite": None}, ""

    def cancel():
        return ending.cancel(session, gr.skip())

    with gr.Tab("Edit"):
        with gr.Row():
            with gr.Column(scale=1):
                photo = gr.File(label="Photo", type="filepath", elem_id="edit-photo")
                instruction = gr.Textbox(
                    label="Instruction", value="", info='e.g. "add a red boat on the lake"', elem_id="edit-instruction"
                )
                painted = gr.ImageEditor(
                    label="Mask (optional): paint what may change",
                    type="filepath",
                    image_mode="RGBA",
                    sources=[],
                    transforms=[],
                    layers=False,
                    brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size="auto"),
                    eraser=gr.Eraser(default_size="auto"),
                    format="png",
                    height=360,
                    elem_id="edit-mask",
                )
                with gr.Accordion("Mask from a file instead", open=False):
                    mask = gr.File(label="Mask file (the photo's size, white = may change)", type="filepath")
                expand = gr.Checkbox(label="Expand: the captioner rewrites the instruction first")
                model = gr.Dropdown(
                    [DEFAULT_EDIT_MODEL, *EDIT_PRESETS],
                    value=DEFAULT_EDIT_MODEL,
                    label="Model",
                    allow_custom_value=True,
                    elem_id="edit-model",
                )
                with gr.Accordion("Advanced", open=False, elem_id="edit-advanced"):
                    steps = gr.Number(label="Steps", value=EditConfig.steps, precision=0, elem_id="edit-steps")
                    guidance = gr.Number(label="Guidance", value=EditConfig.guidance)
                    image_guidance = gr.Number(label="Image guidance", value=EditConfig.image_guidance)
                    seed = gr.Number(label="Seed (-1: random)", value=-1, precision=0, elem_id="edit-seed")
                    num_images = gr.Slider(1, 4, value=1, step=1, label="Images")
                    feather = gr.Number(label="Feather (px)", value=EditConfig.feather, precision=0)
            with gr.Column(scale=1):
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", elem_id="edit-run")
                    cancel_button = gr.Button("Cancel", elem_id="edit-cancel")
                status = gr.Markdown(elem_id="edit-status")
                gallery = gr.Gallery(label="Results", type="filepath", format="png")
                files = gr.File(label="Download (PNG with metadata)", file_count="multiple", elem_id="edit-files")
                settings = gr.JSON(label="Settings (the file's metadata)")
    inputs = [photo, instruction, mask, expand, model, steps, guidance, image_guidance, seed, num_images, feather]
    inputs.append(painted)
    photo.change(show_photo, photo, [painted, status], api_name=False, queue=False)
    run_button.click(run, inputs, [gallery, files, status, settings], api_name="edit")
    cancel_button.click(cancel, None, status, api_name="cancel_edit", queue=False)
