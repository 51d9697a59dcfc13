"""First-use downloads in the page: a tqdm class that draws huggingface_hub's download progress as Gradio's progress
bar (the bar of the run that asked for the model), as `vip outpaint` draws it in the terminal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def page_download_bars(progress: Callable[..., Any]) -> type:
    """A tqdm class reporting each download's bytes to ``progress`` (an event's ``gr.Progress``, or any callable
    taking ``((done, total), desc=..., unit=...)``). huggingface_hub draws a download's bytes (received, written) and
    counts its files; the bytes are shown, the file count is not."""
    from tqdm import tqdm

    from ..commands.models import human_size

    class PageDownloadBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)  # huggingface_hub's name for its own bars
            super().__init__(*args, **{**kwargs, "disable": True})
            self.done = kwargs.get("initial") or 0  # a disabled tqdm counts nothing itself
            self.counts_bytes = kwargs.get("unit") == "B"
            self._draw()

        def update(self, n=1):
            self.done += n or 0
            self._draw()

        def refresh(self, *args, **kwargs):  # huggingface_hub grows ``total`` as it learns the files' sizes
            self._draw()

        def _draw(self) -> None:
            if not self.counts_bytes:
                return
            total, done = int(self.total or 0), int(self.done)
            if total <= 0:  # the sizes are not known yet
                progress((done, None), desc="Downloading the model's files...", unit="bytes")
                return
            done = min(done, total)
            progress(
                (done, total),
                desc=f"Downloading the model's files: {human_size(done)} of {human_size(total)}",
                unit="bytes",
            )

    return PageDownloadBar
