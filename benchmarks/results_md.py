"""RESULTS.md is one file with a section per benchmark (and per machine where results depend on it)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace the section under ``heading`` (up to the next '## ') with ``body``, or append it; every
    other section stays as it is. ``body`` starts with the heading line. Written to a temporary file and
    renamed, so a kill leaves the old file whole."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == heading), None)
    new = body.rstrip("\n") + "\n"
    if start is None:
        text = text.rstrip("\n") + "\n\n" + new
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        text = "".join(lines[:start]) + new + ("\n" + tail if tail else "")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results-", suffix=".md")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
