"""The terminal: data on stdout, messages and progress on stderr."""

from __future__ import annotations

from rich.console import Console

out_console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """A warning line; the library arguments it names (in backticks) shown as flags, as errors are."""
    from .options import flag_message

    err_console.print(f"[yellow]warning:[/] {flag_message(message)}", highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """A note: what the run chose not to do and what it would cost (not a problem to fix)."""
    from .options import flag_message

    err_console.print(f"[cyan]note:[/] {flag_message(message)}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    err_console.print(message, highlight=False, soft_wrap=True)


def quiet_third_party() -> None:
    """diffusers / transformers print progress bars and advice of their own: vip owns the terminal.

    Called by commands right before they load models (importing those libraries costs seconds,
    so commands that need no model never pay it). ``VIP_VERBOSE=1`` keeps their output.
    """
    import os

    if os.environ.get("VIP_VERBOSE") == "1":
        return
    try:
        import diffusers.utils.logging as diffusers_logging
        import transformers.utils.logging as transformers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass


def progress(*columns, transient: bool = True):
    """The progress display every command uses: on stderr, hidden when stderr is not a terminal.

    ``columns`` replace the default ones (description, bar, done/total, elapsed, remaining).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = columns or (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=err_console, transient=transient, disable=not err_console.is_terminal)


def download_bars(display):
    """A tqdm class that draws huggingface_hub's per-file download progress as tasks of a Rich ``display``."""
    from tqdm import tqdm

    class RichDownloadBar(tqdm):
        def __init__(self, *args, **kwargs):
            total, initial = kwargs.get("total"), kwargs.get("initial") or 0
            name = "/".join(str(kwargs.get("desc") or "download").split("/")[-2:])  # hf passes the cache path
            kwargs.pop("name", None)
            super().__init__(*args, **{**kwargs, "disable": True})
            self._task = display.add_task(f"  {name}", total=total, completed=initial)

        def update(self, n=1):
            if self._task is not None:
                display.advance(self._task, n or 0)

        def close(self):
            if getattr(self, "_task", None) is not None:
                display.remove_task(self._task)
                self._task = None
            super().close()

    return RichDownloadBar
