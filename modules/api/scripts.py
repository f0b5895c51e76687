"""A1111 scripts over HTTP: ``script_name`` + positional ``script_args`` turned into Easel's typed jobs.

Two scripts are served, the way A1111 clients call them:

- **outpainting mk2** (img2img). A1111's args: ``[info, pixels, mask_blur, direction, noise_q,
  color_variation]`` (``info`` is the script's HTML note, ignored). They become one
  ``OutpaintRequest`` (pixels, direction, mask_blur; the new area is filled with noise, which is
  what mk2 does; ``noise_q`` and ``color_variation`` tune A1111's own noise and are ignored).
  As in A1111 the request's mask, inpaint_full_res and inpainting_fill are replaced
  ("original" fill, whole picture).
- **x/y/z plot** (txt2img and img2img). A1111's args: ``[x_type, x_values, x_values_dropdown,
  y_type, y_values, y_values_dropdown, z_type, z_values, z_values_dropdown, ...]``; the rest
  (legend, margins, ...) is ignored. An axis type is A1111's index into its axis list for that
  tab, or an axis label. The grid is planned by the web UI's X/Y plot (``webui.xyplot``), so
  the API and the UI make the same grid; Easel has no Z axis (``z_type`` must be Nothing).

Any other name is a 422 listing the scripts that exist; unsupported axes and malformed args are
422s naming ``script_args[i]``.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from pydantic import BaseModel

from modules import xyplot
from modules.schemas import OUTPAINT_DIRECTIONS, RequestError

from .convert import build_core_request, check_no_alwayson, field_error

OUTPAINTING = "outpainting mk2"
XYZ_PLOT = "x/y/z plot"
SCRIPTS: dict[str, tuple[str, ...]] = {"txt2img": (XYZ_PLOT,), "img2img": (OUTPAINTING, XYZ_PLOT)}

# A1111's outpainting mk2 defaults, by position in script_args (index 0 is the script's HTML note).
OUTPAINT_DEFAULTS: tuple[Any, ...] = (None, 128, 8, list(OUTPAINT_DIRECTIONS), 1.0, 0.05)

# A1111's X/Y/Z axis lists (scripts/xyz_grid.py, v1.x) up to "Denoising": a client sends the
# index of an axis in its tab's list. Only the axes Easel's X/Y plot has are accepted.
A1111_AXES: dict[str, tuple[str, ...]] = {
    "txt2img": ("Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R",
                "Prompt order", "Sampler", "Hires sampler", "Checkpoint name", "Negative Guidance minimum sigma",
                "Sigma Churn", "Sigma min", "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma",
                "Schedule max sigma", "Schedule rho", "Eta", "Clip skip", "Denoising"),
    "img2img": ("Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Image CFG Scale",
                "Prompt S/R", "Prompt order", "Sampler", "Checkpoint name", "Negative Guidance minimum sigma",
                "Sigma Churn", "Sigma min", "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma",
                "Schedule max sigma", "Schedule rho", "Eta", "Clip skip", "Denoising"),
}
# A1111 axis label -> Easel's X/Y plot axis label.
AXIS_LABELS = {"nothing": "Nothing", "seed": "Seed", "steps": "Steps", "cfg scale": "CFG Scale",
               "prompt s/r": "Prompt S/R", "sampler": "Sampler", "checkpoint name": "Checkpoint",
               "checkpoint": "Checkpoint", "schedule type": "Schedule type", "denoising": "Denoising",
               "token merging ratio": "Token merging ratio"}
MAX_GRID_CELLS = 64


def extension_titles(extensions: Any, kind: str, alwayson: bool) -> tuple[str, ...]:
    """Lower-case titles of the loaded extensions' scripts for ``kind`` (always-on or selectable ones)."""
    if extensions is None:
        return ()
    return tuple(s.title.lower() for s in extensions.scripts_for(kind == "img2img") if s.alwayson == alwayson)


def script_of(body: BaseModel, kind: str, extensions: Any = None) -> str | None:
    """The requested built-in script's canonical name (None for none, or for an extension's script:
    ``extension_fields`` carries that one); 422 for scripts that do not exist here."""
    check_no_alwayson(body, extension_titles(extensions, kind, alwayson=True))
    name = getattr(body, "script_name", None)
    if not name:
        return None
    wanted = name.strip().lower()
    if wanted in SCRIPTS.get(kind, ()):
        return wanted
    selectable = (*SCRIPTS.get(kind, ()), *extension_titles(extensions, kind, alwayson=False))
    if wanted in selectable:
        return None
    available = ", ".join(repr(s) for s in selectable) or "none"
    raise field_error(("script_name",), f"script {name!r} not found for {kind}; available: {available}", name)


def extension_fields(body: BaseModel, kind: str, extensions: Any) -> dict[str, Any]:
    """The core request's ``extension_script`` and ``extension_alwayson`` for the body's script fields:
    ``script_name`` naming an extension's script, ``alwayson_scripts`` entries ``{"args": [...]}`` naming
    extensions' always-on scripts (each must be that shape: else a 422 naming ``alwayson_scripts.<title>``)."""
    if extensions is None:
        return {}
    from modules.schemas import ScriptCall

    out: dict[str, Any] = {}
    name = getattr(body, "script_name", None)
    if name and name.strip().lower() not in SCRIPTS.get(kind, ()) \
            and name.strip().lower() in extension_titles(extensions, kind, alwayson=False):
        args = list(getattr(body, "script_args", None) or [])
        out["extension_script"] = ScriptCall(title=name.strip(), args=args)
    alwayson = extension_titles(extensions, kind, alwayson=True)
    given: dict[str, list[Any]] = {}
    for key, value in (getattr(body, "alwayson_scripts", None) or {}).items():
        if str(key).strip().lower() not in alwayson:
            continue
        args = value.get("args", []) if isinstance(value, dict) else None
        if not isinstance(args, list):
            raise field_error(("alwayson_scripts", key), 'must be {"args": [...]}, the script\'s positional args', value)
        given[str(key).strip().lower()] = args
    if given:
        out["extension_alwayson"] = given
    return out


def _arg(args: list[Any], index: int, default: Any) -> Any:
    return args[index] if index < len(args) and args[index] is not None else default


def outpaint_fields(args: list[Any]) -> dict[str, Any]:
    """A1111's outpainting mk2 ``script_args`` as OutpaintRequest fields (validated by the request itself)."""
    direction = _arg(args, 3, OUTPAINT_DEFAULTS[3])
    if isinstance(direction, str):
        direction = [direction]
    return {
        "pixels": _arg(args, 1, OUTPAINT_DEFAULTS[1]),
        "mask_blur": _arg(args, 2, OUTPAINT_DEFAULTS[2]),
        "direction": direction,
        "outpaint_fill": "noise",
        "inpainting_fill": 1,
        "inpaint_full_res": False,
        "mask": None,
    }


def script_loc(index: int) -> tuple[Any, ...]:
    return ("script_args", index)


OUTPAINT_ARG_INDEX = {"pixels": 1, "mask_blur": 2, "direction": 3}


def build_outpaint(body: BaseModel, init_images: list[Any], settings) -> Any:
    """The OutpaintRequest for an img2img body running "outpainting mk2"; bad args are 422s naming script_args[i]."""
    from fastapi.exceptions import RequestValidationError

    from modules.schemas import OutpaintRequest

    args = list(getattr(body, "script_args", []) or [])
    try:
        return build_core_request(OutpaintRequest, body, settings, {"init_images": init_images, **outpaint_fields(args)})
    except RequestValidationError as err:
        errors = []
        for e in err.errors():
            loc = tuple(e["loc"])
            if len(loc) > 1 and loc[1] in OUTPAINT_ARG_INDEX:
                loc = ("body", *script_loc(OUTPAINT_ARG_INDEX[loc[1]]), *loc[2:])
            errors.append({**e, "loc": loc})
        raise RequestValidationError(errors) from None


def axis_label(kind: str, value: Any, index: int) -> str:
    """An A1111 axis (index into its list, or label) -> Easel's X/Y plot axis label; 422 if unsupported."""
    supported = sorted({v for v in AXIS_LABELS.values()})
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise field_error(script_loc(index), "an axis type is A1111's axis index or an axis label", value)
    if isinstance(value, int):
        labels = A1111_AXES[kind]
        if not 0 <= value < len(labels):
            raise field_error(script_loc(index), f"axis index {value} is not one Easel knows; use a label:"
                              f" {', '.join(supported)}", value)
        value = labels[value]
    label = AXIS_LABELS.get(value.strip().lower())
    if label is None:
        raise field_error(script_loc(index), f"axis {value!r} is not available in Easel's X/Y plot; choose one of"
                          f" {', '.join(supported)}", value)
    return label


def axis_values(args: list[Any], text_index: int) -> str:
    """An axis's values as the X/Y plot's comma-separated text: the dropdown list if given, else the text."""
    listed = _arg(args, text_index + 1, None)
    if isinstance(listed, list) and listed:
        out = io.StringIO()
        csv.writer(out).writerow([str(v) for v in listed])
        return out.getvalue().strip()
    text = _arg(args, text_index, "")
    if not isinstance(text, (str, int, float)) or isinstance(text, bool):
        raise field_error(script_loc(text_index), "axis values are comma-separated text", text)
    return str(text)


def xyz_script(kind: str, args: list[Any]) -> dict[str, str]:
    """A1111's x/y/z plot ``script_args`` as the web UI X/Y plot's script fields (``xy_*``)."""
    z_type = axis_label(kind, _arg(args, 6, 0), 6)
    if z_type != "Nothing":
        raise field_error(script_loc(6), "Easel's X/Y plot has no Z axis; use Nothing (0)", args[6])
    return {
        "xy_x_type": axis_label(kind, _arg(args, 0, 0), 0), "xy_x_values": axis_values(args, 1),
        "xy_y_type": axis_label(kind, _arg(args, 3, 0), 3), "xy_y_values": axis_values(args, 4),
    }


def plan_xyz(kind: str, base: Any, args: list[Any], services) -> Any:
    """The grid's jobs and how to show them (a ``modules.batches.Batch``), from the web UI's X/Y plot.

    A bad axis value is a 400 naming it (XYPlotError is a RequestError); more than
    ``MAX_GRID_CELLS`` cells is a 400 too.
    """
    batch = xyplot.plan_batch(kind, base, xyz_script(kind, args), services)
    if len(batch.requests) > MAX_GRID_CELLS:
        raise RequestError(f"x/y/z plot: {len(batch.requests)} cells; at most {MAX_GRID_CELLS} per request")
    return batch
