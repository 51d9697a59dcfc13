"""The `vip` command: the Typer app, command registration, and the ONE place errors become messages.

Data goes to stdout; messages, warnings and progress go to stderr (through ``vipcli.console``).
A ``VipError`` is printed as one line, the library arguments it names shown as the command's flags
(``options.flag_message``), and exits with its code; Ctrl-C exits 130 with "interrupted" and what was finished; running
out of memory (system or GPU) outside one input's work is one line saying what ran out and what to try (exit 1); any
other exception is a bug: one line plus a hint, and the full traceback only with ``VIP_DEBUG=1``. Click's usage
errors (an unknown option, a missing argument) are one line too, naming the command's ``--help`` (``vipcli.help``).
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import typer
from rich.markup import escape

from vipcli_model.errors import VipError, is_out_of_memory, on_gpu, what_ran_out

from .console import err_console
from .help import build, usage_error_line
from .options import flag_message

app = typer.Typer(
    name="vip",
    help=(
        "Outpaint images with Stable Diffusion guided by space-aware prompts "
        "(VIP: Center / Surrounding / Total, C-T-S attention)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"vip {version('vip-outpaint')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what the library does (to stderr)."),
) -> None:
    """vip: image outpainting guided by a multimodal LLM."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose:  # vip's own lines; the libraries under it stay at warnings (their config dumps say nothing to a user)
        for name in ("vipcli_model", "vipcli"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # read by diffusers / transformers when (and only when) a command imports them
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


class Interrupted(Exception):
    """Ctrl-C in a command, carried past Typer (which turns a KeyboardInterrupt into a silent exit 130)."""


def _interruptible(command):
    """``command`` with its KeyboardInterrupt (and what it says was finished) brought to ``main()``."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as exc:
            raise Interrupted(str(exc)) from exc

    return run


def _register() -> None:
    from .commands import caption, edit, env, models, outpaint, train, ui
    from .commands import eval as eval_command

    app.command("outpaint")(_interruptible(outpaint.outpaint))
    app.command("edit")(_interruptible(edit.edit))
    app.add_typer(models.app, name="models")
    app.command("env")(env.env)
    app.command("caption")(_interruptible(caption.caption))
    app.command("train")(_interruptible(train.train))
    app.command("eval")(_interruptible(eval_command.eval_))
    app.command("ui")(ui.ui)


_register()


def run_app() -> int | None:
    """The command line, run by the app's click command as `vipcli.help` adjusts it (help, usage lines)."""
    return build(app).main(prog_name="vip", standalone_mode=False)


def main() -> None:
    """Entry point of the `vip` console script."""
    debug = os.environ.get("VIP_DEBUG", "") not in ("", "0")
    command = _command(sys.argv[1:])
    try:
        code = run_app()
        sys.exit(code if isinstance(code, int) else 0)
    except VipError as exc:
        if debug:
            raise
        err_console.print(
            "[bold red]error:[/] " + escape(flag_message(str(exc), command)), highlight=False, soft_wrap=True
        )
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, Interrupted) as exc:
        _interrupted(str(exc))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("[red]aborted[/]")
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the one place bugs become messages
        # usage errors of the CLI framework (typer vendors click in recent versions: duck-type them)
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            if type(exc).__name__ == "NoArgsIsHelpError" or not callable(getattr(exc, "format_message", None)):
                exc.show()  # `vip` alone: its help
            else:
                err_console.print(
                    "[bold red]error:[/] " + escape(usage_error_line(exc)), highlight=False, soft_wrap=True
                )
            sys.exit(exc.exit_code)
        if debug:
            raise
        if is_out_of_memory(exc):
            err_console.print(
                f"[bold red]error:[/] {escape(_out_of_memory(exc, command))}", highlight=False, soft_wrap=True
            )
            sys.exit(1)
        err_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {exc}\n"
            "This is a bug in vip. Run again with VIP_DEBUG=1 for the traceback, and include `vip env` when reporting "
            "it.",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(70)


def _command(argv: list[str]) -> str | None:
    """The command a command line runs (``outpaint``, ``eval``...): the first word that is not a root option."""
    return next((word for word in argv if not word.startswith("-")), None)


# What lowers memory use, per command, with the flags it has (only `vip train` and `vip eval` have a batch size)
GPU_HINTS = {
    "outpaint": "--memory model-offload (or group-offload, sequential-offload), --vae-tiling, or a smaller --tile-size "
    "for the detail pass",
    "edit": "fewer --num-images, or --device cpu (slower)",
    "train": "a smaller --batch-size (with --grad-accum to keep the effective batch), --gradient-checkpointing, or "
    "--mixed-precision bf16",
    "eval": "a smaller --batch-size, or --device cpu (slower)",
    "caption": "a smaller --captioner, or --device cpu (slower)",
}
SYSTEM_HINTS = {"train": "or a smaller --batch-size", "eval": "or a smaller --batch-size"}


def _out_of_memory(exc: BaseException, command: str | None) -> str:
    """Running out of memory outside one input's work, in one line: what ran out and what to try for ``command``."""
    where = " shows where it ran out"
    if on_gpu(exc):
        hint = GPU_HINTS.get(command, "close other programs that use the GPU, or --device cpu (slower)")
        return f"out of {what_ran_out(exc)}: try {hint}; VIP_DEBUG=1{where}"
    smaller = SYSTEM_HINTS.get(command, "or use smaller inputs")
    return f"out of memory: free memory (close other programs), {smaller}; VIP_DEBUG=1{where}"


def _interrupted(finished: str) -> None:
    """Ctrl-C: one line, with what was finished when the command said (``KeyboardInterrupt("2 of 5 ...")``)."""
    err_console.print(
        "[red]interrupted[/]" + (f": {escape(finished)}" if finished else ""), highlight=False, soft_wrap=True
    )
    sys.exit(130)


if __name__ == "__main__":
    main()
