"""`vip ui`: the web app on the library, for outpainting in the browser with the model kept loaded between runs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..console import err_console
from ..options import DeviceOpt, ModelOpt


def ui(
    model: ModelOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; another than 127.0.0.1 needs --auth.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 7860,
    output: Annotated[
        str,
        typer.Option("--output", "-o", help="Folder where every result is saved, named as `vip outpaint` names them."),
    ] = "vip-ui",
    auth: Annotated[
        Optional[str],
        typer.Option("--auth", help="USER:PASSWORD the page asks for (needed to listen on another address)."),
    ] = None,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open the browser.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Outpaint in the browser: a local web app (Gradio) with a live canvas preview, progress with previews, Cancel,
    and the model kept loaded between runs.

    Needs the ui extra: pip install 'vip-outpaint[ui]'. Prints the local URL and opens it; Ctrl-C stops.
    Uploaded files live in a temporary folder removed on exit; results are saved under --output.
    Scripts can call the same functions with gradio_client (see docs/ui.md).

    Examples:

    \b
      vip ui
      vip ui --model sdxl-inpaint --no-browser --port 8080
      vip ui --host 0.0.0.0 --auth me:secret -o results/
    """
    from ..ui import serve

    def ready(url: str) -> None:
        typer.echo(url)
        err_console.print("vip ui is running: Ctrl-C stops it", highlight=False)

    serve(
        model=model,
        host=host,
        port=port,
        output=output,
        device=device,
        auth=auth,
        open_browser=not no_browser,
        on_ready=ready,
    )
