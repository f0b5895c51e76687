"""A1111's generation-parameters text ("infotext"): writing it, parsing it, mapping it to fields.

The format, as AUTOMATIC1111 writes it under each image and into the PNG ``parameters`` chunk::

    a castle on a hill, (red:1.2) flags,
    dramatic sky
    Negative prompt: blurry, lowres
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x512

The prompt (any number of lines), then the negative prompt (a line starting ``Negative prompt:``,
possibly continued on further lines), then ONE line of ``Key: value`` pairs joined by ``", "``.
A value holding a comma, colon, quote or newline is written JSON-quoted, so it stays one value.

Parsing follows A1111's rule for telling the parameters line apart from the prompt: the last line
counts as parameters only when at least three ``Key: value`` pairs are found in it. An infotext
with fewer than three parameters therefore reads back as prompt text, exactly as in A1111.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

NEGATIVE_PREFIX = "Negative prompt:"
# A key: a word character, then word characters, spaces, "-" or "/". A value: a JSON string
# (escaped quotes allowed inside) or everything up to the next comma.
_PARAM_RE = re.compile(
    r"""\s*
    (?P<key>\w[\w \-/]+)
    :\s*
    (?P<value>"(?:\\.|[^\\"])+"|[^,]*)
    (?:,|$)""",
    re.VERBOSE,
)
_KEY_RE = re.compile(r"\w[\w \-/]*\w")
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_CONTROLNET_KEY_RE = re.compile(r"^ControlNet \d+$")
_MIN_PARAMS_ON_LAST_LINE = 3
_NEEDS_QUOTES = (",", ":", '"', "\n", "\r")
INPAINTING_FILL_NAMES = ("fill", "original", "latent noise", "latent nothing")


# ---------------------------------------------------------------------------------------------
# Writing


def quote_value(value: str) -> str:
    """Return ``value`` JSON-quoted when it would otherwise not read back as one value."""
    if any(ch in value for ch in _NEEDS_QUOTES) or value != value.strip():
        return json.dumps(value, ensure_ascii=False)
    return value


def format_value(value: Any) -> str:
    """Write one parameter value as A1111 does: integral floats without ``.0`` (7.0 -> ``7``)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def build_infotext(prompt: str, negative_prompt: str, params: dict[str, Any]) -> str:
    """Build A1111's infotext: prompt, ``Negative prompt: ...`` (if any), one line of parameters.

    ``params`` is written in insertion order; None values are skipped. A key that could not be
    read back (it must start with a letter/digit and hold only letters, digits, spaces, ``-``
    and ``/``) raises ValueError.
    """
    pairs = []
    for key, value in params.items():
        if value is None:
            continue
        if not _KEY_RE.fullmatch(key):
            raise ValueError(
                f"infotext key {key!r} cannot be written: a key must start and end with a letter or"
                " digit and contain only letters, digits, spaces, '-' and '/'"
            )
        pairs.append(f"{key}: {quote_value(format_value(value))}")

    lines = [_normalise_newlines(prompt).strip()]
    negative = _normalise_newlines(negative_prompt).strip()
    if negative:
        lines.append(f"{NEGATIVE_PREFIX} {negative}")
    if pairs:
        lines.append(", ".join(pairs))
    return "\n".join(lines).strip()


# ---------------------------------------------------------------------------------------------
# Parsing


def parse_infotext(text: str) -> dict[str, Any]:
    """Parse an infotext into ``{"Prompt": ..., "Negative prompt": ..., "Steps": "20", ...}``.

    Values stay strings (quoted ones are unquoted). A value shaped ``NxM`` is split into
    ``Key-1`` and ``Key-2`` (``Size: 512x512`` -> ``Size-1: "512"``, ``Size-2: "512"``) as A1111
    does. Never raises for any string: text that is not an infotext becomes the prompt.
    """
    result: dict[str, Any] = {"Prompt": "", "Negative prompt": ""}
    if not text:
        return result
    lines = _normalise_newlines(text).strip().split("\n")
    last_line = lines[-1]
    if len(_PARAM_RE.findall(last_line)) >= _MIN_PARAMS_ON_LAST_LINE:
        lines = lines[:-1]
    else:
        last_line = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not negative_lines and line.startswith(NEGATIVE_PREFIX):
            negative_lines.append(line[len(NEGATIVE_PREFIX):].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    result["Prompt"] = "\n".join(prompt_lines)
    result["Negative prompt"] = "\n".join(negative_lines)

    for match in _PARAM_RE.finditer(last_line):
        key, value = match.group("key"), _unquote(match.group("value"))
        size = _SIZE_RE.match(value)
        if size:
            result[f"{key}-1"] = size.group(1)
            result[f"{key}-2"] = size.group(2)
        else:
            result[key] = value
    return result


def _unquote(value: str) -> str:
    """Undo ``quote_value``; a value that is not valid JSON is returned unchanged."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else value


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# ---------------------------------------------------------------------------------------------
# Mapping to request fields


def _to_int(value: Any) -> int:
    """``"20"`` -> 20; also accepts an integral float text such as ``"20.0"``."""
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        number = float(text)
        if not number.is_integer():
            raise ValueError(f"{text!r} is not a whole number") from None
        return int(number)


def _to_float(value: Any) -> float:
    number = float(str(value).strip())
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _to_str(value: Any) -> str:
    return str(value)


def _to_bool(value: Any) -> bool:
    """A1111's ``True``/``False`` (any case; also 1/0)."""
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ValueError(f"{value!r} is not True or False")


def _to_inpainting_fill(value: Any) -> int:
    """A1111's masked-content choice: an index 0-3 or its name (``"latent noise"`` -> 2)."""
    text = str(value).strip()
    if text.lower() in INPAINTING_FILL_NAMES:
        return INPAINTING_FILL_NAMES.index(text.lower())
    index = _to_int(text)
    if not 0 <= index < len(INPAINTING_FILL_NAMES):
        raise ValueError(f"masked content {index} is out of range 0-{len(INPAINTING_FILL_NAMES) - 1}")
    return index


# (infotext key, request field, converter); keys ending -1/-2 come from split "WxH" values.
INFOTEXT_FIELDS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("Prompt", "prompt", _to_str),
    ("Negative prompt", "negative_prompt", _to_str),
    ("Steps", "steps", _to_int),
    ("Sampler", "sampler_name", _to_str),
    ("Schedule type", "scheduler", _to_str),
    ("CFG scale", "cfg_scale", _to_float),
    ("Seed", "seed", _to_int),
    ("Variation seed", "subseed", _to_int),
    ("Variation seed strength", "subseed_strength", _to_float),
    ("Seed resize from-1", "seed_resize_from_w", _to_int),
    ("Seed resize from-2", "seed_resize_from_h", _to_int),
    ("Size-1", "width", _to_int),
    ("Size-2", "height", _to_int),
    ("Denoising strength", "denoising_strength", _to_float),
    ("Clip skip", "clip_skip", _to_int),
    ("Tiling", "tiling", _to_bool),
    ("Noise multiplier", "initial_noise_multiplier", _to_float),
    ("Model", "sd_model_checkpoint", _to_str),
    ("Model hash", "sd_model_hash", _to_str),
    ("VAE", "sd_vae", _to_str),
    ("Hires upscale", "hr_scale", _to_float),
    ("Hires upscaler", "hr_upscaler", _to_str),
    ("Hires steps", "hr_second_pass_steps", _to_int),
    ("Hires resize-1", "hr_resize_x", _to_int),
    ("Hires resize-2", "hr_resize_y", _to_int),
    ("Hires sampler", "hr_sampler_name", _to_str),
    ("Hires schedule type", "hr_scheduler", _to_str),
    ("Hires prompt", "hr_prompt", _to_str),
    ("Hires negative prompt", "hr_negative_prompt", _to_str),
    ("Refiner", "refiner_checkpoint", _to_str),
    ("Refiner switch at", "refiner_switch_at", _to_float),
    ("NGMS", "s_min_uncond", _to_float),
    ("Token merging ratio", "token_merging_ratio", _to_float),
    ("Token merging ratio hr", "token_merging_ratio_hr", _to_float),
    ("Hires checkpoint", "hr_checkpoint_name", _to_str),
    ("Mask blur", "mask_blur", _to_int),
    ("Masked content", "inpainting_fill", _to_inpainting_fill),
)
# Keys A1111 splits as "WxH"; when one is present unsplit its value was not a size.
_SPLIT_KEYS = ("Size", "Seed resize from", "Hires resize")
_HIRES_MARKERS = ("Hires upscale", "Hires resize-1", "Hires upscaler")


def infotext_to_fields(parsed: dict[str, Any]) -> dict[str, Any]:
    """Map ``parse_infotext`` output to request fields with A1111 names and proper types.

    ``ControlNet N`` keys (sd-webui-controlnet's) become ``controlnet_units``: a list of
    ``ControlNetUnit`` without images, unit N at index N (see ``modules.controlnet.params``).
    Only keys present in ``parsed`` produce fields, except ``enable_hr``, which is always set:
    True when the infotext carries hires-fix parameters (``Hires upscale``, ``Hires resize`` or
    ``Hires upscaler``). Legacy sampler names such as ``DPM++ 2M Karras`` are passed on as they
    are (the sampler registry resolves them). Values that do not convert are skipped, and their
    infotext keys listed under ``"_unparsed"`` (always present, possibly empty).
    """
    fields: dict[str, Any] = {}
    unparsed: list[str] = []
    for key, field, convert in INFOTEXT_FIELDS:
        if key not in parsed:
            continue
        try:
            fields[field] = convert(parsed[key])
        except (ValueError, TypeError, OverflowError):
            unparsed.append(key)
    unparsed.extend(key for key in _SPLIT_KEYS if key in parsed)
    soft = _soft_inpainting(parsed, unparsed)
    if soft is not None:
        fields["soft_inpainting"] = soft
    units = _controlnet_units(parsed, unparsed)
    if units:
        fields["controlnet_units"] = units
    fields["enable_hr"] = any(marker in parsed for marker in _HIRES_MARKERS)
    fields["_unparsed"] = unparsed
    return fields


def _soft_inpainting(parsed: dict[str, Any], unparsed: list[str]) -> dict[str, Any] | None:
    """The ``soft_inpainting`` field of A1111's ``Soft inpainting ...`` keys (None when it was off or unreadable)."""
    from modules.soft_inpainting import ENABLED_KEY, from_infotext

    try:
        return from_infotext(parsed)
    except ValueError:
        unparsed.append(ENABLED_KEY)
        return None


def _controlnet_units(parsed: dict[str, Any], unparsed: list[str]) -> list[Any]:
    """The ControlNet units of the ``ControlNet N`` keys; keys whose value does not read go to ``unparsed``."""
    keys = [key for key in parsed if _CONTROLNET_KEY_RE.match(key)]
    if not keys:
        return []
    from modules.controlnet.params import units_from_params

    readable = {}
    for key in keys:
        try:
            units_from_params({key: parsed[key]})
        except ValueError:
            unparsed.append(key)
        else:
            readable[key] = parsed[key]
    return units_from_params(readable)
