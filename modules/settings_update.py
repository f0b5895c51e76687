"""A client's change to the settings, checked whole before anything is written.

The Settings tab and ``POST /sdapi/v1/options`` both call ``validate_change``; nothing else
decides whether a client's settings are acceptable. It refuses, naming the setting:

- settings only the operator may change (the data and checkpoint folders);
- wrong types, out-of-range or non-finite numbers (NaN, Infinity: ``Settings`` forbids them);
- folders outside the data folder (``modules.access``);
- a file name pattern that is no file name (path separators, '..', unknown tokens);
- an unknown default sampler;
- a device, precision or attention choice this machine cannot start with: Easel must start
  again with what is saved;
- anything that would not read back from ``config.json`` as the same settings.

Only when every check has passed may the caller write ``config.json`` (``save_settings``, atomic).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from modules.access import CLIENT_FOLDER_SETTINGS, OPERATOR_ONLY_SETTINGS, ClientAccess
from modules.config import Settings, SettingsError, make_settings

STARTUP_SETTINGS = ("device", "precision", "attention")


def _error(field: str, message: str) -> SettingsError:
    return SettingsError(f"{field}: {message}", field=field)


def validate_change(current: Settings, changes: dict[str, Any], access: ClientAccess) -> Settings:
    """The settings with a client's ``changes`` applied, or a SettingsError naming the first bad one."""
    before = current.model_dump(mode="json")
    for name, value in changes.items():
        if name not in Settings.model_fields:
            raise _error(name, "is not a setting")
        if name in OPERATOR_ONLY_SETTINGS and value != before[name]:
            raise _error(name, "cannot be changed by a client; set it on the command line or in config.json")
    try:
        new = Settings.model_validate({**current.model_dump(), **changes})
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "settings"
        raise _error(str(first["loc"][0]) if first["loc"] else field, f"{first['msg']} (got {first.get('input')!r})") from None
    for name in CLIENT_FOLDER_SETTINGS:
        if name in changes:
            problem = access.folder_setting_error(changes[name], before[name], current.data_dir)
            if problem:
                raise _error(name, f"{problem}; got {changes[name]!r}")
    _check_behaviour(new, changes)
    _check_reloads(new)
    return new


def _check_behaviour(new: Settings, changes: dict[str, Any]) -> None:
    """Checks that need Easel's own rules: the file name pattern, the sampler, the device."""
    from modules import samplers
    from modules.images import check_pattern

    if "samples_filename_pattern" in changes:
        try:
            check_pattern(new.samples_filename_pattern)
        except ValueError as err:
            raise _error("samples_filename_pattern", str(err)) from None
    if "default_sampler" in changes:
        try:
            samplers.get_sampler(new.default_sampler)
        except ValueError as err:
            raise _error("default_sampler", str(err)) from None
    if any(name in changes for name in STARTUP_SETTINGS):
        from modules.services import make_runtime

        try:
            make_runtime(new)
        except ValueError as err:
            changed = next(name for name in STARTUP_SETTINGS if name in changes)
            raise _error(changed, f"Easel could not start with this: {err}") from None


def _check_reloads(new: Settings) -> None:
    """What ``save_settings`` writes must load back as the same settings (else the next start fails)."""
    written = json.loads(json.dumps(new.model_dump(mode="json", exclude={"data_dir"}), allow_nan=False))
    try:
        again = make_settings(**written, data_dir=new.data_dir)
    except SettingsError as err:
        raise SettingsError(f"these settings would not load again at the next start: {err}") from None
    if again != new:
        raise SettingsError("these settings would not load again at the next start as they are")
