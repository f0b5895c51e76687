"""ControlNet units in the infotext, as sd-webui-controlnet writes them, and read back.

One key per enabled unit, ``ControlNet N`` (N = the unit's place in the request), whose value is
the unit's settings as ``Key: value`` pairs joined by ``", "``; the whole value is JSON-quoted
by the infotext writer because it holds commas::

    ControlNet 0: "Module: canny, Model: control_sd15_canny [fef5e48e], Weight: 1.0, Resize Mode: Crop and Resize,
    Low Vram: False, Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0,
    Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced"

(one line in a real infotext). ``units_from_params`` turns the parsed keys back into units
(without images), keeping each unit at its index; the slots between are disabled units.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from modules.schemas import CONTROL_MODES, CONTROL_RESIZE_MODES, MAX_CONTROLNET_UNITS, ControlNetUnit

KEY_PREFIX = "ControlNet "
# (display name, unit field), in the extension's order.
FIELDS: tuple[tuple[str, str], ...] = (
    ("Module", "module"),
    ("Model", "model"),
    ("Weight", "weight"),
    ("Resize Mode", "resize_mode"),
    ("Low Vram", "low_vram"),
    ("Processor Res", "processor_res"),
    ("Threshold A", "threshold_a"),
    ("Threshold B", "threshold_b"),
    ("Guidance Start", "guidance_start"),
    ("Guidance End", "guidance_end"),
    ("Pixel Perfect", "pixel_perfect"),
    ("Control Mode", "control_mode"),
)
_BY_NAME = {name.lower(): field for name, field in FIELDS}
_KEY_RE = re.compile(r"^ControlNet (\d+)$")
# A pair starts at the beginning or after ", " followed by a known display name and ": ", so a
# model title holding ", " stays one value.
_SPLIT_RE = re.compile(r", (?=(?:" + "|".join(re.escape(n) for n, _ in FIELDS) + r"): )", re.IGNORECASE)


def unit_text(unit: ControlNetUnit, model_title: str | None = None) -> str:
    """The value of a unit's ``ControlNet N`` key; ``model_title`` replaces the requested model name."""
    values: dict[str, Any] = unit.model_dump(exclude={"image", "enabled"})
    values["model"] = model_title or unit.model
    values["resize_mode"] = CONTROL_RESIZE_MODES[unit.resize_mode]
    values["control_mode"] = CONTROL_MODES[unit.control_mode]
    return ", ".join(f"{name}: {values[field]}" for name, field in FIELDS)


def unit_params(units: list[tuple[int, ControlNetUnit, str | None]]) -> dict[str, str]:
    """Infotext keys for ``(index, unit, model title)`` of the units that ran."""
    return {f"{KEY_PREFIX}{index}": unit_text(unit, title) for index, unit, title in units}


def parse_unit_text(text: str) -> dict[str, str]:
    """``"Module: canny, Model: x, ..."`` -> ``{"module": "canny", "model": "x", ...}``; unknown names are skipped."""
    out: dict[str, str] = {}
    for pair in _SPLIT_RE.split(text.strip()):
        name, sep, value = pair.partition(":")
        field = _BY_NAME.get(name.strip().lower())
        if sep and field:
            out[field] = value.strip()
    return out


def units_from_params(params: dict[str, Any]) -> list[ControlNetUnit]:
    """The units recorded in parsed infotext parameters (``modules.infotext.parse_infotext``), images None.

    Unit N of the infotext comes back at index N; missing indices between are disabled units.
    A key whose value does not validate raises ValueError naming it.
    """
    found: dict[int, ControlNetUnit] = {}
    for key, value in params.items():
        match = _KEY_RE.match(str(key))
        if not match or not isinstance(value, str):
            continue
        index = int(match.group(1))
        if index >= MAX_CONTROLNET_UNITS:
            raise ValueError(f"{key}: at most {MAX_CONTROLNET_UNITS} ControlNet units (0-{MAX_CONTROLNET_UNITS - 1})")
        try:
            found[index] = ControlNetUnit(enabled=True, **parse_unit_text(value))
        except ValidationError as err:
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ValueError(f"{key}: {detail}") from None
    if not found:
        return []
    return [found.get(i, ControlNetUnit(enabled=False)) for i in range(max(found) + 1)]
