"""Docs come from code: man pages are rendered from the CLI, the site builds with warnings as errors; .ci/run runs the
README's test command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def test_man_pages_are_current():
    result = subprocess.run(
        [sys.executable, "-m", "vipcli.manpages", str(REPO / "man"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr


def test_man_pages_cover_every_command():
    from vipcli.manpages import render

    pages = render()
    for name in ("vip.1", "vip-outpaint.1", "vip-env.1", "vip-models.1", "vip-models-download.1"):
        assert name in pages
    outpaint = pages["vip-outpaint.1"]
    # options are tagged paragraphs in the groups of --help, not a preformatted dump
    assert ".SS Geometry\n.TP\n\\fB\\-\\-ratio\\fR \\fIRATIO\\fR\n" in outpaint
    assert ".TP\n\\fB\\-\\-region\\-strength\\fR \\fIREGION_STRENGTH\\fR\n" in outpaint
    assert ".SH SYNOPSIS\n.B vip outpaint\n[\\fIOPTIONS\\fR] \\fIIMAGES...\\fR\n" in outpaint
    assert ".TP\n\\fB\\-n\\fR, \\fB\\-\\-num\\-images\\fR \\fINUM_IMAGES\\fR\n" in pages["vip-edit.1"]


def _rendered(page: Path) -> str:
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-rLL=80n", "-P-cbou", str(page)], capture_output=True, text=True, check=True
    )
    return result.stdout


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff")
def test_man_pages_read_at_80_columns():
    """man at 80 columns: no line overflows, and a line ends in a hyphen only where the source has one."""
    from vipcli.manpages import render

    pages = sorted((REPO / "man").glob("*.1"))
    assert [page.name for page in pages] == sorted(render())
    for page in pages:
        source = page.read_text(encoding="utf-8").replace("\\-", "-")
        lines = _rendered(page).splitlines()
        assert len(lines) > 40, page.name
        for line, following in zip(lines, lines[1:]):
            assert len(line) <= 80, (page.name, line)
            if re.search(r"\w[-\u2010]$", line) and following.strip():
                joined = line.split()[-1].rstrip("\u2010") + following.split()[0]
                assert joined.replace("\u2010", "-") in source, (page.name, line, following)


def test_man_pages_see_also_every_other_page():
    from vipcli.manpages import render

    pages = render()
    names = {name.removesuffix(".1") for name in pages}
    for name, text in pages.items():
        see_also = text.split(".SH SEE ALSO\n")[1]
        listed = set(re.findall(r"^\.BR (\S+) \(1\)", see_also, re.M))
        assert {entry.replace("\\-", "-") for entry in listed} == names - {name.removesuffix(".1")}, name


def test_man_pages_list_every_exit_code_and_variable_vip_reads():
    """EXIT STATUS holds every error kind's code and matches docs/errors.md; ENVIRONMENT names every VIP_ variable
    the code reads."""
    import vipcli_model.errors as errors
    from vipcli.manpages import ENVIRONMENT, EXIT_STATUS

    codes = {code for code, _ in EXIT_STATUS}
    kinds = {
        str(kind.exit_code)
        for kind in vars(errors).values()
        if isinstance(kind, type) and issubclass(kind, errors.VipError)
    }
    assert kinds | {"0", "1", "2", "70", "130"} == codes
    documented = set(re.findall(r"^\| (\d+) \|", (REPO / "docs" / "errors.md").read_text(encoding="utf-8"), re.M))
    assert documented == codes
    read = set()
    for package in ("vipcli", "vipcli_model"):
        for module in (REPO / package).rglob("*.py"):
            read |= set(re.findall(r"\b(VIP_[A-Z_]+)\b", module.read_text(encoding="utf-8")))
    listed = {name for names, _ in ENVIRONMENT for name in names.split(", ")}
    assert read <= listed, read - listed
    assert {"HF_HOME", "HF_HUB_OFFLINE", "HF_TOKEN", "HTTPS_PROXY"} <= listed


def _readme_test_command(readme: str) -> str:
    match = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert match, "README lost its marked test command"
    return match.group(1)


def _run_ci(tmp_path, readme: str) -> tuple[subprocess.CompletedProcess, Path]:
    """.ci/run in a copy of the repository whose README is ``readme``, with a ``bash`` on PATH that
    records the command it is given instead of running it."""
    (tmp_path / ".ci").mkdir()
    shutil.copy2(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "README.md").write_text(readme, encoding="utf-8")
    record = tmp_path / "ran.txt"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "bash").write_text(f'#!/bin/sh\nprintf "%s" "$2" > "{record}"\n')
    (fake / "bash").chmod(0o755)
    real_bash = shutil.which("bash")
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([real_bash, str(tmp_path / ".ci" / "run")], capture_output=True, text=True, env=env)
    return result, record


def test_ci_runs_exactly_the_readme_test_command(tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    expected = _readme_test_command(readme)
    result, record = _run_ci(tmp_path, readme)
    assert result.returncode == 0, result.stderr
    assert record.read_text() == expected  # what .ci/run ran is the README's block, byte for byte
    assert f"+ {expected}" in result.stdout


def test_ci_fails_when_the_readme_has_no_test_command(tmp_path):
    result, record = _run_ci(tmp_path, "# vip\n\n```bash\npytest\n```\n")
    assert result.returncode == 1 and "no <!-- test-command --> block" in result.stderr
    assert not record.exists()


def test_outpaint_help_groups_its_options_in_panels(vip_main):
    """~40 options in five groups (Rich panels in a terminal; man pages keep click's plain list)."""
    result = vip_main("outpaint", "--help")
    assert result.returncode == 0
    for panel in ("Geometry", "Prompts", "Generation", "Model and device", "Output"):
        assert f"─ {panel} ─" in result.stdout, panel
    page = (REPO / "man" / "vip-outpaint.1").read_text()
    assert "─" not in page and "--ratio" in page.replace("\\-", "-") and ".SS Geometry" in page


def _build_site(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        cwd=config.parent,
    )


def test_docs_site_builds_with_warnings_as_errors(tmp_path):
    result = _build_site(REPO / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="vipcli_model.outpainting.run.outpaint_images"' in api  # mkdocstrings rendered the references
    assert (tmp_path / "site" / "benchmarks" / "RESULTS" / "index.html").is_file()


def test_docs_site_fails_on_a_broken_anchor(tmp_path):
    """The strict build is what catches stale links: a link to a heading that is not there fails it."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "docs", copy / "docs")
    shutil.copytree(REPO / "benchmarks", copy / "benchmarks", ignore=shutil.ignore_patterns("*.py", "*.json"))
    for name in ("mkdocs.yml", "mkdocs_hooks.py"):
        shutil.copy2(REPO / name, copy / name)
    (copy / "vipcli_model").symlink_to(REPO / "vipcli_model")
    with (copy / "docs" / "speed.md").open("a", encoding="utf-8") as page:
        page.write("\nSee [the cache](models.md#no-such-heading).\n")
    result = _build_site(copy / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-heading" in result.stderr


def test_api_reference_covers_every_public_name():
    """docs/api.md references each export of ``vipcli_model`` where it is defined (the build fails when one moves)."""
    import vipcli_model

    references = set(re.findall(r"^::: ([\w.]+)$", (REPO / "docs" / "api.md").read_text(encoding="utf-8"), re.M))
    exported = {f"{module}.{name}" for name, module in vipcli_model._EXPORTS.items()}
    assert references == exported
