"""Render man pages from the CLI itself, so they can never drift from `--help`.

python -m vipcli.manpages man/          # rewrite the pages
python -m vipcli.manpages man/ --check  # exit 1 when a page is stale (tests run this)
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def _escape(text: str) -> str:
    lines = []
    for line in text.replace("\\", "\\\\").splitlines():
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line.replace("-", "\\-"))
    return "\n".join(lines)


def _plain(command) -> None:
    """Turn off Rich formatting for a command and its subcommands."""
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None
    for sub in getattr(command, "commands", {}).values():
        _plain(sub)


def _help_text(path: list[str]) -> str:
    """The command's own ``--help`` output, at a fixed width and without colour."""
    from click.testing import CliRunner

    from .main import app

    env = {
        "COLUMNS": "100",
        "NO_COLOR": "1",
        "TERM": "dumb",
        "TERMINAL_WIDTH": "100",
        "_TYPER_FORCE_DISABLE_TERMINAL": "1",
    }
    command = typer.main.get_command(app)
    _plain(command)  # man pages get click's plain layout; `--help` in a terminal shows Rich panels
    result = CliRunner().invoke(command, [*path, "--help"], env=env, prog_name="vip")
    if result.exit_code != 0:
        raise RuntimeError(f"vip {' '.join(path)} --help failed: {result.output}")
    return "\n".join(line.rstrip() for line in result.output.strip().splitlines())


def _page(path: list[str], summary: str) -> str:
    full = " ".join(["vip", *path])
    return "\n".join(
        [
            f'.TH "{full.upper().replace(" ", "-")}" "1" "" "vip" "vip manual"',
            ".SH NAME",
            f"{_escape(full.replace(' ', '-'))} \\- {_escape(summary)}",
            ".SH SYNOPSIS AND OPTIONS",
            ".nf",
            _escape(_help_text(path)),
            ".fi",
            ".SH SEE ALSO",
            "vip(1), vip\\-outpaint(1), vip\\-models(1), vip\\-env(1)",
            "",
        ]
    )


def _summary(command) -> str:
    text = (getattr(command, "short_help", None) or getattr(command, "help", None) or "").strip()
    return text.splitlines()[0] if text else ""


def render() -> dict[str, str]:
    """File name -> roff text for `vip` and every subcommand."""
    from .main import app

    root = typer.main.get_command(app)
    pages = {"vip.1": _page([], _summary(root))}

    def walk(group, parents: list[str]) -> None:
        for name, command in sorted(group.commands.items()):
            path = [*parents, name]
            pages["vip-" + "-".join(path) + ".1"] = _page(path, _summary(command))
            if hasattr(command, "commands"):
                walk(command, path)

    walk(root, [])
    return pages


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
