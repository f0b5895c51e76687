"""Translation between HTTP bodies and the core's typed requests and results. No generation here.

Every function raises ``RequestValidationError`` (422, the field named in ``detail[].loc``) for a
field that cannot be understood, and ``RequestError`` (400) for a request that is well formed
but cannot run as asked (an unknown sampler, say).
"""

import json
import time
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BaseModel, ValidationError

from modules.config import Settings
from modules.controlnet import preprocessors
from modules.images import BYTES_PER_PIXEL, ImageTooLarge, decode_image, encode_image_base64
from modules.schemas import MAX_CONTROLNET_UNITS, ControlNetUnit, GenerationResult

# A1111 options that a request's override_settings may set, and the request field each becomes
# (in this order: an option whose field an earlier one set is skipped, so token_merging_ratio wins
# over token_merging_ratio_img2img, as in A1111). sd_model_checkpoint stays in override_settings:
# Services.submit reads it from there.
OVERRIDE_FIELDS = {"CLIP_stop_at_last_layers": "clip_skip", "token_merging_ratio": "token_merging_ratio",
                   "token_merging_ratio_hr": "token_merging_ratio_hr"}
IMG2IMG_OVERRIDE_FIELDS = {"token_merging_ratio_img2img": "token_merging_ratio"}  # only where mode is not txt2img
CONTROLNET_SCRIPT = "controlnet"  # sd-webui-controlnet's always-on script name


def field_error(loc: tuple[Any, ...], message: str, value: Any = None) -> RequestValidationError:
    """A 422 error in FastAPI's own shape, naming the field at ``loc`` (under ``body``)."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", *loc), "msg": message, "input": value}])


MIB = 1024 * 1024


@dataclass
class InputBudget:
    """What the input images of one HTTP request may decode to, checked from each header before decoding.

    Each image: at most ``max_pixels`` (setting max_input_pixels). All of them together: at most
    ``max_bytes`` decoded (setting max_queue_mb, all the queue holds; a request beyond it could
    never be queued). Build one per HTTP request with ``InputBudget.of(settings)``.
    """

    max_pixels: int
    max_bytes: int
    used_bytes: int = 0

    @classmethod
    def of(cls, settings: Settings) -> "InputBudget":
        return cls(max_pixels=settings.max_input_pixels, max_bytes=settings.max_queue_mb * MIB)

    def pixels_left(self) -> int:
        """The most pixels the next image may have."""
        return min(self.max_pixels, max(0, self.max_bytes - self.used_bytes) // BYTES_PER_PIXEL)

    def too_large(self, err: ImageTooLarge, field: str) -> ImageTooLarge:
        """The 413 error for an image refused by its header, naming ``field`` and the limit it broke."""
        pixels = err.width * err.height
        if not pixels or pixels > self.max_pixels:
            size = f"{err.width}x{err.height} = {pixels} pixels" if pixels else str(err).removeprefix("decode_image: ")
            message = (f"{field}: the image is {size}; at most {self.max_pixels} pixels (width x height) per image"
                       " (setting max_input_pixels): send a smaller image")
        else:
            message = (f"{field}: the image is {err.width}x{err.height}, {pixels * BYTES_PER_PIXEL // MIB} MiB decoded;"
                       f" with the request's earlier images ({self.used_bytes // MIB} MiB) that is over the"
                       f" {self.max_bytes // MIB} MiB one request's images may hold together (setting max_queue_mb):"
                       " send fewer or smaller images")
        return ImageTooLarge(message, err.width, err.height, err.max_pixels)


def dotted(loc: tuple[Any, ...]) -> str:
    """A field's place as text: ``("init_images", 0)`` -> ``init_images.0``."""
    return ".".join(str(part) for part in loc)


def decode_field(text: str | None, loc: tuple[Any, ...], budget: InputBudget) -> Image.Image:
    """Decode one base64 image field within ``budget``.

    A missing or unreadable image is a 422 naming the field; one over the budget (read from its
    header, before decoding) is ``ImageTooLarge`` (413) naming the field and the setting.
    """
    if not text:
        raise field_error(loc, "an image is required: base64 PNG/JPEG/WebP data or a data:image/...;base64, URL")
    try:
        image = decode_image(text, max_pixels=budget.pixels_left())
    except ImageTooLarge as err:
        raise budget.too_large(err, dotted(loc)) from None
    except ValueError as err:
        raise field_error(loc, str(err).removeprefix("decode_image: "), text[:64]) from None
    budget.used_bytes += image.width * image.height * BYTES_PER_PIXEL
    return image


def check_no_scripts(body: BaseModel) -> None:
    """For routes without scripts: a request that names one is refused, not silently changed."""
    if getattr(body, "script_name", None):
        message = f"script {body.script_name!r} not found; this route has no scripts"
        raise field_error(("script_name",), message, body.script_name)
    check_no_alwayson(body)


# A1111's built-in always-on scripts by tab (lower-case titles), accepted in ``alwayson_scripts`` and run
# by ``builtin_scripts`` (their args fill the fields the body did not set)
BUILTIN_ALWAYSON = {"txt2img": ("extra options", "refiner", "sampler", "seed"),
                    "img2img": ("extra options", "refiner", "sampler", "seed", "soft inpainting")}


def generation_kind(body: BaseModel) -> str | None:
    """"txt2img" or "img2img" for a generation body, None for other bodies."""
    fields = type(body).model_fields
    if "controlnet_units" not in fields:
        return None
    return "img2img" if "init_images" in fields else "txt2img"


def check_no_alwayson(body: BaseModel, extra: tuple[str, ...] = ()) -> None:
    """Always-on scripts other than ControlNet, A1111's built-ins and ``extra`` (the loaded extensions'
    always-on titles, lower-case) on txt2img/img2img bodies are a 422."""
    scripts = getattr(body, "alwayson_scripts", None) or {}
    kind = generation_kind(body)
    known = (CONTROLNET_SCRIPT, *BUILTIN_ALWAYSON[kind], *extra) if kind else ()
    unknown = [name for name in scripts if str(name).strip().lower() not in known]
    if unknown:
        names = ", ".join(map(str, unknown))
        have = f"this route has {', '.join(map(repr, known))}" if kind else "this route has none"
        raise field_error(("alwayson_scripts",), f"always-on script(s) {names} not found; {have}")


def build_core_request(core_cls: type[BaseModel], body: BaseModel, settings: Settings,
                       images: dict[str, Any] | None = None, where: tuple[Any, ...] = ()) -> Any:
    """The core request for an API body: same fields, A1111 override_settings applied, images decoded.

    ``images`` maps image fields to decoded PIL images. A request saves only when it asks to and
    the ``samples_save`` setting (or override) allows it, as in A1111; without ``clip_skip`` (field or
    ``CLIP_stop_at_last_layers`` override) it is the setting ``CLIP_stop_at_last_layers``. ``where`` is the body's
    place in the HTTP body, for the field names of errors.
    """
    data = body.model_dump(include=set(core_cls.model_fields) - {"mode"})
    overrides = dict(getattr(body, "override_settings", {}) or {})
    checkpoint = overrides.get("sd_model_checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise field_error((*where, "override_settings", "sd_model_checkpoint"),
                          "must be a checkpoint title, name or short hash", checkpoint)
    from_overrides = {}
    mode = core_cls.model_fields["mode"].default if "mode" in core_cls.model_fields else None
    options = OVERRIDE_FIELDS if mode in (None, "txt2img") else {**OVERRIDE_FIELDS, **IMG2IMG_OVERRIDE_FIELDS}
    for option, name in options.items():
        if option in overrides and name in core_cls.model_fields and name not in from_overrides:
            data[name] = overrides[option]
            from_overrides[name] = option
    if "save_images" in data:
        data["save_images"] = bool(data["save_images"]) and bool(overrides.get("samples_save", settings.samples_save))
    if "clip_skip" in data and "clip_skip" not in body.model_fields_set and "clip_skip" not in from_overrides:
        data["clip_skip"] = settings.CLIP_stop_at_last_layers  # A1111's option, when the request gives none
    data.update(images or {})
    try:
        return core_cls.model_validate(data)
    except ValidationError as err:
        errors = []
        for e in err.errors():
            loc = tuple(e["loc"])
            if loc and loc[0] in from_overrides:
                loc = ("override_settings", from_overrides[loc[0]], *loc[1:])
            errors.append({"type": e["type"], "loc": ("body", *where, *loc), "msg": e["msg"], "input": e.get("input")})
        raise RequestValidationError(errors) from None


RESPONSE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}  # A1111's samples_format


@dataclass(frozen=True)
class ImageEncoding:
    """How the ``/sdapi/v1`` answers encode images: A1111's ``samples_format`` (png, jpg, webp) and
    ``enable_pnginfo`` (the infotext in the PNG chunk or the EXIF UserComment), from the settings or
    the request's ``override_settings``."""

    format: str = "PNG"
    infotext: bool = True

    @classmethod
    def of(cls, settings: Settings, overrides: dict[str, Any] | None = None) -> "ImageEncoding":
        overrides = overrides or {}
        name = str(overrides.get("samples_format", settings.samples_format)).lower()
        return cls(RESPONSE_FORMATS.get(name, "PNG"), bool(overrides.get("enable_pnginfo", settings.enable_pnginfo)))

    def encode(self, image: Image.Image, infotext: str | None = None) -> str:
        return encode_image_base64(image, self.format, infotext if self.infotext else "")


def encode_images(result: GenerationResult, encoding: ImageEncoding | None = None) -> list[str]:
    """The result's images as base64 (PNG unless ``encoding`` says otherwise), each carrying its infotext."""
    encoding = encoding or ImageEncoding()
    texts = list(result.infotexts) + [None] * (len(result.images) - len(result.infotexts))
    return [encoding.encode(image, text) for image, text in zip(result.images, texts, strict=False)]


def info_dict(result: GenerationResult, request: Any, job_timestamp: float | None = None,
              warnings: list[str] | None = None) -> dict[str, Any]:
    """A1111's ``info`` object: the result's own fields plus the request values A1111 reports, and
    ``warnings``: what Easel changed in the request to run it as A1111 would (``modules.api.lenient``)."""
    denoising = getattr(request, "denoising_strength", None)
    if getattr(request, "mode", "") == "txt2img" and not getattr(request, "enable_hr", False):
        denoising = None  # only the hires pass of txt2img denoises an image
    info: dict[str, Any] = {
        "styles": list(getattr(request, "styles", []) or []),
        "cfg_scale": getattr(request, "cfg_scale", None),
        "steps": getattr(request, "steps", None),
        "batch_size": getattr(request, "batch_size", 1),
        "n_iter": getattr(request, "n_iter", 1),
        "subseed_strength": getattr(request, "subseed_strength", 0),
        "seed_resize_from_w": getattr(request, "seed_resize_from_w", -1),
        "seed_resize_from_h": getattr(request, "seed_resize_from_h", -1),
        "denoising_strength": denoising,
        "clip_skip": getattr(request, "clip_skip", 1),
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "is_using_inpainting_conditioning": False,
        "index_of_first_image": 0,
        "extra_generation_params": {},
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job_timestamp or time.time())),
        "skipped_images": result.skipped,
        "paths": [str(p) for p in result.paths],
    }
    info.update(result.info())
    info["warnings"] = list(warnings or [])
    return info


def info_json(result: GenerationResult, request: Any, job_timestamp: float | None = None,
              warnings: list[str] | None = None) -> str:
    """``info_dict`` as the JSON string A1111's responses carry."""
    return json.dumps(info_dict(result, request, job_timestamp, warnings), default=str)


def parameters_of(body: BaseModel, hide_images: bool = True) -> dict[str, Any]:
    """A1111's ``parameters``: the request as understood; input images (ControlNet units' too) left out unless asked for."""
    params = body.model_dump(mode="json")
    if hide_images and not params.get("include_init_images"):
        for name in ("init_images", "mask", "image", "firstpass_image", "latent_mask"):
            if name in params:
                params[name] = None
        units = [*params.get("controlnet_units", [])]
        for name, script in (params.get("alwayson_scripts") or {}).items():
            if str(name).lower() == CONTROLNET_SCRIPT and isinstance(script, dict) and isinstance(script.get("args"), list):
                script["args"] = [dict(a) if isinstance(a, dict) else a for a in script["args"]]
                units.extend(script["args"])
        for unit in units:
            for name in ("image", "input_image", "mask"):
                if isinstance(unit, dict) and unit.get(name):
                    unit[name] = None
    return params


# ---------------------------------------------------------------------------------------------
# ControlNet units: sd-webui-controlnet's ``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}``

# a drawn mask counts when it is neither all black nor all white (the extension's rule; a canvas
# with nothing drawn can come with a few off-white pixels)
MASK_EMPTY_BELOW, MASK_FULL_ABOVE = 5, 250


def controlnet_units_of(body: BaseModel, budget: InputBudget, where: tuple[Any, ...] = (),
                        warnings: list[str] | None = None) -> list[ControlNetUnit]:
    """The body's ControlNet units, images decoded: from ``alwayson_scripts.controlnet.args`` (the
    extension's units) or from Easel's own ``controlnet_units``, not both.

    An extension unit is an object with its field names, or a positional list in its field order
    (``UNIT_POSITIONS``; ``args`` that start with a boolean are one such unit, flattened, the
    extension's oldest form). A unit without ``enabled`` (or null) is off, as the extension's
    current units default to disabled; ``warnings`` gets a line for each. A unit's ``image`` is
    base64 text (raw or a data URL), ``{"image": b64, "mask": b64}``, or empty/None for the img2img
    init image; ``input_image`` is the extension's old name for it. A mask that holds a drawing (a
    scribble on the extension's canvas) is the map itself, with the preprocessor "none", as the
    extension does. Bad fields, and preprocessors Easel does not run, are 422s naming
    ``alwayson_scripts.controlnet.args.N.field`` (under ``where``, the body's place in the HTTP body).
    Images are decoded within ``budget``.
    """
    scripts = getattr(body, "alwayson_scripts", None) or {}
    key = next((name for name in scripts if str(name).lower() == CONTROLNET_SCRIPT), None)
    own = list(getattr(body, "controlnet_units", None) or [])
    if key is None:
        return [_decoded_unit(u.model_dump(), (*where, "controlnet_units", i), budget) for i, u in enumerate(own)]
    if own:
        raise field_error((*where, "controlnet_units"),
                          "give ControlNet units either here or in alwayson_scripts.controlnet, not both")
    script = scripts[key]
    if not isinstance(script, dict) or not isinstance(script.get("args"), list):
        raise field_error((*where, "alwayson_scripts", key), 'must be {"args": [unit, ...]}, each unit an object with the'
                          " extension's field names (enabled, module, model, weight, image, ...)", script)
    args = script["args"]
    loc = (*where, "alwayson_scripts", key, "args")
    if args and isinstance(args[0], bool):  # one unit, flattened into args (the extension's oldest form)
        args = [args]
    if len(args) > MAX_CONTROLNET_UNITS:
        raise field_error(loc, f"{len(args)} units; at most {MAX_CONTROLNET_UNITS}", len(args))
    units = []
    for i, arg in enumerate(args):
        fields = _unit_fields(arg, (*loc, i))
        if fields.get("enabled") is None:
            fields["enabled"] = False
            if warnings is not None:
                warnings.append(f"alwayson_scripts.{key}.args.{i}: no \"enabled\"; off, as sd-webui-controlnet's units"
                                ' default to disabled (send "enabled": true to use it)')
        units.append(_decoded_unit(fields, (*loc, i), budget))
    return units


# sd-webui-controlnet's ControlNetUnit fields in their order (since 1.1.136, without guess mode): a unit
# sent as a positional list gives them in this order, the ones left out take their defaults
UNIT_POSITIONS = ("enabled", "module", "model", "weight", "image", "resize_mode", "low_vram", "processor_res",
                  "threshold_a", "threshold_b", "guidance_start", "guidance_end", "pixel_perfect", "control_mode",
                  "inpaint_crop_input_image", "hr_option", "save_detected_map", "advanced_weighting")


def _unit_fields(arg: Any, loc: tuple[Any, ...]) -> dict[str, Any]:
    """A unit's fields by name: an object as it is, a positional list in ``UNIT_POSITIONS`` order."""
    if isinstance(arg, dict):
        return dict(arg)
    if isinstance(arg, list) and 0 < len(arg) <= len(UNIT_POSITIONS):
        return dict(zip(UNIT_POSITIONS, arg, strict=False))
    raise field_error(loc, "a unit is an object with the extension's field names (enabled, module, model, weight,"
                      f" image, ...) or a list of at most {len(UNIT_POSITIONS)} values in its field order"
                      f" ({', '.join(UNIT_POSITIONS)})", arg)


# sd-webui-controlnet's old unit keys, read as the new ones (its to_processing_unit's ext_compat_keys)
UNIT_COMPAT_KEYS = {"input_image": "image", "guidance": "guidance_end", "lowvram": "low_vram"}


def _decoded_unit(fields: dict[str, Any], loc: tuple[Any, ...], budget: InputBudget) -> ControlNetUnit:
    """One unit from its JSON fields, its image decoded; 422 naming ``loc.field`` when something is wrong.
    A field sent as null takes its default, as in A1111's API; the extension's old key names
    (``UNIT_COMPAT_KEYS``) are read as the new ones, the later of two for one field winning, as there."""
    data = {UNIT_COMPAT_KEYS.get(name, name): value for name, value in fields.items() if value is not None}
    image = data.get("image")
    mask = data.get("mask")
    if isinstance(image, dict):
        image, mask = image.get("image"), image.get("mask") or mask
        where = (*loc, "image", "image")
    else:
        where = (*loc, "image")
    if isinstance(image, Image.Image):  # already decoded (a core request sent through twice)
        data["image"] = image
    elif not image:
        data["image"] = None
    elif isinstance(image, str):
        data["image"] = decode_field(image, where, budget)
    else:
        raise field_error(where, "must be base64 image data, a data:image/...;base64, URL or"
                          ' {"image": ..., "mask": ...}', str(image)[:64])
    if isinstance(mask, str) and mask:
        drawn = decode_field(mask, (*loc, "mask"), budget).convert("L")
        low, high = drawn.getextrema()
        if not (high <= MASK_EMPTY_BELOW or low >= MASK_FULL_ABOVE):
            data["image"], data["module"] = drawn.convert("RGB"), "none"
    try:
        unit = ControlNetUnit.model_validate(data)
    except ValidationError as err:
        errors = [{"type": e["type"], "loc": ("body", *loc, *e["loc"]), "msg": e["msg"], "input": e.get("input")}
                  for e in err.errors()]
        raise RequestValidationError(errors) from None
    if unit.enabled:
        try:
            preprocessors.get_module(unit.module)
        except preprocessors.PreprocessorError as err:
            raise field_error((*loc, "module"), str(err).split(": ", 1)[-1], unit.module) from None
    return unit

