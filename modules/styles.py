"""A1111 prompt styles: ``styles.csv`` in the data folder, columns ``name,prompt,negative_prompt``.

A style's text is merged into the user's prompt: where it holds ``{prompt}`` the user's prompt
replaces the placeholder, otherwise the style is appended after a comma (A1111's rule). The same
applies to the negative prompt. Styles are applied in the order they are named.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from modules.atomic import write_text_atomic
from modules.schemas import RequestError

STYLES_FILE = "styles.csv"
PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def load_styles(path: Path) -> dict[str, Style]:
    """Read an A1111 ``styles.csv``; a missing file means no styles. Later duplicates win."""
    if not path.is_file():
        return {}
    styles: dict[str, Style] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            name = (row.get("name") or "").strip()
            if name:
                styles[name] = Style(name, row.get("prompt") or "", row.get("negative_prompt") or "")
    return styles


def save_styles(path: Path, styles: list[Style]) -> None:
    """Write styles in A1111's format (atomically: a temporary file, then a rename)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["name", "prompt", "negative_prompt"])
    for s in styles:
        writer.writerow([s.name, s.prompt, s.negative_prompt])
    write_text_atomic(path, out.getvalue(), newline="")


def merge_prompt(style_text: str, prompt: str) -> str:
    """Put ``prompt`` into ``{prompt}``, or append the style after it with ``", "``."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative: str, names: list[str], styles: dict[str, Style]) -> tuple[str, str]:
    """(prompt, negative) with the named styles applied in order; unknown names raise RequestError."""
    unknown = [n for n in names if n not in styles]
    if unknown:
        known = ", ".join(sorted(styles)) or "none (no styles.csv)"
        raise RequestError(f"styles: unknown style {', '.join(map(repr, unknown))}; known: {known}")
    for name in names:
        prompt = merge_prompt(styles[name].prompt, prompt)
        negative = merge_prompt(styles[name].negative_prompt, negative)
    return prompt, negative


def check_style_name(name: str) -> str:
    """The name stripped; an empty one is a ValueError saying so."""
    name = (name or "").strip()
    if not name:
        raise ValueError("style name: empty; give the style a name")
    return name


def put_style(path: Path, style: Style) -> None:
    """Add ``style`` to the styles.csv at ``path``, or replace the one of the same name (in place)."""
    styles = load_styles(path)
    styles[check_style_name(style.name)] = style
    save_styles(path, list(styles.values()))


def delete_style(path: Path, name: str) -> None:
    """Remove the style ``name`` from the styles.csv at ``path``; an unknown name is a ValueError."""
    styles = load_styles(path)
    if name not in styles:
        raise ValueError(f"style {name!r}: no such style; known: {', '.join(sorted(styles)) or 'none'}")
    del styles[name]
    save_styles(path, list(styles.values()))
