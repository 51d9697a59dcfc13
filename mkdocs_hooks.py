"""MkDocs hooks: the measured results live in benchmarks/ beside their scripts; the site shows them as pages.

The guide's pages link to them as ``../benchmarks/RESULTS.md`` (a path that works when reading the repository), and
the site serves them under ``benchmarks/``; any other link outside docs/ is still reported as broken.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

BENCHMARKS = Path(__file__).parent / "benchmarks"


def on_files(files, config):
    for path in sorted(BENCHMARKS.rglob("*.md")):
        uri = "benchmarks/" + path.relative_to(BENCHMARKS).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri.startswith("benchmarks/"):
        return markdown
    return markdown.replace("](../benchmarks/", "](benchmarks/")
