"""``/sdapi/v1/options``: Easel's settings under A1111's option names, read and written.

Reading gives every setting (paths as text) plus A1111's common options: ``sd_model_checkpoint``
is the selected checkpoint's A1111 title, ``sd_checkpoint_hash`` its sha256; the options Easel has
no use for (``A1111_OPTIONS``) come with A1111's defaults. Writing validates everything first; one
bad value fails the whole update (422, the option named) and nothing is saved. A valid update is
written to ``config.json``, replaces the services' settings, and a new ``sd_model_checkpoint``
queues a model switch behind the jobs already queued. The answer is ``null`` as in A1111; the
``Easel-Model-Switch-Job`` and ``Easel-Ignored-Options`` headers say what was queued and ignored.

The checks are ``modules.settings_update.validate_change``, shared with the Settings tab: the data
and checkpoint folders cannot be changed over HTTP, folders must stay inside the data folder,
numbers must be finite, and nothing is saved that would stop the next start.
"""

import math
from dataclasses import dataclass
from typing import Any

from modules.a1111_compat.option_values import check_option
from modules.checkpoints import CheckpointError
from modules.config import Settings, SettingsError, save_settings
from modules.services import Services
from modules.settings_update import validate_change

from .convert import field_error

# A1111's common options that Easel has no setting for, with A1111's defaults: reported by GET so
# clients find the keys they read; a POST of them is accepted and ignored (listed as ignored).
A1111_OPTIONS: dict[str, Any] = {
    "sd_checkpoint_cache": 0, "sd_vae_checkpoint_cache": 0, "sd_vae_overrides_per_model_preferences": True,
    "sd_unet": "Automatic", "sd_hypernetwork": "None", "sd_lora": "None", "sd_checkpoints_keep_in_cpu": True,
    "outdir_samples": "", "outdir_grids": "", "outdir_txt2img_grids": "outputs/txt2img-grids",
    "outdir_img2img_grids": "outputs/img2img-grids", "outdir_save": "log/images",
    "directories_filename_pattern": "[date]", "save_images_add_number": True, "grid_save": True,
    "grid_format": "png", "jpeg_quality": 80, "webp_lossless": False, "export_for_4chan": True,
    "return_grid": True, "return_mask": False, "return_mask_composite": False, "do_not_show_images": False,
    "face_restoration": False, "face_restoration_model": "CodeFormer", "code_former_weight": 0.5,
    "upscaler_for_img2img": None, "img2img_color_correction": False, "img2img_fix_steps": False,
    "img2img_background_color": "#ffffff", "initial_noise_multiplier": 1.0, "eta_ddim": 0.0, "eta_ancestral": 1.0,
    "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0, "k_sched_type": "Automatic", "sigma_min": 0.0,
    "sigma_max": 0.0, "rho": 0.0, "always_discard_next_to_last_sigma": False, "enable_emphasis": True,
    "use_old_emphasis_implementation": False, "comma_padding_backtrack": 20, "upcast_attn": False,
    "randn_source": "GPU", "live_previews_enable": True, "show_progressbar": True, "show_progress_type": "Approx NN",
    "live_preview_content": "Prompt", "add_model_hash_to_info": True, "add_model_name_to_info": True,
    "add_version_to_infotext": True, "hires_fix_use_firstpass_conds": False, "interrogate_keep_models_in_memory": False,
    "quicksettings_list": ["sd_model_checkpoint"], "sdxl_crop_top": 0, "sdxl_crop_left": 0,
}


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
    options = {k: v for k, v in A1111_OPTIONS.items() if k not in Settings.model_fields}
    options.update(settings.model_dump(mode="json"))
    options["data_dir"] = str(settings.data_dir)
    if services.extensions is not None:  # extensions' own options (on_ui_settings), by their names as in A1111
        options.update({o.key: settings.extension_options.get(o.key, o.default) for o in services.extensions.ui_options()})
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
    declared = {o.key: o for o in services.extensions.ui_options()} if services.extensions is not None else {}
    extension_values: dict[str, Any] = {}
    for key, value in values.items():
        if key in declared and key not in Settings.model_fields:
            try:
                extension_values[key] = check_option(declared[key], value)
            except SettingsError as err:
                raise field_error((key,), str(err).removeprefix(f"{key}: "), value) from None
        elif key == "extension_options":
            ignored.append(key)  # set each extension option by its own name (checked above)
        elif key == "sd_model_checkpoint":
            if not isinstance(value, str) or not value:
                raise field_error((key,), "must be a checkpoint title, name or short hash (see /sdapi/v1/sd-models)", value)
            try:
                checkpoint = services.checkpoints.get(value).name
            except CheckpointError as err:
                raise field_error((key,), str(err), value) from None
            changes[key] = checkpoint
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
    if extension_values:
        merged = {**new_settings.extension_options, **extension_values}
        new_settings = new_settings.model_copy(update={"extension_options": merged})
        changes.update(extension_values)
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
