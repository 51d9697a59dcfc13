"""A run's progress in the page: first-use downloads (a tqdm class that hands huggingface_hub's download progress to
Gradio's progress of the run that asked for the model, and to its status line, as `vip outpaint` draws it in the
terminal), a run's messages streamed from its thread (``streamed``), and how Cancel answers (``RunEnding``)."""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

EVERY_S = 0.25  # at most this often per bar (huggingface_hub updates per chunk), and always at the end


def page_download_bars(report: Callable[[int, int | None, str], None]) -> type:
    """A tqdm class calling ``report(done, total, text)`` as a download's bytes arrive (``total`` None while the
    sizes are not known). huggingface_hub draws a download's bytes (received, written) and counts its files; the
    bytes are reported, the file count is not."""
    from tqdm import tqdm

    from ..commands.models import human_size

    class PageDownloadBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)  # huggingface_hub's name for its own bars
            super().__init__(*args, **{**kwargs, "disable": True})
            self.done = kwargs.get("initial") or 0  # a disabled tqdm counts nothing itself
            self.counts_bytes = kwargs.get("unit") == "B"
            self.reported = 0.0
            self._report()

        def update(self, n=1):
            self.done += n or 0
            self._report()

        def refresh(self, *args, **kwargs):  # huggingface_hub grows ``total`` as it learns the files' sizes
            self._report()

        def _report(self) -> None:
            total, done = int(self.total or 0), int(self.done)
            finished = 0 < total <= done
            if not self.counts_bytes or (time.monotonic() - self.reported < EVERY_S and not finished):
                return
            self.reported = time.monotonic()
            if total <= 0:
                report(done, None, "Downloading the model's files...")
                return
            done = min(done, total)
            report(done, total, f"Downloading the model's files: {human_size(done)} of {human_size(total)}")

    return PageDownloadBar


def gradio_report(progress: Any, status: Callable[[str], None]) -> Callable[[int, int | None, str], None]:
    """``report`` for :func:`page_download_bars` in a run of the app: Gradio's progress (``progress``: the event's
    ``gr.Progress``, which API clients see) and the status line (``status``; the page hides Gradio's bar once a
    run has shown its first status)."""

    def reported(done: int, total: int | None, text: str) -> None:
        if progress is not None:
            progress((done, total), desc=text, unit="bytes")
        status(text)

    return reported


def status_callbacks(put: Callable[[str, Any], None], progress: Any, *, steps: bool = True) -> dict[str, Any]:
    """A session's callbacks that write to the page's status line through ``put`` (``streamed``'s): a model loading,
    its first-use download (also on ``progress``, the event's ``gr.Progress``) and, with ``steps``, each step."""
    callbacks: dict[str, Any] = {
        "on_loading": lambda name: put("status", f"Loading {name}..."),
        "download_progress": page_download_bars(gradio_report(progress, lambda text: put("status", text))),
    }
    if steps:
        callbacks["on_step"] = lambda done, total: put("status", f"Step {done} of {total}")
    return callbacks


def streamed(work: Callable[[Callable[[str, Any], None]], Any], name: str) -> Iterator[tuple[str, Any]]:
    """``work(put)`` run in a thread, in the event's context (Gradio finds the event's progress bar through it):
    yields each ``(kind, payload)`` it puts as it comes, then ``("done", its result)`` or ``("error", exception)``."""
    events: queue.Queue = queue.Queue()

    def target() -> None:
        try:
            events.put(("done", work(lambda kind, payload: events.put((kind, payload)))))
        except BaseException as exc:  # noqa: BLE001 - handed to the page as one line
            events.put(("error", exc))

    threading.Thread(target=contextvars.copy_context().run, args=(target,), name=name, daemon=True).start()
    while True:
        kind, payload = events.get()
        yield kind, payload
        if kind in ("done", "error"):
            return


class RunEnding:
    """A tab's run: whether one is going, and the status line it ended with (``last``, set by the run before it
    shows it). Cancel's answer and the run's last line reach the page by different routes, in either order: Cancel
    waits a little for the run to end and then answers with that same line, so the page shows how the run ended."""

    CANCELLING = "Cancelling at the next step..."

    def __init__(self, wait_s: float = 2.0) -> None:
        self.wait_s = wait_s
        self.last = ""
        self._running = False
        self._ended = threading.Condition()

    @contextmanager
    def going(self) -> Iterator[RunEnding]:
        """Around a run's streaming: it is going until the block ends."""
        with self._ended:
            self._running, self.last = True, ""
        try:
            yield self
        finally:
            with self._ended:
                self._running = False
                self._ended.notify_all()

    def cancel(self, session: Any, unchanged: Any) -> Any:
        """Stop ``session``'s run at its next step; the status line to show: the run's own last line when it ended
        within ``wait_s``, else :attr:`CANCELLING` (the run's last line then comes after it), ``unchanged`` when no
        run is going."""
        with self._ended:
            if not self._running:
                return unchanged
            session.cancel()
            if self._ended.wait_for(lambda: not self._running, timeout=self.wait_s):
                return self.last or unchanged
        return self.CANCELLING
