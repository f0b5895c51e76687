"""Checking values of extensions' options (``on_ui_settings``) before they are saved in config.json."""

from __future__ import annotations

import math
from typing import Any

from modules.config import SettingsError
from modules.hooks import UiOption

MAX_TEXT = 10_000


def check_option(option: UiOption, value: Any) -> Any:
    """``value`` as the option's type, or SettingsError naming the option and what it takes."""
    key = option.key
    if option.component == "checkbox":
        if not isinstance(value, bool):
            raise SettingsError(f"{key}: must be true or false, got {value!r}", field=key)
        return value
    if option.component in ("number", "slider"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SettingsError(f"{key}: must be a finite number, got {value!r}", field=key)
        if option.minimum is not None and value < option.minimum or option.maximum is not None and value > option.maximum:
            raise SettingsError(f"{key}: {value} is outside {option.minimum}..{option.maximum}", field=key)
        return int(value) if isinstance(option.default, int) and float(value).is_integer() else value
    if option.choices:
        if value not in option.choices:
            raise SettingsError(f"{key}: {value!r} is not one of {', '.join(map(str, option.choices))}", field=key)
        return value
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise SettingsError(f"{key}: must be text of at most {MAX_TEXT} characters", field=key)
    return value


def apply_options(services: Any, values: dict[str, Any], save: bool = True) -> list[str]:
    """Check and store extension option values (setting ``extension_options``); returns the changed keys.

    Unknown keys are a SettingsError naming them; nothing is saved unless every value is good."""
    from modules.config import save_settings

    declared = {o.key: o for o in services.extensions.ui_options()} if services.extensions else {}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise SettingsError(f"{', '.join(unknown)}: not an option of a loaded extension", field=unknown[0])
    checked = {key: check_option(declared[key], value) for key, value in values.items()}
    current = dict(services.settings.extension_options)
    changed = [k for k, v in checked.items() if current.get(k, declared[k].default) != v]
    new = services.settings.model_copy(update={"extension_options": {**current, **checked}})
    if save:
        save_settings(new)
    services.update_settings(new)
    return changed
