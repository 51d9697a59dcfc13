"""The web app of `vip ui`: Gradio controls mapped to the settings `vip outpaint` builds, one warm library session.

No logic of its own: each control is a field of the library's settings (as the CLI's flags are), the preview is
``canvas_preview``, a run is ``OutpaintSession.run`` (the model stays loaded between runs), and an error is the one
line the CLI prints. One generation runs at a time (the queue's concurrency is 1); the preview and Cancel do not wait
in that queue.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from vipcli_model.config import (
    BlendConfig,
    DetailConfig,
    ExpansionConfig,
    GenerationConfig,
    ModelConfig,
    PromptConfig,
    parse_guidance_interval,
)
from vipcli_model.errors import OptionError, VipError, is_out_of_memory
from vipcli_model.models.hub import PRESETS
from vipcli_model.outpainting.run import OutpaintJob
from vipcli_model.outpainting.session import OutpaintSession, canvas_preview

from ..options import flag_message
from .command import outpaint_command
from .progress import RunEnding, status_callbacks, streamed

logger = logging.getLogger(__name__)

ALIGNS = ["center", "left", "right", "top", "bottom", "top-left", "top-right", "bottom-left", "bottom-right"]
# the order of the outpaint tab's controls, as the run / preview / describe functions (and the API) take them
CONTROLS = (
    "photo ratio aspect size left right top bottom align center surrounding keywords total negative model fast "
    "detail steps guidance guidance_interval seed region_strength num_images feather color_match adapter"
).split()


def message(exc: BaseException) -> str:
    """An error as the one line the CLI prints (library settings shown as `vip outpaint`'s flags)."""
    if isinstance(exc, VipError):
        return flag_message(str(exc), "outpaint")
    if is_out_of_memory(exc):
        return "out of memory: try a smaller canvas, fewer images, or close other programs"
    logger.error("internal error in vip ui", exc_info=exc)  # the traceback goes to the server's log, not the page
    return f"internal error: {type(exc).__name__}: {exc} (this is a bug in vip; the server log has the traceback)"


def _text(value: Any) -> str | None:
    """A textbox's value: None when empty (unset: the library's default decides)."""
    text = "" if value is None else str(value).strip()
    return text or None


def _number(value: Any, kind: type = float) -> Any:
    """A number control's value (a textbox's text, or a number): None when empty."""
    if isinstance(value, str):
        value = value.strip()
        if value:
            try:
                return kind(float(value))
            except ValueError:
                raise OptionError(f"{value!r} is not a number") from None
    return None if value is None or value == "" else kind(value)


def job_from_controls(values: dict, device: str = "auto") -> OutpaintJob:
    """The ``OutpaintJob`` the controls describe, built as `vip outpaint` builds it from its flags."""
    given = lambda **fields: {key: value for key, value in fields.items() if value is not None}  # noqa: E731
    seed = _number(values.get("seed"), int)
    interval = _text(values.get("guidance_interval"))
    return OutpaintJob(
        expansion=ExpansionConfig(
            **given(**{name: _text(values.get(name)) for name in ("ratio", "aspect", "size", "left", "right", "top")}),
            **given(bottom=_text(values.get("bottom")), align=_text(values.get("align"))),
        ),
        prompts=PromptConfig(
            total=_text(values.get("total")),
            center=_text(values.get("center")) or "",
            surrounding=_text(values.get("surrounding")) or "",
            keywords=_text(values.get("keywords")) or "",
        ),
        generation=GenerationConfig(
            **given(
                steps=_number(values.get("steps"), int) or None,
                guidance=_number(values.get("guidance")),
                seed=seed if seed is not None and seed >= 0 else None,  # -1: a random seed
                region_strength=_number(values.get("region_strength")),
                guidance_interval=parse_guidance_interval(interval) if interval else None,
                num_images=_number(values.get("num_images"), int),
            ),
            negative=_text(values.get("negative")) or "",
        ),
        blend=BlendConfig(
            feather=_number(values.get("feather"), int) if values.get("feather") is not None else BlendConfig.feather,
            color_match=bool(values.get("color_match")),
        ),
        detail=DetailConfig(**given(mode=_text(values.get("detail")))),
        model=ModelConfig(
            **given(model=_text(values.get("model")), adapter=_text(values.get("adapter"))),
            device=device,
            fast=bool(values.get("fast")),
        ),
    )


def inpainting_models() -> list[str]:
    """The model choices: the inpainting presets, then the inpainting models already in the caches."""
    from vipcli_model.models.catalog import INPAINT, MODEL_FILES
    from vipcli_model.models.offline import scan_caches

    def inpainting(repo_id: str) -> bool:
        entry = MODEL_FILES.get(repo_id)
        return entry.kind == INPAINT if entry is not None else any(word in repo_id for word in ("inpaint", "Fill"))

    presets = [name for name, repo_id in PRESETS.items() if inpainting(repo_id)]
    cached = [repo_id for _cache, repo_id, _size in scan_caches() if inpainting(repo_id)]
    return list(dict.fromkeys([*presets, *cached]))


def build_app(session: OutpaintSession, *, edit_session: Any = None, model: str | None = None, device: str = "auto"):
    """The Gradio Blocks of `vip ui` on ``session`` (``model``: the one selected at start); with ``edit_session`` (an
    ``EditSession``) the Edit tab too. One model is in memory at a time: a run frees the other tab's."""
    import gradio as gr

    default_model = model or ModelConfig.model
    models = list(dict.fromkeys([default_model, *inpainting_models()]))

    ending = RunEnding()  # the outpaint run, for Cancel's answer

    def controls(args: tuple) -> dict:
        return dict(zip(CONTROLS, args))

    def named(function):
        """``function(*args)`` with the controls' names as its parameters: the API's names for scripts."""
        parameters = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in CONTROLS]
        function.__signature__ = inspect.Signature(parameters)
        return function

    def with_progress(function):
        """``function`` also given the event's ``gr.Progress`` (Gradio passes it after the controls; not an API
        parameter): first-use downloads are reported on it."""
        parameters = list(inspect.signature(function).parameters.values())
        progress = inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress())
        function.__signature__ = inspect.Signature([*parameters, progress])
        return function

    @named
    def preview(*args):
        values = controls(args)
        if not values["photo"]:
            return None, ""
        try:
            job = job_from_controls(values, device)
            shown = canvas_preview(values["photo"], job.expansion)
        except Exception as exc:  # noqa: BLE001 - every error becomes one line in the page
            return None, message(exc)
        width, height = shown.canvas_size
        return shown.image, f"Canvas {width}x{height}"

    @with_progress
    @named
    def run(*args):
        values = controls(args)
        progress = args[len(CONTROLS)] if len(args) > len(CONTROLS) else None
        if not values["photo"]:
            yield None, gr.skip(), gr.skip(), "Upload a photo first.", gr.skip(), gr.skip()
            return
        try:
            job = job_from_controls(values, device)
        except Exception as exc:  # noqa: BLE001
            yield None, gr.skip(), gr.skip(), message(exc), gr.skip(), gr.skip()
            return
        if edit_session is not None and edit_session.model is not None:
            edit_session.release()

        def work(put):
            return session.run(
                values["photo"],
                job,
                on_preview=lambda done, steps, picture: put("preview", picture),
                on_warning=lambda text: put("status", flag_message(text, "outpaint")),
                **status_callbacks(put, progress),
            )

        finished = False
        with ending.going():
            try:
                for kind, payload in streamed(work, "vip-ui-run"):
                    if kind == "status":
                        yield gr.skip(), gr.skip(), gr.skip(), payload, gr.skip(), gr.skip()
                    elif kind == "preview":
                        yield payload, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                    elif kind == "error":
                        finished = True
                        ending.last = message(payload)
                        yield gr.skip(), gr.skip(), gr.skip(), ending.last, gr.skip(), gr.skip()
                        return
                    else:
                        finished = True
                        written = payload.written
                        paths = [str(file.path) for file in written]
                        metadata = written[0].metadata
                        command = outpaint_command(Path(values["photo"]).name, job, metadata, session.output)
                        status = (
                            f"Done: {len(paths)} image(s), seed {metadata['seed']}, saved in {Path(paths[0]).parent}"
                        )
                        ending.last = status
                        yield gr.skip(), paths, paths, status, command, metadata
                        return
            finally:
                if not finished:  # the page went away mid-run: do not leave the model busy for nobody
                    session.cancel()

    @with_progress
    @named
    def describe(*args):
        values = controls(args)
        progress = args[len(CONTROLS)] if len(args) > len(CONTROLS) else None
        if not values["photo"]:
            yield gr.skip(), gr.skip(), "Upload a photo first."
            return
        try:
            job = job_from_controls(values, device)
        except Exception as exc:  # noqa: BLE001
            yield gr.skip(), gr.skip(), message(exc)
            return
        if edit_session is not None and edit_session.model is not None:
            edit_session.release()

        def work(put):
            return session.describe(values["photo"], job, **status_callbacks(put, progress, steps=False))

        # the model and the captioner may be downloaded on first use: their loading and bytes show as they come
        for kind, payload in streamed(work, "vip-ui-describe"):
            if kind == "status":
                yield gr.skip(), gr.skip(), payload
            elif kind == "error":
                yield gr.skip(), gr.skip(), message(payload)
            else:
                yield payload.center, payload.surrounding, "Described by the captioner: edit the prompts as you like."

    def cancel():
        return ending.cancel(session, gr.skip())

    def use_as_input(files):
        return files[0] if files else gr.skip()

    with gr.Blocks(title="vip", analytics_enabled=False) as app:
        gr.Markdown("## vip: outpaint a photo, guided by region prompts")
        with gr.Tab("Outpaint"):
            with gr.Row():
                with gr.Column(scale=1):
                    photo = gr.File(label="Photo", type="filepath", elem_id="photo")
                    with gr.Row():
                        ratio = gr.Textbox(label="Ratio", value="1.5x", elem_id="ratio", info="e.g. 2x")
                        aspect = gr.Textbox(label="Aspect", value="", elem_id="aspect", info="W:H, e.g. 16:9")
                        size = gr.Textbox(label="Size", value="", elem_id="size", info="WxH")
                    with gr.Row():
                        left = gr.Textbox(label="Left", value="", info="px or %")
                        right = gr.Textbox(label="Right", value="", info="px or %")
                        top = gr.Textbox(label="Top", value="", info="px or %")
                        bottom = gr.Textbox(label="Bottom", value="", info="px or %")
                    align = gr.Dropdown(ALIGNS, value="center", label="Alignment")
                    center = gr.Textbox(label="Center", value="", info="what the photo shows", elem_id="center")
                    surrounding = gr.Textbox(
                        label="Surrounding", value="", info="what appears around it", elem_id="surrounding"
                    )
                    keywords = gr.Textbox(label="Keywords", value="", info="steer the Surrounding")
                    total = gr.Textbox(label="Total prompt", value="", info="empty: built from Center and Surrounding")
                    negative = gr.Textbox(label="Negative prompt", value="")
                    describe_button = gr.Button("Describe", elem_id="describe")
                    with gr.Row():
                        model_choice = gr.Dropdown(
                            models, value=default_model, label="Model", allow_custom_value=True, elem_id="model"
                        )
                        fast = gr.Checkbox(label="Fast (LCM-LoRA, 4 steps)")
                        detail = gr.Dropdown(["auto", "on", "off"], value="auto", label="Detail pass")
                    with gr.Accordion("Advanced", open=False):
                        steps = gr.Number(label="Steps (0: the model's default)", value=0, precision=0, elem_id="steps")
                        guidance = gr.Textbox(label="Guidance (empty: the model's default)", value="")
                        guidance_interval = gr.Textbox(label="Guidance interval (LOW,HIGH)", value="")
                        seed = gr.Number(label="Seed (-1: random)", value=-1, precision=0, elem_id="seed")
                        region_strength = gr.Textbox(label="Region strength (0 to 1; empty: default)", value="")
                        num_images = gr.Slider(1, 4, value=1, step=1, label="Images")
                        feather = gr.Number(
                            label="Feather (px)", value=BlendConfig.feather, precision=0, elem_id="feather"
                        )
                        color_match = gr.Checkbox(label="Colour match")
                        adapter = gr.Textbox(label="C-T-S adapter (file, folder or hub id)", value="")
                with gr.Column(scale=1):
                    canvas_info = gr.Markdown(elem_id="canvas-info")
                    live = gr.Image(
                        label="Preview", type="pil", interactive=False, format="png", height=360, elem_id="preview"
                    )
                    with gr.Row():
                        run_button = gr.Button("Run", variant="primary", elem_id="run")
                        cancel_button = gr.Button("Cancel", elem_id="cancel")
                    status = gr.Markdown(elem_id="status")
                    gallery = gr.Gallery(label="Results", type="filepath", format="png", elem_id="gallery")
                    files = gr.File(label="Download (PNG with metadata)", file_count="multiple", elem_id="files")
                    use_button = gr.Button("Use as input", elem_id="use-as-input")
                    command = gr.Code(
                        label="The vip outpaint command that reproduces this", language="shell", elem_id="command"
                    )
                    settings = gr.JSON(label="Settings (the file's metadata)")
        if edit_session is not None:
            from .edit_tab import edit_tab

            edit_tab(gr, edit_session, session, device=device)
        inputs = [
            photo,
            ratio,
            aspect,
            size,
            left,
            right,
            top,
            bottom,
            align,
            center,
            surrounding,
            keywords,
            total,
            negative,
            model_choice,
            fast,
            detail,
            steps,
            guidance,
            guidance_interval,
            seed,
            region_strength,
            num_images,
            feather,
            color_match,
            adapter,
        ]
        geometry = [photo, ratio, aspect, size, left, right, top, bottom, align]
        gr.on(
            [control.change for control in geometry],
            preview,
            inputs,
            [live, canvas_info],
            api_name="preview",
            concurrency_limit=None,
            trigger_mode="always_last",
        )
        run_button.click(run, inputs, [live, gallery, files, status, command, settings], api_name="outpaint")
        cancel_button.click(cancel, None, status, api_name="cancel", queue=False)
        describe_button.click(describe, inputs, [center, surrounding, status], api_name="describe")
        use_button.click(use_as_input, files, photo, api_name=False)
    app.queue(default_concurrency_limit=1)
    return app
