"""A1111's built-in always-on scripts in ``alwayson_scripts``: Seed, Sampler, Refiner, Extra options and
Soft Inpainting, with A1111's positional ``args``.

A1111's API skips the setup of Seed, Sampler and Refiner (UI-only there, the body's fields decide);
Easel runs them all: their args fill the request fields the body did not set itself. A field the body
set explicitly wins, and an arg that asked for another value is named in ``info.warnings``. Args
left out or sent as null fill nothing (the script reads its UI defaults for them); a bad arg is a 422
naming ``alwayson_scripts.<title>.args.<N>``.

- **Seed** ``[seed, extra, subseed, subseed_strength, seed_resize_from_w, seed_resize_from_h]``: as
  A1111's ``ScriptSeed.setup``, the variation seed and strength count only with ``extra`` on and a
  strength above 0, the resize only with ``extra`` on and both sides above 0;
- **Sampler** ``[steps, sampler_name, scheduler]`` (the body's ``sampler_index`` counts as its sampler);
- **Refiner** ``[enabled, checkpoint, switch_at]``: on, with a checkpoint and a switch below 1, it sets
  ``refiner_checkpoint`` and ``refiner_switch_at``;
- **Soft Inpainting** (img2img) ``[enabled, schedule bias, preservation strength, transition contrast
  boost, mask influence, difference threshold, difference contrast]``: on, it sets ``soft_inpainting``;
- **Extra options**: its args are the values of the settings A1111's ``extra_options_txt2img`` /
  ``extra_options_img2img`` show in the tab; Easel's tabs show none (those lists are empty, A1111's
  default), so the args set nothing, with a warning (``override_settings`` sets options).
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from modules.schemas import MAX_SEED, SoftInpainting

from .convert import field_error


# Each script's args in A1111's order, titled with its UI labels (``script_info_args``).
class SeedArgs(BaseModel):
    seed: int = Field(-1, ge=-1, le=MAX_SEED, title="Seed")
    extra: bool = Field(False, title="Extra")
    subseed: int = Field(-1, ge=-1, le=MAX_SEED, title="Variation seed")
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False, title="Variation strength")
    seed_resize_from_w: int = Field(0, ge=-1, le=8192, title="Resize seed from width")
    seed_resize_from_h: int = Field(0, ge=-1, le=8192, title="Resize seed from height")


class SamplerArgs(BaseModel):
    steps: int = Field(20, ge=1, le=150, title="Sampling steps")
    sampler_name: str | None = Field(None, title="Sampling method")
    scheduler: str | None = Field(None, title="Schedule type")


class RefinerArgs(BaseModel):
    enabled: bool = Field(False, title="Refiner")
    checkpoint: str | None = Field(None, title="Checkpoint")
    switch_at: float = Field(0.8, ge=0.01, le=1.0, allow_inf_nan=False, title="Switch at")


class SoftInpaintingArgs(SoftInpainting):
    enabled: bool = Field(False, title="Soft inpainting")  # the script's accordion starts closed


def read_args(model: type[BaseModel], args: Any, where: tuple[Any, ...]) -> BaseModel:
    """``args`` (a list in ``model``'s field order) as ``model``; null or left out: the default.
    A wrong type, a value out of range or too many args is a 422 naming ``where``.N."""
    if not isinstance(args, list):
        raise field_error(where, "must be a list of the script's args, in A1111's order", args)
    names = list(model.model_fields)
    if len(args) > len(names):
        raise field_error(where, f"takes at most {len(names)} args ({', '.join(names)}); got {len(args)}", len(args))
    data = {name: value for name, value in zip(names, args, strict=False) if value is not None}
    try:
        return model.model_validate(data)
    except ValidationError as err:
        errors = [{"type": e["type"], "loc": ("body", *where, names.index(e["loc"][0]), *e["loc"][1:]),
                   "msg": e["msg"], "input": e.get("input")} for e in err.errors()]
        raise RequestValidationError(errors) from None


def seed_fills(a: SeedArgs) -> dict[str, tuple[Any, int]]:
    fills: dict[str, tuple[Any, int]] = {"seed": (a.seed, 0)}
    if a.extra and a.subseed_strength > 0:
        fills.update(subseed=(a.subseed, 2), subseed_strength=(a.subseed_strength, 3))
    if a.extra and a.seed_resize_from_w > 0 and a.seed_resize_from_h > 0:
        fills.update(seed_resize_from_w=(a.seed_resize_from_w, 4), seed_resize_from_h=(a.seed_resize_from_h, 5))
    return fills


def sampler_fills(a: SamplerArgs) -> dict[str, tuple[Any, int]]:
    fills: dict[str, tuple[Any, int]] = {"steps": (a.steps, 0)}
    if a.sampler_name:
        fills["sampler_name"] = (a.sampler_name, 1)
    if a.scheduler:
        fills["scheduler"] = (a.scheduler, 2)
    return fills


def refiner_fills(a: RefinerArgs) -> dict[str, tuple[Any, int]]:
    if not a.enabled or a.checkpoint in (None, "", "None") or a.switch_at >= 1.0:
        return {}
    return {"refiner_checkpoint": (a.checkpoint, 1), "refiner_switch_at": (a.switch_at, 2)}


def soft_inpainting_fills(a: SoftInpaintingArgs) -> dict[str, tuple[Any, int]]:
    return {"soft_inpainting": (SoftInpainting(**a.model_dump()), 0)} if a.enabled else {}


# lower-case title -> (args model, the request fields its args fill)
SCRIPTS = {
    "seed": (SeedArgs, seed_fills),
    "sampler": (SamplerArgs, sampler_fills),
    "refiner": (RefinerArgs, refiner_fills),
    "soft inpainting": (SoftInpaintingArgs, soft_inpainting_fills),
}


def script_info_args(name: str) -> list[dict[str, Any]]:
    """A built-in script's args for ``/sdapi/v1/script-info`` (A1111's shape: label, value, minimum, maximum)."""
    if name not in SCRIPTS:
        return []
    model = SCRIPTS[name][0]
    out = []
    for field_name, info in model.model_fields.items():
        bounds = {"minimum": None, "maximum": None}
        for rule in info.metadata:
            if hasattr(rule, "ge"):
                bounds["minimum"] = rule.ge
            if hasattr(rule, "le"):
                bounds["maximum"] = rule.le
        label = info.title or info.description or field_name
        out.append({"label": label, "value": info.default, **bounds})
    return out


def explicit_value(body: Any, name: str) -> tuple[bool, Any]:
    """Whether the body set ``name`` itself, and its value (``sampler_index`` counts for ``sampler_name``)."""
    if name == "sampler_name" and "sampler_name" not in body.model_fields_set:
        if "sampler_index" in body.model_fields_set and body.sampler_index:
            return True, body.sampler_index
    return name in body.model_fields_set, getattr(body, name, None)


def apply_builtin_scripts(body: Any, warnings: list[str]) -> Any:
    """The body with its built-in always-on scripts' args in the fields it did not set (see the module doc)."""
    updates: dict[str, Any] = {}
    for key, script in (getattr(body, "alwayson_scripts", None) or {}).items():
        name = str(key).strip().lower()
        if name not in SCRIPTS and name != "extra options":
            continue
        if not isinstance(script, dict):
            raise field_error(("alwayson_scripts", key), 'must be an object: {"args": [...]}', script)
        args = script.get("args")
        args = [] if args is None else args
        if name == "extra options":
            if isinstance(args, list) and args:
                warnings.append(f"alwayson_scripts.{key}: {len(args)} args set nothing: Easel's tabs show no settings in"
                                " Extra options (A1111's extra_options_txt2img/img2img are empty); use override_settings")
            continue
        model, fills_of = SCRIPTS[name]
        parsed = read_args(model, args, ("alwayson_scripts", key, "args"))
        for field, (value, index) in fills_of(parsed).items():
            if index >= len(args) or args[index] is None:
                continue  # an arg not sent: its UI default fills nothing
            explicit, current = explicit_value(body, field)
            if not explicit:
                updates[field] = value
            elif current != value:
                warnings.append(f"alwayson_scripts.{key}.args.{index}: {_shown(value)} not used: the request's {field}"
                                f" ({_shown(current)}) wins")
    if "sampler_name" in updates:
        updates["sampler_index"] = None
    return body.model_copy(update=updates) if updates else body


def _shown(value: Any) -> str:
    return "on" if isinstance(value, SoftInpainting) else repr(value)
