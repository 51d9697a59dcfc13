"""A warm session for interactive front ends (``vip ui``): the model loaded once and kept between runs.

``OutpaintSession.run`` is ``outpaint_images`` on one photo with the session's loaded ``Outpainter`` (the same
checks, prompts, names, metadata and PNG bytes as ``vip outpaint``), plus what a person watching needs: per-step
progress, a picture of the current latents every few steps (``LatentPreview``), and ``cancel()``, which stops the run
at its next denoising step. Asking for another model frees the loaded one first. ``canvas_preview`` is the canvas
geometry drawn at once, without a model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vipcli_model.batch import BatchRun
from vipcli_model.config import ExpansionConfig, ModelConfig
from vipcli_model.errors import Cancelled, release_cached_memory
from vipcli_model.images.io import load_image
from vipcli_model.images.outputs import free_folder, output_kinds
from vipcli_model.outpainting.canvas import check_expansion_options, prepare_geometry, validate_expansion_values
from vipcli_model.outpainting.run import OutpaintJob, check_job, outpaint_images
from vipcli_model.prompts import RegionPrompts

__all__ = ["CanvasPreview", "LatentPreview", "OutpaintSession", "canvas_preview"]

logger = logging.getLogger(__name__)

# SD's 4 latent channels -> RGB, a least-squares fit of the autoencoder's decoder (the "cheap approximation" of
# A1111's live previews): a blurry but faithful picture of the layout, with no model at all
LATENT_RGB = np.array(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]], dtype=np.float32
)
PREVIEW_FILL = (128, 128, 128)  # the area to generate, in the canvas preview


@dataclass
class CanvasPreview:
    """The canvas of one photo before any model runs."""

    image: Image.Image  # the photo on the canvas, the area to generate grey, at most ``max_side`` pixels a side
    canvas_size: tuple[int, int]  # the result's size
    image_box: tuple[int, int, int, int]  # where the photo sits on it (left, top, right, bottom)


def canvas_preview(path: str | Path, expansion: ExpansionConfig, *, max_side: int = 768) -> CanvasPreview:
    """The canvas ``expansion`` makes of the photo at ``path``, drawn at once (``InputError`` / ``OptionError``)."""
    sides = {"left": expansion.left, "right": expansion.right, "top": expansion.top, "bottom": expansion.bottom}
    check_expansion_options(
        ratio=expansion.ratio, aspect=expansion.aspect, size=expansion.size, sides=sides, align=expansion.align
    )
    validate_expansion_values(ratio=expansion.ratio, aspect=expansion.aspect, size=expansion.size, sides=sides)
    loaded = load_image(path)
    geometry = prepare_geometry(loaded.image, expansion, alpha=loaded.alpha)
    grey = Image.new("RGB", geometry.canvas.size, PREVIEW_FILL)
    picture = Image.composite(grey, geometry.canvas, geometry.mask)
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return CanvasPreview(image=picture, canvas_size=geometry.plan.canvas_size, image_box=tuple(geometry.plan.image_box))


class LatentPreview:
    """A denoising run's current latents as a small picture.

    With the pipeline's own tiny autoencoder (``vae='tiny'``, ``fast``) or the family's TAESD already in the cache,
    the tiny autoencoder decodes them (milliseconds); otherwise a linear map of SD's latent channels to RGB does.
    Latents that are not SD's 4 channels (FLUX packs its own) give no picture (None).
    """

    def __init__(self, pipe: Any) -> None:
        self.decoder = _tiny_decoder(pipe)
        self.scale = getattr(pipe, "vae_scale_factor", 8)  # latents -> pixels: the picture at the working size

    def __call__(self, latents: Any) -> Image.Image | None:
        import torch

        if latents.ndim != 4 or latents.shape[1] != 4:
            return None
        latents = latents[:1].detach()
        with torch.no_grad():
            if self.decoder is not None:
                decoder = self.decoder
                scaled = latents.to(device=decoder.device, dtype=decoder.dtype) / decoder.config.scaling_factor
                rgb = decoder.decode(scaled).sample[0].float().clamp(-1, 1).add(1).div(2).permute(1, 2, 0)
            else:
                # the linear map reads unscaled latents (SD's 0.18215 undone)
                unscaled = latents[0].float().cpu().permute(1, 2, 0) / 0.18215
                rgb = (unscaled @ torch.from_numpy(LATENT_RGB)).add(1).div(2).clamp(0, 1)
        picture = Image.fromarray((rgb.cpu().numpy() * 255).round().astype(np.uint8))
        size = (latents.shape[3] * self.scale, latents.shape[2] * self.scale)
        return picture if picture.size == size else picture.resize(size, Image.Resampling.BILINEAR)


def _tiny_decoder(pipe: Any) -> Any:
    """The tiny autoencoder that decodes previews: the pipeline's own, or the family's when cached; else None."""
    vae = getattr(pipe, "vae", None)
    if type(vae).__name__ == "AutoencoderTiny":
        return vae
    if vae is None or getattr(vae.config, "latent_channels", None) != 4:
        return None
    from vipcli_model.models import hub
    from vipcli_model.models.catalog import TINY_VAE
    from vipcli_model.models.families import family_of_pipeline
    from vipcli_model.models.loading import tiny_vae_for

    family = family_of_pipeline(pipe)
    if family.tiny_vae is None or hub.find_cached(family.tiny_vae, TINY_VAE) is None:
        return None
    try:
        tiny, _spec = tiny_vae_for(family, "tiny", vae.dtype, latent_channels=4, scale=pipe.vae_scale_factor)
    except Exception as exc:  # noqa: BLE001 - previews are a courtesy: the linear map stands in
        logger.info("previews without the tiny autoencoder: %s", exc)
        return None
    return tiny.to(vae.device)


class OutpaintSession:
    """One model kept loaded between runs, results saved under ``output`` with ``vip outpaint``'s names.

    One run at a time (a lock); ``cancel()`` from another thread stops the current run at its next step.
    """

    def __init__(self, output: str | Path, *, download_progress: Any = None) -> None:
        self.output = Path(output)
        self.download_progress = download_progress  # a tqdm class drawing first-use downloads
        self._outpainter: Any = None
        self._model: ModelConfig | None = None
        self._captioner: Any = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self.loads = 0  # how many times a model was loaded (a warm session loads once per model)

    @property
    def model(self) -> ModelConfig | None:
        """The settings of the loaded model (None before the first run)."""
        return self._model

    def outpainter(
        self, model: ModelConfig, on_loading: Callable[[str], None] | None = None, download_progress: Any = None
    ) -> Any:
        """The ``Outpainter`` of ``model``: the loaded one, or (after freeing another model) a new one, its first-use
        downloads drawn by ``download_progress`` (a tqdm class; None: the session's)."""
        if self._outpainter is not None and self._model == model:
            return self._outpainter
        self.release()
        from vipcli_model.outpainting.outpainter import Outpainter

        if on_loading is not None:
            on_loading(model.model)
        self._outpainter = Outpainter(model, tqdm_class=download_progress or self.download_progress)
        self._model = model
        self.loads += 1
        return self._outpainter

    def release(self) -> None:
        """Free the loaded model (and captioner), giving its memory back."""
        self._outpainter, self._model, self._captioner = None, None, None
        release_cached_memory()

    def cancel(self) -> None:
        """Stop the current run at its next denoising step (it fails with ``Cancelled``); nothing when idle."""
        self._cancel.set()

    def describe(
        self,
        image: str | Path,
        job: OutpaintJob,
        *,
        on_loading: Callable[[str], None] | None = None,
        download_progress: Any = None,
    ) -> RegionPrompts:
        """The captioner's Center / Surrounding for the photo (steered by ``job.prompts.keywords``), fitted to the
        model's text window; the captioner stays loaded. ``on_loading(name)`` before a model loads;
        ``download_progress``: a tqdm class drawing first-use downloads (None: the session's)."""
        from vipcli_model.captioning.captioner import CaptionCache, caption_for_outpaint, load_captioner

        prompts = job.prompts
        prompts.check_captioner()
        loaded = load_image(image)
        with self._lock:
            downloads = download_progress or self.download_progress
            tokenizer, max_tokens = self.outpainter(job.model, on_loading, downloads).prompt_window()
            if self._captioner is None:
                if on_loading is not None:
                    on_loading(f"captioner {prompts.captioner_url or prompts.captioner or 'default'}")
                captioner = load_captioner(
                    prompts.captioner,
                    url=prompts.captioner_url,
                    server_model=prompts.captioner_model,
                    device=job.model.device,
                    tqdm_class=downloads,
                )
                self._captioner = (captioner, CaptionCache())
            captioner, cache = self._captioner
            result = caption_for_outpaint(
                captioner,
                loaded.image,
                keywords=prompts.keywords,
                tokenizer=tokenizer,
                cache=cache,
                max_tokens=max_tokens,
            )
        return result.prompts

    def run(
        self,
        image: str | Path,
        job: OutpaintJob,
        *,
        on_loading: Callable[[str], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        on_preview: Callable[[int, int, Image.Image], None] | None = None,
        preview_every: int = 2,
        on_warning: Callable[[str], None] | None = None,
        download_progress: Any = None,
    ) -> BatchRun:
        """Outpaint one photo as ``outpaint_images([image], job)`` does, with the session's model.

        ``job.output`` is ignored: results go to the session's folder, or to a numbered folder below it
        (``2``, ``3``...) when a file of that name is already there. ``on_step(step, steps)`` after each denoising
        step; ``on_preview(step, steps, picture)`` every ``preview_every`` steps and after the last;
        ``download_progress``: a tqdm class drawing this run's first-use downloads (None: the session's). Raises the
        photo's error (``InputError``, ``OptionError``, ``Cancelled``...) instead of reporting it as a failed item.
        """
        check_job(job)
        with self._lock:
            self._cancel.clear()
            kinds = output_kinds(preview=job.preview, num_images=job.generation.num_images)
            job = replace(job, output=free_folder(self.output, image, kinds), overwrite=False)
            load_image(image)  # an unreadable file fails before any model loads
            downloads = download_progress or self.download_progress
            outpainter = self.outpainter(job.model, on_loading, downloads) if not job.preview else None
            previews = LatentPreview(outpainter.pipe) if on_preview is not None and outpainter is not None else None

            def stepped(path: Path, done: int, steps: int) -> None:
                if on_step is not None:
                    on_step(done, steps)
                if self._cancel.is_set():
                    raise Cancelled(f"cancelled at step {done} of {steps}")

            def latents(path: Path, done: int, steps: int, tensor: Any) -> None:
                if previews is not None and (done % max(preview_every, 1) == 0 or done == steps):
                    picture = previews(tensor)
                    if picture is not None:
                        on_preview(done, steps, picture)

            run = outpaint_images(
                [str(image)],
                job,
                outpainter=outpainter,
                on_step=stepped,
                on_latents=latents if previews is not None else None,
                on_warning=on_warning,
                download_progress=downloads,
            )
        failed = [item for item in run.items if item.error is not None]
        if failed:
            raise failed[0].error
        return run
