"""A1111's ``modules.paths`` for extensions: the running app's folders (``models_path``, ``data_path``,
``script_path``, ``extensions_dir``), read from its settings; see ``modules.a1111_compat``."""

from __future__ import annotations

from typing import Any

from modules.config import ROOT


def __getattr__(name: str) -> Any:
    from modules.a1111_compat import runtime

    if name == "script_path":
        return str(ROOT)
    settings = runtime.services().settings
    if name == "models_path":
        return str(settings.models_dir)
    if name == "data_path":
        return str(settings.data_dir)
    if name == "extensions_dir":
        return str(settings.path(settings.extensions_dir))
    raise AttributeError(f"module 'modules.paths' has no attribute {name!r} (Easel supports: models_path, data_path,"
                         " script_path, extensions_dir)")
