"""A1111's ``images.save_image(image, path, basename, seed, prompt, extension, info, ...)`` for extensions.

It saves through the running app's saver (its hooks included): ``path`` is the folder, the name is
``basename`` then the next free number (``forced_filename`` names the file itself), ``info`` the
infotext. Returns A1111's ``(fullfn, txt_fullfn)`` (the second is always None).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import runtime


def save_image(image: Any, path: Any, basename: str = "", seed: Any = None, prompt: str | None = None,
               extension: str = "png", info: str | None = None, short_filename: bool = False,
               no_prompt: bool = False, grid: bool = False, pnginfo_section_name: str = "parameters", p: Any = None,
               existing_info: Any = None, forced_filename: str | None = None, suffix: str = "",
               save_to_dirs: bool | None = None) -> tuple[str, None]:
    if info is None:
        info = (existing_info or {}).get("parameters", "") if isinstance(existing_info, dict) else (prompt or "")
    services = runtime.bound()
    if services is not None:
        saver = services.saver
        dirs = services.settings.save_to_dirs if save_to_dirs is None else save_to_dirs
    else:
        from modules.images import ImageSaver

        saver, dirs = ImageSaver(), bool(save_to_dirs)
    safe = "".join(c for c in str(basename or "") if c not in "/\\:")
    if forced_filename:
        pattern = "".join(c for c in str(forced_filename) if c not in "/\\:")
    else:
        pattern = f"{safe}-[number]{suffix}" if safe else f"[number]{suffix}"
    seed_value = int(seed) if isinstance(seed, int) else -1
    out = saver.save_image(image, Path(path), seed_value, str(info), pattern=pattern, use_date_subdir=dirs)
    return str(out), None
