"""``modules.scripts``: A1111's ``Script`` base class and what the loader keeps of each script."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import runtime

logger = logging.getLogger(__name__)


class AlwaysVisible:
    """Return this from ``Script.show`` for a script that runs on every generation (an accordion in A1111)."""


@dataclass
class PostprocessImageArgs:
    image: Any  # PIL image; a script may replace it


@dataclass
class PostprocessBatchListArgs:
    images: list[Any]


class Script:
    """A1111's script: ``title``, ``show``, ``ui`` and the processing callbacks (all optional but ``title``)."""

    filename: str | None = None
    args_from: int | None = None
    args_to: int | None = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    group = None
    infotext_fields: list | None = None
    paste_field_names: list | None = None
    section: str | None = None

    def title(self) -> str:
        raise NotImplementedError("a Script must define title()")

    def ui(self, is_img2img: bool) -> list:
        return []

    def show(self, is_img2img: bool) -> Any:
        return True

    def run(self, p, *args):  # noqa: ANN001, ANN201 - A1111's signature
        return None

    def setup(self, p, *args) -> None:  # noqa: ANN001
        pass

    def before_process(self, p, *args) -> None:  # noqa: ANN001
        pass

    def process(self, p, *args) -> None:  # noqa: ANN001
        pass

    def before_process_batch(self, p, *args, **kwargs) -> None:  # noqa: ANN001
        pass

    def process_batch(self, p, *args, **kwargs) -> None:  # noqa: ANN001
        pass

    def postprocess_batch(self, p, *args, **kwargs) -> None:  # noqa: ANN001
        pass

    def postprocess_batch_list(self, p, pp, *args, **kwargs) -> None:  # noqa: ANN001
        pass

    def postprocess_image(self, p, pp, *args) -> None:  # noqa: ANN001
        pass

    def postprocess(self, p, processed, *args) -> None:  # noqa: ANN001
        pass

    def describe(self) -> str:
        return ""

    def elem_id(self, item_id: str) -> str:
        title = "".join(c if c.isalnum() else "_" for c in self.title().lower())
        return f"script_{'img2img' if self.is_img2img else 'txt2img'}_{title}_{item_id}"


def basedir() -> str:
    """The folder of the extension being loaded (A1111's ``scripts.basedir()``); Easel's root otherwise."""
    extension = runtime.current_extension()
    if extension is not None:
        return str(extension.path)
    return str(Path(__file__).resolve().parents[2])


@dataclass
class LoadedScript:
    """One Script instance with where it came from and what it is."""

    script: Script
    owner: str  # the extension's name, or "builtin"
    title: str
    alwayson: bool
    txt2img: bool
    img2img: bool
    _ui: dict[bool, list[dict[str, Any]]] = field(default_factory=dict)

    def ui_args(self, is_img2img: bool) -> list[dict[str, Any]]:
        """What the script's ``ui()`` components take, in order: label, value (the default), minimum,
        maximum, step, choices (A1111's /script-info ``args``)."""
        if is_img2img not in self._ui:
            self._ui[is_img2img] = ui_components(self.script, is_img2img)
        return [dict(arg) for arg in self._ui[is_img2img]]

    def default_args(self, is_img2img: bool) -> list[Any]:
        """The values of the script's ``ui()`` components (A1111's API uses them for args not sent)."""
        return [arg["value"] for arg in self.ui_args(is_img2img)]


def _choices(component: Any) -> list[str] | None:
    choices = getattr(component, "choices", None)
    if not choices:
        return None
    return [str(c[0] if isinstance(c, (tuple, list)) else c) for c in choices]


def ui_components(script: Script, is_img2img: bool) -> list[dict[str, Any]]:
    try:
        import gradio as gr

        with gr.Blocks():
            components = script.ui(is_img2img) or []
        return [{"label": getattr(c, "label", None), "value": getattr(c, "value", None),
                 "minimum": getattr(c, "minimum", None), "maximum": getattr(c, "maximum", None),
                 "step": getattr(c, "step", None), "choices": _choices(c)} for c in components]
    except Exception as err:  # noqa: BLE001 - a script's UI that fails to build gives no defaults
        logger.warning("script %s: ui() failed (%s); its args default to none", script.title(), err)
        return []


def describe_script(script: Script, owner: str) -> LoadedScript:
    title = str(script.title())
    shown = {flag: script.show(flag) for flag in (False, True)}
    alwayson = any(v is AlwaysVisible for v in shown.values())
    script.alwayson = alwayson
    return LoadedScript(script, owner, title, alwayson, bool(shown[False]), bool(shown[True]))


def args_for(entry: LoadedScript, given: list[Any] | None, is_img2img: bool) -> list[Any]:
    """The script's positional args: those given, the rest from its UI's defaults."""
    defaults = entry.default_args(is_img2img)
    given = list(given or [])
    return given + defaults[len(given):]
