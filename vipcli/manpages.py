"""Render man pages from the CLI itself, so they can never drift from `--help`.

python -m vipcli.manpages man/          # rewrite the pages
python -m vipcli.manpages man/ --check  # exit 1 when a page is stale (tests run this)

Each page is roff for man(7): NAME, SYNOPSIS, DESCRIPTION (paragraphs that man fills to the terminal, examples line
for line), ARGUMENTS and OPTIONS as tagged paragraphs (grouped as in `--help`), COMMANDS for a group, EXIT STATUS,
ENVIRONMENT and SEE ALSO. Hyphenation is off, so man never breaks a word that the source does not.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Exit codes of every command: vipcli_model.errors holds those of the error kinds (a test checks they match),
# vipcli.main the others
EXIT_STATUS = [
    ("0", "Success."),
    (
        "1",
        "Failures of different kinds in one batch; out of memory outside one input's work; vip eval skipped some "
        "images.",
    ),
    ("2", "Options: an unknown option or value, options that contradict each other, nothing to generate."),
    ("3", "Input files: missing, unreadable, corrupt or unsupported; too large for the memory."),
    ("4", "Models: not local, not cached and not downloadable (misspelt, gated, offline), or found but not loadable."),
    ("5", "Outputs: exists without --overwrite, a read-only folder, a file where a folder goes."),
    ("6", "Captioner: the local VLM or the --captioner-url server failed or answered something unusable."),
    ("70", "A bug in vip: run again with VIP_DEBUG=1 for the traceback."),
    ("130", "Interrupted (Ctrl-C); the message says what was finished."),
]

# What vip and the libraries it calls read from the environment
ENVIRONMENT = [
    ("VIP_CACHE_DIR", "The first cache vip reads models from and downloads them to (hub cache layout)."),
    ("VIP_HUB_TIMEOUT", "Seconds to wait for the hub to answer one request (default 20)."),
    ("VIP_DEBUG", "1: show the full traceback of an error instead of one line."),
    ("VIP_VERBOSE", "1: keep the messages of diffusers and transformers (vip -v does too)."),
    ("VIP_CAPTIONER_API_KEY", "The API key sent to a --captioner-url server."),
    ("HF_HOME, HF_HUB_CACHE", "Where the Hugging Face hub cache is (vip looks there after VIP_CACHE_DIR)."),
    ("HF_HUB_OFFLINE", "1: never use the network; models must be cached."),
    ("HF_ENDPOINT", "The hub's address, for a mirror."),
    ("HF_TOKEN", "The hub token, for gated models (or log in with hf auth login)."),
    ("HTTPS_PROXY, HTTP_PROXY, NO_PROXY", "Proxies for the hub and for a --captioner-url server."),
    ("NO_COLOR", "Set: no colours in messages."),
]


def _escape(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _paragraphs(help_text: str) -> list[str]:
    """A command's help (prose paragraphs on one line, examples indented) as roff: filled text, examples as is."""
    out = []
    for block in help_text.split("\n\n"):
        lines = block.splitlines()
        if lines and all(line.startswith(" ") for line in lines):
            indent = min(len(line) - len(line.lstrip()) for line in lines)
            out += [".PP", ".RS 2", ".nf", *(_escape(line[indent:]) for line in lines), ".fi", ".RE"]
        elif lines:
            out += [".PP", _escape(" ".join(line.strip() for line in lines))]
    return out[1:] if out[:1] == [".PP"] else out


def _default(param) -> str | None:
    value = param.default
    if param.show_default is False or callable(value) or value in (None, False, "", (), []):
        return None
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _option_tag(param) -> str:
    """``-o, --output OUTPUT`` in roff: the names in bold, the value's name in italics."""
    names = sorted(param.opts, key=lambda name: (name.startswith("--"), name)) + list(param.secondary_opts)
    tag = ", ".join(f"\\fB{_escape(name)}\\fR" for name in names)
    if not (param.is_flag or param.count):
        tag += f" \\fI{_escape(param.name.upper())}\\fR"
    return tag


def _help_of(param) -> str:
    text = " ".join((getattr(param, "help", None) or "").split())
    extra = []
    if getattr(param, "multiple", False):
        extra.append("May be given more than once.")
    if (default := _default(param)) is not None:
        extra.append(f"Default: {default}.")
    if param.required:
        extra.append("Required.")
    return " ".join([text, *extra]).strip()


def _options(command, ctx) -> list[str]:
    """OPTIONS: tagged paragraphs, in the groups (and order) of `--help`."""
    groups: dict[str, list] = {}
    for param in command.get_params(ctx):
        if param.param_type_name == "option" and not param.hidden:
            groups.setdefault(getattr(param, "rich_help_panel", None) or "", []).append(param)
    lines = [".SH OPTIONS"]
    for panel, params in sorted(groups.items(), key=lambda item: item[0] != ""):
        if panel:
            lines.append(f".SS {_escape(panel)}")
        for param in params:
            lines += [".TP", _option_tag(param), _escape(_help_of(param))]
    return lines


def _arguments(command) -> list[str]:
    from .help import argument_name

    arguments = [param for param in command.params if param.param_type_name == "argument"]
    if not arguments:
        return []
    lines = [".SH ARGUMENTS"]
    for param in arguments:
        text = _help_of(param).removesuffix(" Required.")  # the synopsis shows which are optional
        lines += [".TP", f"\\fI{_escape(argument_name(param))}\\fR", _escape(text)]
    return lines


def _subcommands(command) -> list[str]:
    if not hasattr(command, "commands"):
        return []
    lines = [".SH COMMANDS"]
    for name, sub in sorted(command.commands.items()):
        lines += [".TP", f"\\fB{_escape(name)}\\fR", _escape(_summary(sub))]
    return lines


def _synopsis(command, path: list[str], ctx) -> list[str]:
    pieces = [piece for piece in command.collect_usage_pieces(ctx) if piece]
    words = []
    for piece in pieces:
        words.append("[\\fIOPTIONS\\fR]" if piece == "[OPTIONS]" else f"\\fI{_escape(piece)}\\fR")
    return [".SH SYNOPSIS", f".B {_escape(' '.join(['vip', *path]))}", " ".join(words)]


def _page(command, path: list[str], ctx, names: list[str]) -> str:
    name = "-".join(["vip", *path])
    see_also = [other for other in names if other != name]
    lines = [
        f'.TH "{name.upper()}" "1" "" "vip" "vip manual"',
        ".nh",  # no hyphenation: man breaks lines between words only
        ".ad l",
        ".SH NAME",
        f"{_escape(name)} \\- {_escape(_summary(command))}",
        *_synopsis(command, path, ctx),
        ".SH DESCRIPTION",
        *_paragraphs(command.help or ""),
        *_arguments(command),
        *_subcommands(command),
        *_options(command, ctx),
        ".SH EXIT STATUS",
    ]
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f"\\fB{code}\\fR", _escape(meaning)]
    lines.append(".SH ENVIRONMENT")
    for variable, meaning in ENVIRONMENT:
        lines += [".TP", f"\\fB{_escape(variable)}\\fR", _escape(meaning)]
    lines.append(".SH SEE ALSO")
    lines += [f".BR {_escape(other)} (1){',' if i < len(see_also) - 1 else ''}" for i, other in enumerate(see_also)]
    return "\n".join(lines) + "\n"


def _summary(command) -> str:
    text = (getattr(command, "short_help", None) or getattr(command, "help", None) or "").strip()
    return text.split("\n\n")[0].replace("\n", " ") if text else ""


def commands() -> dict[str, tuple[list[str], object, object]]:
    """Page name (``vip-models-download``) -> (command path, click command, its context), for `vip` and every
    subcommand; the contexts are chained as a command line chains them (``-h`` comes from the root's settings)."""
    from .help import build
    from .main import app

    found = {}

    def walk(command, path: list[str], parent) -> None:
        ctx = command.context_class(
            command, info_name=path[-1] if path else "vip", parent=parent, **command.context_settings
        )
        found["-".join(["vip", *path])] = (path, command, ctx)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*path, name], ctx)

    walk(build(app, markup=False), [], None)
    return found


def render() -> dict[str, str]:
    """File name -> roff text for `vip` and every subcommand."""
    found = commands()
    return {f"{name}.1": _page(command, path, ctx, list(found)) for name, (path, command, ctx) in found.items()}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    folder = Path(args[0] if args else "man")
    pages = render()
    stale = []
    for name, text in pages.items():
        path = folder / name
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    extra = sorted(p.name for p in folder.glob("*.1") if p.name not in pages) if folder.is_dir() else []
    if check and (stale or extra):
        print(f"stale man pages: {', '.join(stale + extra)}; run: python -m vipcli.manpages {folder}", file=sys.stderr)
        return 1
    if not check:
        for name in extra:
            (folder / name).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
