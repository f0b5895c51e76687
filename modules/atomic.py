"""Writing a small text file atomically, also when several processes share the data folder.

The text goes to a temporary file with a unique name beside the target, then replaces it in one
rename: a reader sees the old file or the new one, never half of one, and two writers (Serve
replicas, two Easel processes on one data folder) never rename each other's temporary file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str, newline: str | None = None) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one rename."""
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline=newline) as f:
            f.write(text)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
