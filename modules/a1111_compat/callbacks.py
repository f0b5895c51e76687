"""``modules.script_callbacks``: A1111's ``on_*`` registration functions, as hooks owned by the extension.

Each ``on_X(fn)`` adds an adapter to the bound app's ``HookRegistry`` (``modules.hooks``) under the
extension that is loading, so its errors are recorded under its name and unloading it removes them.
Callbacks Easel has no point for are accepted and never called (``UNSUPPORTED``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from modules.hooks import CFGDenoiserParams, UiTab

from . import runtime

logger = logging.getLogger(__name__)

__all__ = ["CFGDenoiserParams", "ImageSaveParams", "on_app_started", "on_before_image_saved", "on_cfg_denoiser",
           "on_image_saved", "on_infotext_pasted", "on_model_loaded", "on_script_unloaded", "on_ui_settings",
           "on_ui_tabs"]


@dataclass
class ImageSaveParams:
    image: Any
    p: Any = None
    filename: str | None = None
    pnginfo: dict[str, Any] = field(default_factory=dict)


def _owner() -> str:
    extension = runtime.current_extension()
    return extension.name if extension is not None else "easel"


def _add(point: str, fn: Any, adapter: Any) -> None:
    services = runtime.services()
    services.hooks.add(point, adapter, owner=_owner())


def on_app_started(callback: Any, *, name: str | None = None) -> None:
    """``callback(demo, app)`` when the server starts (add FastAPI routes to ``app``)."""
    _add("app_started", callback, lambda e: callback(e.demo, e.app))


def on_ui_tabs(callback: Any, *, name: str | None = None) -> None:
    """``callback()`` returns ``[(blocks, title, elem_id), ...]``: each becomes a tab of the UI."""

    def adapter(event: Any) -> None:
        for item in callback() or []:
            blocks, title, elem_id = item[0], item[1], item[2]
            event.tabs.append(UiTab(str(title), str(elem_id), lambda b=blocks: b))

    _add("ui_built", callback, adapter)


def on_ui_settings(callback: Any, *, name: str | None = None) -> None:
    """``callback()`` declares options with ``shared.opts.add_option``; they appear in the Settings tab."""
    extension = runtime.current_extension()
    services = runtime.services()
    services.extensions.settings_callbacks.append((_owner(), callback, extension))


def on_image_saved(callback: Any, *, name: str | None = None) -> None:
    """``callback(ImageSaveParams)`` after each image is saved (``filename`` is its path)."""

    def adapter(event: Any) -> None:
        callback(ImageSaveParams(event.image, None, str(event.path), {"parameters": event.infotext}))

    _add("image_saved", callback, adapter)


def on_before_image_saved(callback: Any, *, name: str | None = None) -> None:
    """``callback(ImageSaveParams)`` before each save: it may change ``image`` and ``pnginfo["parameters"]``."""

    def adapter(event: Any) -> None:
        params = ImageSaveParams(event.image, None, None, {"parameters": event.infotext})
        callback(params)
        event.image = params.image
        event.infotext = str(params.pnginfo.get("parameters", event.infotext))

    _add("before_image_saved", callback, adapter)


def on_model_loaded(callback: Any, *, name: str | None = None) -> None:
    """``callback(model)`` after a checkpoint is loaded (Easel's LoadedModel; ``.pipe`` is the diffusers pipeline)."""
    _add("model_loaded", callback, lambda e: callback(e.model))


def on_cfg_denoiser(callback: Any, *, name: str | None = None) -> None:
    """``callback(CFGDenoiserParams)`` before each denoiser call; it may replace ``x`` and the conditioning."""
    _add("cfg_denoiser", callback, callback)


def on_infotext_pasted(callback: Any, *, name: str | None = None) -> None:
    """``callback(infotext, params)`` when an infotext is read back (PNG Info, the API's ``infotext`` field)."""
    runtime.services().extensions.infotext_pasted.append((_owner(), callback))


def on_script_unloaded(callback: Any, *, name: str | None = None) -> None:
    """``callback()`` when extensions are unloaded (Reload)."""
    runtime.services().extensions.unloaded_callbacks.append((_owner(), callback))


UNSUPPORTED = ("on_before_reload", "on_before_ui", "on_list_optimizers", "on_list_unets", "on_ui_train_tabs",
               "on_extra_noise", "on_denoiser", "on_denoised", "on_cfg_after_cfg", "on_before_component",
               "on_after_component", "on_image_grid", "on_before_token_counter", "on_after_extra_networks_activate")


def unsupported(name: str) -> Any:
    def register(callback: Any, *, name_: str | None = None, **kwargs: Any) -> None:
        logger.info("extension %s: script_callbacks.%s is not supported by Easel; the callback is never called",
                    _owner(), name)
    return register
