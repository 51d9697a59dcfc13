"""`vip ui`: the web app (Gradio) on the library. ``serve`` starts it; ``app.build_app`` builds the page."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from vipcli_model.errors import OptionError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_serving(host: str, auth: str | None) -> tuple[str, str] | None:
    """The (user, password) of ``--auth``; refuses another address than this machine's without one."""
    credentials = None
    if auth is not None:
        user, colon, password = auth.partition(":")
        if not colon or not user or not password:
            raise OptionError(f"--auth {auth!r}: give USER:PASSWORD")
        credentials = (user, password)
    if host not in LOCAL_HOSTS and credentials is None:
        raise OptionError(
            f"--host {host} lets other machines reach the app: add --auth USER:PASSWORD (or keep --host 127.0.0.1)"
        )
    if importlib.util.find_spec("gradio") is None:
        raise OptionError("vip ui needs gradio, which is not installed: pip install 'vip-outpaint[ui]'")
    return credentials


def serve(
    *,
    model: str | None,
    host: str,
    port: int,
    output: str,
    device: str,
    auth: str | None,
    open_browser: bool,
    on_ready: Callable[[str], None],
) -> None:
    """Serve the app until Ctrl-C; uploads live in a temporary folder removed on exit."""
    credentials = check_serving(host, auth)
    uploads = Path(tempfile.mkdtemp(prefix="vip-ui-"))
    os.environ["GRADIO_TEMP_DIR"] = str(uploads)  # before gradio is imported: where it keeps uploaded files
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from vipcli_model.editing.session import EditSession
        from vipcli_model.outpainting.session import OutpaintSession

        from .app import build_app

        session, edit_session = OutpaintSession(output), EditSession(output)
        app = build_app(session, edit_session=edit_session, model=model, device=device)
        Path(output).mkdir(parents=True, exist_ok=True)
        _, url, _ = app.launch(
            server_name=host,
            server_port=port,
            auth=credentials,
            inbrowser=open_browser,
            prevent_thread_lock=True,
            quiet=True,
            show_error=False,
            allowed_paths=[str(Path(output).resolve())],
        )
        on_ready(url)
        try:
            app.block_thread()
        finally:
            app.close()
            session.release()
            edit_session.release()
    finally:
        shutil.rmtree(uploads, ignore_errors=True)
