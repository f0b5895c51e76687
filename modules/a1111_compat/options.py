"""``shared.opts`` and ``OptionInfo``: a view onto the running app's settings.

Easel's own settings are read by name (``opts.samples_format``); extension options (declared with
``opts.add_option`` in an ``on_ui_settings`` callback) live in the setting ``extension_options``
(saved in config.json), falling back to their declared default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import runtime


@dataclass
class OptionInfo:
    """A1111's option declaration; the chained helpers return the option itself."""

    default: Any = None
    label: str = ""
    component: Any = None
    component_args: Any = None
    onchange: Any = None
    section: tuple[str, str] | None = None
    refresh: Any = None
    comment_before: str = ""
    comment_after: str = ""
    infotext: str | None = None
    restrict_api: bool = False
    category_id: str | None = None
    info_text: str = field(default="", repr=False)

    def info(self, text: str) -> OptionInfo:
        self.info_text = text
        return self

    def html(self, text: str) -> OptionInfo:
        self.comment_after += text
        return self

    def link(self, label: str, url: str) -> OptionInfo:
        self.comment_before += f"[{label}]({url})"
        return self

    def needs_reload_ui(self) -> OptionInfo:
        self.comment_after += " (requires Reload UI)"
        return self

    def needs_restart(self) -> OptionInfo:
        self.comment_after += " (requires restart)"
        return self


def options_section(section: tuple[str, str], options: dict[str, OptionInfo]) -> dict[str, OptionInfo]:
    """A1111's ``shared.options_section``: give each option the section."""
    for info in options.values():
        info.section = section
    return options


class Options:
    """``shared.opts``: attribute access to the settings of the bound app (see ``runtime.bind``)."""

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        services = runtime.services()
        declared = services.extensions.options if services.extensions is not None else {}
        values = services.settings.extension_options
        if key in values:
            return values[key]
        if key in declared:
            return declared[key].default
        if key in type(services.settings).model_fields:
            return getattr(services.settings, key)
        raise AttributeError(f"shared.opts has no option {key!r} (Easel settings and extension options only)")

    def __setattr__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        """Change an option for this run (``save`` writes config.json)."""
        services = runtime.services()
        s = services.settings
        if key in type(s).model_fields:
            new = s.model_copy(update={key: value})
        else:
            new = s.model_copy(update={"extension_options": {**s.extension_options, key: value}})
        services.update_settings(new)
        return True

    def get_default(self, key: str) -> Any:
        services = runtime.services()
        info = services.extensions.options.get(key) if services.extensions else None
        return info.default if info else type(services.settings).model_fields[key].default

    def add_option(self, key: str, info: OptionInfo) -> None:
        extension = runtime.current_extension()
        services = runtime.services()
        if services.extensions is None:
            raise RuntimeError("options are added while extensions load")
        services.extensions.add_option(key, info, extension.name if extension else "easel")

    def onchange(self, key: str, func: Any, call: bool = True) -> None:
        """Accepted; Easel does not call option change callbacks."""

    def save(self, filename: str | None = None) -> None:
        from modules.config import save_settings

        save_settings(runtime.services().settings)

    @property
    def data(self) -> dict[str, Any]:
        services = runtime.services()
        values = services.settings.model_dump(exclude={"data_dir", "extension_options"})
        declared = services.extensions.options if services.extensions is not None else {}
        values.update({k: info.default for k, info in declared.items()})
        values.update(services.settings.extension_options)
        return values

    @property
    def data_labels(self) -> dict[str, OptionInfo]:
        services = runtime.services()
        return dict(services.extensions.options) if services.extensions is not None else {}


opts = Options()
