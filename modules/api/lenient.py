"""A1111's leniency for ``/sdapi/v1`` bodies: what A1111 accepts and quietly fixes, Easel accepts
too, and says what it changed in the answer (``info.warnings`` of txt2img/img2img, ``html_info``
of extras). Strict checks stay for what A1111 refuses too (wrong types, unknown scripts) and for
Easel's limits (sizes, steps, batch).

- ``null`` in a field means that field's default (``NullMeansDefault``, a base of every body);
- ``infotext``: fills the fields the body did not set, as A1111's ``apply_infotext`` (explicit
  fields win; ``Model``, ``VAE`` and ``Clip skip`` go to ``override_settings`` when not there);
- ``styles`` not in ``styles.csv`` are left out;
- ``override_settings.sd_model_checkpoint`` or ``sd_vae`` that is not installed is left out (the
  job runs on the selected checkpoint / VAE);
- an unknown sampler is the default sampler, an unknown or unsupported schedule type Automatic;
- ``width``/``height`` not a multiple of 8 are floored to the latent grid (A1111 makes a
  ``size // 8`` latent), at least 8: ``info.width``/``info.height`` give the size drawn;
- A1111's built-in always-on scripts (Seed, Sampler, Refiner, Soft Inpainting, Extra options) fill
  the fields the body did not set (``builtin_scripts``; explicit fields win, with a warning);
- ``mask_blur`` sent sets both ``mask_blur_x`` and ``mask_blur_y``, as A1111's setter does;
- A1111 fields Easel does not implement (``IGNORED_FIELDS``) are accepted, and named in the
  warnings when they would have changed the picture;
- extras: ``upscaler_1`` "None" leaves the image as it is; face restoration is noted, not done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError, model_validator

from modules import samplers
from modules.checkpoints import CheckpointError
from modules.infotext import infotext_to_fields, parse_infotext
from modules.schemas import RequestError
from modules.services import Services
from modules.styles import STYLES_FILE, load_styles

from .builtin_scripts import apply_builtin_scripts

LATENT_GRID = 8
# infotext values that are A1111 options: they go to override_settings (option name) unless set there
INFOTEXT_OPTIONS = {"sd_model_checkpoint": "sd_model_checkpoint", "sd_vae": "sd_vae",
                    "clip_skip": "CLIP_stop_at_last_layers"}


class NullMeansDefault(BaseModel):
    """A body base: a field sent as ``null`` takes its default, as in A1111's API (every field Optional),
    except the fields of ``null_kept``, where A1111 keeps the null and it means something else."""

    null_kept: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None or key in cls.null_kept}
        return data


@dataclass
class Lenient:
    """A generation body made runnable the way A1111 would run it."""

    body: Any  # the body with infotext applied, unknown styles and overrides left out
    sizes: dict[str, int] = field(default_factory=dict)  # width/height floored to the latent grid
    warnings: list[str] = field(default_factory=list)


# A1111 fields the bodies accept but Easel does not implement, and why (a value other than the
# default is named in info.warnings; docs/api.md says more)
IGNORED_FIELDS = {
    "restore_faces": "no face restorer is installed",
    "disable_extra_networks": "<lora:...> and embeddings in prompts always apply",
    "firstpass_image": "the hires fix always makes its own first pass",
    "firstphase_width": "A1111's old hires fix is not implemented; use hr_scale or hr_resize_x/y",
    "firstphase_height": "A1111's old hires fix is not implemented; use hr_scale or hr_resize_x/y",
    "image_cfg_scale": "instruct-pix2pix models are not supported",
}


def make_lenient(body: Any, services: Services) -> Lenient:
    """Every A1111 leniency for a txt2img/img2img body, in A1111's order (infotext first)."""
    warnings: list[str] = []
    pasted = services.extensions.pasted if services.extensions is not None else None
    sent = set(body.model_fields_set)
    body = apply_builtin_scripts(body, warnings)  # before the infotext: the scripts' args beat its values
    body = apply_infotext(body, warnings, pasted)
    body = mask_blur_both_ways(body, sent)
    warnings.extend(ignored_field_warnings(body))
    body = drop_unknown_styles(body, services, warnings)
    body = drop_unknown_overrides(body, services, warnings)
    body = sampler_fallback(body, services.settings.default_sampler, warnings)
    return Lenient(body, latent_grid_sizes(body, warnings), warnings)


def apply_infotext(body: Any, warnings: list[str], pasted: Any = None) -> Any:
    """The body with ``infotext``'s parameters in the fields it did not set (A1111's apply_infotext).

    Values that do not fit a field (wrong type, out of range) are left out with a warning.
    ``pasted(text, params)`` (extensions' ``on_infotext_pasted``) may change the parsed parameters first.
    """
    text = getattr(body, "infotext", None)
    if not text:
        return body
    params = parse_infotext(text)
    if pasted is not None:
        pasted(text, params)
    parsed = infotext_to_fields(params)
    unparsed = parsed.pop("_unparsed")
    parsed.pop("controlnet_units", None)  # units need images: not taken from text
    parsed.pop("sd_model_hash", None)
    explicit = set(body.model_fields_set)
    overrides = dict(body.override_settings or {})
    for name, option in INFOTEXT_OPTIONS.items():
        value = parsed.pop(name, None)
        if value is not None and option not in overrides and name not in explicit:
            overrides[option] = value
    fill = {name: value for name, value in parsed.items() if name in type(body).model_fields and name not in explicit}
    if unparsed:
        warnings.append(f"infotext: {', '.join(unparsed)} could not be read; left out")
    data = {**body.model_dump(exclude_unset=True), **fill, "override_settings": overrides}
    try:
        return type(body).model_validate(data)
    except ValidationError as err:
        bad = {str(e["loc"][0]) for e in err.errors() if e["loc"] and str(e["loc"][0]) in fill}
        if not bad:
            raise
        warnings.append(f"infotext: {', '.join(sorted(bad))} did not fit the request; left out")
        return type(body).model_validate({key: value for key, value in data.items() if key not in bad})


def ignored_field_warnings(body: Any) -> list[str]:
    """A warning for each field the body set that Easel does not implement, unless it has no effect
    (None, off or its default)."""
    warnings = []
    for name, reason in IGNORED_FIELDS.items():
        if name not in body.model_fields_set or name not in type(body).model_fields:
            continue
        value = getattr(body, name)
        if value is None or value is False or value == type(body).model_fields[name].default:
            continue
        warnings.append(f"{name}: {value!r} was ignored: {reason} in Easel")
    return warnings


def mask_blur_both_ways(body: Any, sent: set[str]) -> Any:
    """``mask_blur`` sent in the body (``sent``: the fields it set) sets ``mask_blur_x`` and ``mask_blur_y``
    too, as A1111's ``mask_blur`` setter does; without it ``mask_blur_x``/``_y`` blur each way."""
    if "mask_blur" not in sent or "mask_blur_x" not in type(body).model_fields:
        return body
    if body.mask_blur_x is None and body.mask_blur_y is None:
        return body
    return body.model_copy(update={"mask_blur_x": None, "mask_blur_y": None})


def drop_unknown_styles(body: Any, services: Services, warnings: list[str]) -> Any:
    """The body without the styles ``styles.csv`` does not have (A1111 ignores them)."""
    if not body.styles:
        return body
    known = load_styles(services.settings.path(STYLES_FILE))
    unknown = [name for name in body.styles if name not in known]
    if not unknown:
        return body
    have = ", ".join(sorted(known)) or "none (no styles.csv)"
    warnings.append(f"styles: {', '.join(map(repr, unknown))} not found in {STYLES_FILE}; ignored (known: {have})")
    return body.model_copy(update={"styles": [name for name in body.styles if name in known]})


def drop_unknown_overrides(body: Any, services: Services, warnings: list[str]) -> Any:
    """The body without a ``null``, an uninstalled ``sd_model_checkpoint`` or an unknown ``sd_vae`` in
    ``override_settings`` (A1111 goes on with the loaded ones). Checkpoints are scanned again first,
    as A1111 does, so a file copied in since the last scan is found."""
    overrides = {key: value for key, value in (body.override_settings or {}).items() if value is not None}
    checkpoint = overrides.get("sd_model_checkpoint")
    if isinstance(checkpoint, str) and not _checkpoint_known(services, checkpoint):
        del overrides["sd_model_checkpoint"]
        warnings.append(f"override_settings.sd_model_checkpoint: {checkpoint!r} is not installed; ignored, the"
                        " selected checkpoint was used (see /sdapi/v1/sd-models)")
    vae = overrides.get("sd_vae")
    if isinstance(vae, str):
        try:
            services.resolve_vae(vae)
        except RequestError:
            del overrides["sd_vae"]
            warnings.append(f"override_settings.sd_vae: {vae!r} is not in models/VAE; ignored (see /sdapi/v1/sd-vae)")
    if overrides == body.override_settings:
        return body
    return body.model_copy(update={"override_settings": overrides})


def _checkpoint_known(services: Services, query: str) -> bool:
    for attempt in range(2):
        try:
            services.checkpoints.get(query)
            return True
        except CheckpointError:
            if attempt == 0:
                services.checkpoints.refresh()
    return False


def _resolves(sampler: str, scheduler: str | None) -> bool:
    try:
        samplers.resolve(sampler, scheduler)
    except ValueError:
        return False
    return True


def sampler_fallback(body: Any, default_sampler: str, warnings: list[str]) -> Any:
    """The body with an unknown sampler replaced by the default and an unknown or unsupported schedule
    type by Automatic, as A1111 1.10's API does (``get_sampler_and_scheduler``); the hires pass's too."""
    updates: dict[str, Any] = {}
    for sampler_field, scheduler_field, fallback in (("sampler_name", "scheduler", default_sampler),
                                                     ("hr_sampler_name", "hr_scheduler", None)):
        if sampler_field not in type(body).model_fields:
            continue
        name = getattr(body, sampler_field) or (body.sampler_index if sampler_field == "sampler_name" else None)
        if name and not _resolves(name, None):
            shown = f"the default, {fallback!r}" if fallback else "the first pass's"
            warnings.append(f"{sampler_field}: {name!r} is not a sampler; {shown} was used (see /sdapi/v1/samplers)")
            updates[sampler_field] = None
            if sampler_field == "sampler_name":
                updates["sampler_index"] = None
            name = fallback
        scheduler = getattr(body, scheduler_field)
        if name and scheduler and not _resolves(name, scheduler):
            warnings.append(f"{scheduler_field}: {scheduler!r} is unknown or does not go with {name!r}; Automatic"
                            " was used (see /sdapi/v1/schedulers)")
            updates[scheduler_field] = None
    return body.model_copy(update=updates) if updates else body


def latent_grid_sizes(body: Any, warnings: list[str]) -> dict[str, int]:
    """``width``/``height`` floored to a multiple of 8 where they are not one (the size drawn)."""
    sizes: dict[str, int] = {}
    for name in ("width", "height"):
        value = getattr(body, name, None)
        if value is not None and value % LATENT_GRID:
            sizes[name] = max(LATENT_GRID, value // LATENT_GRID * LATENT_GRID)
            warnings.append(f"{name}: {value} is not a multiple of {LATENT_GRID}; drawn at {sizes[name]}"
                            f" (the latent is {name} // {LATENT_GRID}, as in A1111)")
    return sizes


def extras_leniency(body: Any) -> tuple[dict[str, Any], list[str]]:
    """Changes to an extras body's core request, and the warnings that say so (A1111's postprocessing):
    ``upscaler_1`` "None" leaves the image as it is (no resize, no second upscaler); face restoration
    asked for is noted, not done (Easel has no face restorer)."""
    updates: dict[str, Any] = {}
    warnings: list[str] = []
    if str(body.upscaler_1).strip().lower() in ("", "none"):
        updates = {"resize_mode": 0, "upscaling_resize": 1.0, "extras_upscaler_2_visibility": 0.0}
        if body.upscaling_resize != 1.0 or body.resize_mode != 0:
            warnings.append('upscaler_1 is "None": the image is returned at its own size, as A1111 does')
    for name in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(body, name, 0):
            warnings.append(f"{name}: no face restorer is installed in Easel; the faces were not restored")
    return updates, warnings
