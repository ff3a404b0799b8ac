"""Writing benchmark results into docs/benchmarks.md: each script owns one section (or one part of one).

Used by the scripts in ``simulations/`` and ``benchmarks/``, so that every one of them replaces only
its own text and leaves the rest of the file as it is.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["write_section", "write_part"]


def _block(heading: str, level: str) -> re.Pattern[str]:
    # ``heading`` up to the next heading of the same level (or the end).
    return re.compile(rf"^{re.escape(heading)}\n.*?(?=^{level} |\Z)", re.MULTILINE | re.DOTALL)


def _replace(document: str, heading: str, level: str, text: str) -> str:
    pattern = _block(heading, level)
    if pattern.search(document):
        return pattern.sub(lambda _: text.rstrip("\n") + "\n\n", document, count=1)
    return document.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"


def write_section(doc: Path, text: str) -> None:
    """Put ``text`` (which starts with its ``## Heading`` line) in place of that section of ``doc``, or append it."""
    heading = text.split("\n", 1)[0]
    if not heading.startswith("## "):
        raise ValueError(f"a section starts with a '## ' heading, got {heading!r}")
    doc.parent.mkdir(parents=True, exist_ok=True)
    current = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    doc.write_text(_replace(current, heading, "##", text).rstrip("\n") + "\n", encoding="utf-8")


def write_part(doc: Path, section: str, text: str) -> None:
    """Put ``text`` (which starts with its ``### Heading`` line) in place of that part of ``section``, or add it there."""
    heading = text.split("\n", 1)[0]
    if not heading.startswith("### "):
        raise ValueError(f"a part starts with a '### ' heading, got {heading!r}")
    current = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    match = _block(section, "##").search(current)
    body = match.group(0) if match else f"{section}\n\n"
    body = _replace(body, heading, "###", text)
    if match:
        updated = current[: match.start()] + body.rstrip("\n") + "\n\n" + current[match.end() :]
    else:
        updated = current.rstrip("\n") + "\n\n" + body
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(updated.rstrip("\n") + "\n", encoding="utf-8")
