"""A1111's ``modules.script_callbacks`` for extensions: an adapter onto ``Services.hooks``, see
``modules.a1111_compat.callbacks``. Callbacks Easel has no point for are accepted and never called."""

from typing import Any

from modules.a1111_compat.callbacks import *  # noqa: F403 - the names A1111 extensions import
from modules.a1111_compat.callbacks import UNSUPPORTED, unsupported


def __getattr__(name: str) -> Any:
    if name in UNSUPPORTED:
        return unsupported(name)
    raise AttributeError(f"module 'modules.script_callbacks' has no attribute {name!r} (not supported by Easel)")
