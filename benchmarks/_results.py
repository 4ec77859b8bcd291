"""Sections of ``benchmarks/RESULTS.md``: each benchmark script owns one ``## `` section."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
_EMPTY = "# Benchmark results\n\nOne section per benchmark script.\n"


def _split(path: Path, title: str) -> tuple[list[str], list[str] | None, list[str]]:
    """(lines before the section, its body or None if absent, lines after it)."""
    lines = (path.read_text() if path.exists() else _EMPTY).splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == title), None)
    if start is None:
        return lines, None, []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[:start], lines[start + 1 : end], lines[end:]


def read_section(path: Path, title: str) -> list[str] | None:
    """The body lines of section ``title`` of ``path`` (None if it has none)."""
    return _split(path, title)[1]


def replace_section(path: Path, title: str, body: str) -> None:
    """Write ``body`` as section ``title`` of ``path``, keeping every other section."""
    before, _, after = _split(path, title)
    while before and not before[-1].strip():
        before.pop()
    out = "\n".join(before) + "\n\n" + title + "\n\n" + body.strip("\n") + "\n"
    if after:
        out += "\n" + "\n".join(after).rstrip() + "\n"
    path.write_text(out)
