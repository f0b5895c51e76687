"""``/sdapi/v1/options``: Easel's settings under A1111's option names, read and written.

Reading gives every setting (paths as text) plus a few A1111 options clients rely on:
``sd_model_checkpoint`` is the selected checkpoint's A1111 title, ``sd_checkpoint_hash`` its
sha256. Writing validates everything first; one bad value fails the whole update (422, the option
named) and nothing is saved. A valid update is written to ``config.json``, replaces the services'
settings, and a new ``sd_model_checkpoint`` queues a model switch behind the jobs already queued.

The checks are ``modules.settings_update.validate_change``, shared with the Settings tab: the data
and checkpoint folders cannot be changed over HTTP, folders must stay inside the data folder,
numbers must be finite, and nothing is saved that would stop the next start.
"""

import math
from dataclasses import dataclass
from typing import Any

from modules.checkpoints import CheckpointError
from modules.config import Settings, SettingsError, save_settings
from modules.services import Services
from modules.settings_update import validate_change

from .convert import field_error

# A1111 options without an Easel setting: reported with this value; any other value is refused.
FIXED_OPTIONS: dict[str, Any] = {"CLIP_stop_at_last_layers": 1, "samples_format": "png", "enable_pnginfo": True}


@dataclass(frozen=True)
class OptionsUpdate:
    """A validated update, not yet applied."""

    settings: Settings
    updated: list[str]
    ignored: list[str]
    checkpoint: str | None  # registry name to switch to, or None


def read_options(services: Services) -> dict[str, Any]:
    """Every option, A1111 names, JSON-ready."""
    settings = services.settings
    options = {k: v for k, v in FIXED_OPTIONS.items() if k not in Settings.model_fields}
    options.update(settings.model_dump(mode="json"))
    options["data_dir"] = str(settings.data_dir)
    try:
        info = services.checkpoints.get(services.selected_checkpoint)
    except CheckpointError:
        options["sd_model_checkpoint"] = None
        options["sd_checkpoint_hash"] = None
    else:
        options["sd_model_checkpoint"] = services.checkpoints.title(info)
        options["sd_checkpoint_hash"] = services.checkpoints.sha256(info)
    return options


def plan_update(services: Services, values: dict[str, Any]) -> OptionsUpdate:
    """Validate ``values`` as a whole (``modules.settings_update``); raise a 422 naming the first bad option."""
    settings = services.settings
    changes: dict[str, Any] = {}
    ignored: list[str] = []
    checkpoint = None
    for key, value in values.items():
        if key == "sd_model_checkpoint":
            if not isinstance(value, str) or not value:
                raise field_error((key,), "must be a checkpoint title, name or short hash (see /sdapi/v1/sd-models)", value)
            try:
                checkpoint = services.checkpoints.get(value).name
            except CheckpointError as err:
                raise field_error((key,), str(err), value) from None
            changes[key] = checkpoint
        elif key in FIXED_OPTIONS and key not in Settings.model_fields:
            if value != FIXED_OPTIONS[key]:
                raise field_error((key,), f"is fixed at {FIXED_OPTIONS[key]!r} in Easel", value)
        elif key == "sd_vae":
            try:
                services.resolve_vae(value if isinstance(value, str) else repr(value))
            except ValueError as err:
                raise field_error((key,), str(err).removeprefix("sd_vae: "), value) from None
            changes[key] = value
        elif key == "sd_checkpoint_hash":
            ignored.append(key)  # derived from sd_model_checkpoint
        elif key in Settings.model_fields:
            changes[key] = value
        else:
            ignored.append(key)
    try:
        new_settings = validate_change(settings, changes, services.access)
    except SettingsError as err:
        field = err.field or "options"
        value = changes.get(field)
        shown = value if not isinstance(value, float) or math.isfinite(value) else str(value)  # JSON has no NaN
        raise field_error((field,), str(err).removeprefix(f"{field}: "), shown) from None
    if checkpoint is not None and checkpoint == services.selected_checkpoint:
        checkpoint = None  # already selected: nothing to switch
    return OptionsUpdate(new_settings, sorted(changes), ignored, checkpoint)


def apply_update(services: Services, update: OptionsUpdate) -> str | None:
    """Save config.json, hand the services the new settings, queue the model switch; return its job id."""
    save_settings(update.settings)
    services.update_settings(update.settings)
    if update.checkpoint is None:
        return None
    return services.select_checkpoint(update.checkpoint).id
