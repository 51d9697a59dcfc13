"""A warm editing session for interactive front ends (``vip ui``'s Edit tab): the editor loaded once.

``EditSession.run`` is ``edit_images`` on one photo with the session's loaded ``Editor`` (the same checks, names,
metadata and PNG bytes as ``vip edit``), with per-step progress and ``cancel()`` (the run stops at its next step).
Asking for another model frees the loaded one first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from vipcli_model.batch import BatchRun
from vipcli_model.config import ModelConfig
from vipcli_model.editing.run import EditJob, check_edit_job, edit_images, edit_kinds
from vipcli_model.errors import Cancelled, release_cached_memory
from vipcli_model.images.io import load_image
from vipcli_model.images.outputs import free_folder

__all__ = ["EditSession"]


class EditSession:
    """One InstructPix2Pix model kept loaded between runs, results saved under ``output`` with `vip edit`'s names."""

    def __init__(self, output: str | Path, *, download_progress: Any = None) -> None:
        self.output = Path(output)
        self.download_progress = download_progress
        self._editor: Any = None
        self._model: ModelConfig | None = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self.loads = 0  # how many times a model was loaded

    @property
    def model(self) -> ModelConfig | None:
        return self._model

    def editor(
        self, model: ModelConfig, on_loading: Callable[[str], None] | None = None, download_progress: Any = None
    ) -> Any:
        """The ``Editor`` of ``model``: the loaded one, or (after freeing another model) a new one, its first-use
        downloads drawn by ``download_progress`` (a tqdm class; None: the session's)."""
        if self._editor is not None and self._model == model:
            return self._editor
        self.release()
        from vipcli_model.editing.editor import Editor

        if on_loading is not None:
            on_loading(model.model)
        self._editor = Editor(model, tqdm_class=download_progress or self.download_progress)
        self._model = model
        self.loads += 1
        return self._editor

    def release(self) -> None:
        """Free the loaded model, giving its memory back."""
        self._editor, self._model = None, None
        release_cached_memory()

    def cancel(self) -> None:
        """Stop the current run at its next denoising step (it fails with ``Cancelled``); nothing when idle."""
        self._cancel.set()

    def run(
        self,
        image: str | Path,
        job: EditJob,
        *,
        on_loading: Callable[[str], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        download_progress: Any = None,
    ) -> BatchRun:
        """Edit one photo as ``edit_images([image], job)`` does, with the session's editor.

        ``job.output`` is ignored: results go to the session's folder, or to a numbered folder below it when a file
        of that name is already there. ``download_progress``: a tqdm class drawing this run's first-use downloads
        (None: the session's). Raises the photo's error instead of reporting it as a failed item.
        """
        check_edit_job(job)
        with self._lock:
            self._cancel.clear()
            job = replace(job, output=free_folder(self.output, image, edit_kinds(job.edit.num_images)), overwrite=False)
            load_image(image)  # an unreadable file fails before any model loads
            downloads = download_progress or self.download_progress
            editor = self.editor(job.model, on_loading, downloads)

            def stepped(path: Path, done: int, steps: int) -> None:
                if on_step is not None:
                    on_step(done, steps)
                if self._cancel.is_set():
                    raise Cancelled(f"cancelled at step {done} of {steps}")

            run = edit_images([str(image)], job, editor=editor, on_step=stepped, download_progress=downloads)
        failed = [item for item in run.items if item.error is not None]
        if failed:
            raise failed[0].error
        return run
