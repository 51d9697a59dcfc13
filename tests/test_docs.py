"""Docs come from code: man pages are rendered from the CLI; .ci/run runs the README's test command."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_man_pages_are_current():
    result = subprocess.run(
        [sys.executable, "-m", "vipcli.manpages", str(REPO / "man"), "--check"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr


def test_man_pages_cover_every_command():
    from vipcli.manpages import render

    pages = render()
    for name in ("vip.1", "vip-outpaint.1", "vip-env.1", "vip-models.1", "vip-models-download.1"):
        assert name in pages
    assert "\\-\\-region\\-strength" in pages["vip-outpaint.1"]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert match, "README lost its marked test command"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "test-command" in ci  # .ci/run extracts and runs the README's block, never a copy of it
