"""How `vip`'s help reads: the click command built from the Typer app, adjusted once for every command.

- A command's docstring is hard-wrapped in the source; its prose paragraphs become one line each, so the terminal
  (Rich) wraps them to its width, while indented blocks (the examples) keep their lines.
- Flags take no value: no type is shown beside them (typer shows ``<bool>``).
- Arguments read as in every man page, ``IMAGES...`` (typer writes ``{images}...`` in the usage line).
- A usage error (an unknown option, a bad choice, a missing argument) is one line, as vip's own errors are.

Only click's public API is used (``Parameter.get_usage_pieces``, ``metavar``, ``UsageError.format_message``), so
the help reads the same with the typer versions vip supports.
"""

from __future__ import annotations

import inspect

import typer


def reflow(doc: str | None) -> str:
    """A docstring as help text: each prose paragraph on one line; indented blocks (examples) line for line."""
    paragraphs = []
    for block in inspect.cleandoc(doc or "").split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip() not in ("", "\b")]
        if not lines:
            continue
        if all(line.startswith(" ") for line in lines):
            paragraphs.append("\n".join(lines))
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


def argument_name(param) -> str:
    """``IMAGES...``, ``INSTRUCTION``, ``[DATA_DIR]``: an argument as usage lines and man pages write it."""
    name = (param.name or "").upper()
    if param.nargs != 1:
        name += "..."
    return name if param.required else f"[{name}]"


def _adjust_argument(param) -> None:
    base = type(param)

    class Argument(base):
        def get_usage_pieces(self, ctx) -> list[str]:
            return [argument_name(self)]

        def display_type_rich(self, ctx) -> str | None:  # the type column of Rich help: the name says it
            return None

    Argument.__name__ = Argument.__qualname__ = base.__name__
    param.__class__ = Argument
    param.metavar = (param.name or "").upper() + ("..." if param.nargs != 1 else "")


def _flag_help_option(command) -> None:
    """``-h/--help`` is made by click when help is asked for: a flag like the others."""
    base = type(command)

    class Command(base):
        def get_help_option(self, ctx):
            option = super().get_help_option(ctx)
            if option is not None:
                option.metavar = ""
            return option

    Command.__name__ = Command.__qualname__ = base.__name__
    command.__class__ = Command


def adjust(command) -> None:
    """Adjust ``command`` and its subcommands in place (see the module's docstring)."""
    command.help = reflow(command.help)
    _flag_help_option(command)
    for param in command.params:
        if param.param_type_name == "argument":
            _adjust_argument(param)
        elif getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        adjust(sub)


def build(app: typer.Typer, markup: bool = True):
    """The click command of ``app``, adjusted. ``markup``: its help is read as Rich markup (the terminal), so
    brackets in it are escaped (``pip install 'vip-outpaint[ui]'`` would lose ``[ui]``); man pages are plain."""
    command = typer.main.get_command(app)
    adjust(command)
    if markup:
        _escape_brackets(command)
    return command


def _escape_brackets(command) -> None:
    from rich.markup import escape

    command.help = escape(command.help or "")
    for param in command.params:
        if getattr(param, "help", None):
            param.help = escape(param.help)
    for sub in getattr(command, "commands", {}).values():
        _escape_brackets(sub)


def usage_error_line(exc) -> str:
    """A usage error of click (``UsageError``) as one line: what is wrong, and where the options are listed."""
    message = " ".join(exc.format_message().split())
    message = message[:1].lower() + message[1:].rstrip(".")
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "vip"
    return f"{message}; see {where} --help"
