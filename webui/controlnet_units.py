"""The ControlNet units widget: built by one function, used by the ControlNet tab and as the
"ControlNet" accordion of txt2img, img2img and inpaint.

Each unit (sub-tabs "Unit 0/1/2") has its fields keyed by :class:`ControlNetUnit` field names,
a canvas to draw a scribble on (white brush on black; "New canvas" makes a blank one of a chosen
size) or to upload an image into, and a Preview button that runs the preprocessor as a
``controlnet_detect`` job in the one queue (the path of ``POST /controlnet/detect``).

Handlers get the units' components as named inputs (:meth:`UnitsUI.inputs`, keys ``cn{i}_{field}``)
and turn them into typed units with :meth:`UnitsUI.build`; only enabled units are returned (so the
request's, and the infotext's, ``ControlNet N`` counts enabled units: Unit 2 alone is written as
``ControlNet 0`` and reads back into Unit 0), and a bad unit raises :class:`RequestError` naming
the unit as shown and the field. Nothing depends on the order of components.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from modules.infotext import parse_infotext
from modules.schemas import (
    CONTROL_MODES,
    CONTROL_RESIZE_MODES,
    MAX_CONTROLNET_UNITS,
    ControlNetUnit,
    RequestError,
    parse_request,
)
from webui.widgets import LABEL_REFRESH, Fields, given

NO_MODEL = "None"
NO_MODULE = "none"
DETECT_TIMEOUT_S = 600.0
CANVAS_BACKGROUND = (0, 0, 0)
BRUSH_COLORS = ["#ffffff", "#000000"]
# the unit fields the widget edits (the image comes from the canvas); all ControlNetUnit names
UNIT_FIELDS = ("enabled", "module", "model", "weight", "resize_mode", "low_vram", "processor_res", "threshold_a",
               "threshold_b", "guidance_start", "guidance_end", "control_mode", "pixel_perfect")
SLIDER_FIELDS = ("processor_res", "threshold_a", "threshold_b")
IMAGE_KEY = "image"


# ---------------------------------------------------------------------------------------------
# Choices from the backend (models/ControlNet and the preprocessors)


def model_titles(services) -> list[str]:
    """The titles (``name [hash]``) of the ControlNet models in models/ControlNet, rescanned now."""
    return [info.name for info in services.controlnet_infos()]


def model_choices(services) -> list[str]:
    """The Model dropdown's choices: "None", then the installed models."""
    return [NO_MODEL, *model_titles(services)]


def default_model(choices: list[str], current: str | None = None) -> str:
    """The Model dropdown's value: ``current`` while it is a choice other than "None", else the one
    installed model when there is exactly one, else "None"."""
    if current and current != NO_MODEL and current in choices:
        return current
    installed = [choice for choice in choices if choice != NO_MODEL]
    return installed[0] if len(installed) == 1 else NO_MODEL


def module_choices() -> list[str]:
    """The preprocessor names ("none" first when the backend lists it)."""
    from modules.controlnet.preprocessors import list_modules

    return list(list_modules())


def slider_meta(module: str) -> dict[str, dict[str, Any] | None]:
    """``{"processor_res" | "threshold_a" | "threshold_b": gr.Slider arguments, or None when the
    preprocessor does not use it}``, from ``module_defaults(module)["sliders"]`` (the extension's
    ``module_detail``: the resolution slider first when the module has one, then threshold A, B)."""
    from modules.controlnet.preprocessors import module_defaults

    sliders = list(module_defaults(module).get("sliders") or [])
    metas: dict[str, dict[str, Any] | None] = dict.fromkeys(SLIDER_FIELDS)
    if sliders and "resolution" in str(sliders[0].get("name", "")).lower():
        metas["processor_res"] = _meta(sliders.pop(0))
    for name, slider in zip(("threshold_a", "threshold_b"), sliders, strict=False):
        metas[name] = _meta(slider)
    return metas


def _meta(slider: dict[str, Any]) -> dict[str, Any]:
    """gr.Slider arguments from one ``{"name", "value", "min", "max"}`` entry; integral ranges step by 1."""
    low, high, value = slider.get("min", 0), slider.get("max", 255), slider.get("value", 0)
    step = 1 if all(float(v).is_integer() for v in (low, high, value)) else 0.01
    return {"label": slider.get("name"), "minimum": low, "maximum": high, "value": value, "step": step}


def slider_updates(module: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{field: gr.update}`` that shows the preprocessor's sliders with its labels and ranges, hides
    the unused ones (set to -1, "the default", so a request never carries a stale value);
    ``values`` (restored from an infotext) replace the defaults."""
    updates = {}
    for field, meta in slider_meta(module).items():
        if meta is None:
            updates[field] = gr.update(visible=False, minimum=-1, value=-1)
            continue
        update = {**meta, "visible": True}
        if values and values.get(field) is not None:
            update["value"] = values[field]
        updates[field] = gr.update(**update)
    return updates


# ---------------------------------------------------------------------------------------------
# The control image


def brush_size(canvas: int) -> int:
    """A scribble line's width for a canvas side: 1/32 of it (16 px on 512), at least 1."""
    return max(1, round(canvas / 32))


def blank_canvas(width: int, height: int) -> dict[str, Any]:
    """An ImageEditor value: a black background of ``width`` x ``height`` and one empty layer to draw on."""
    size = (int(width), int(height))
    background = Image.new("RGB", size, CANVAS_BACKGROUND)
    return {"background": background, "layers": [Image.new("RGBA", size, (0, 0, 0, 0))], "composite": background}


def control_image(editor: Any) -> Image.Image | None:
    """The control image of an ImageEditor value: what is shown (background and strokes), flattened
    on black, as RGB; None when there is nothing (no value, or one uniform colour: nothing drawn
    on a blank canvas)."""
    if not editor:
        return None
    if isinstance(editor, Image.Image):
        image = editor
    else:
        image = editor.get("composite") or editor.get("background")
        if image is None:
            return None
    rgba = image.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (*CANVAS_BACKGROUND, 255)), rgba).convert("RGB")
    pixels = np.asarray(flat)
    if pixels.size == 0 or pixels.min() == pixels.max():
        return None
    return flat


# ---------------------------------------------------------------------------------------------
# Values -> units


def build_unit(index: int, values: dict[str, Any], image: Image.Image | None, image_optional: bool,
               model_titles: list[str] | None = None) -> ControlNetUnit | None:
    """The typed unit from one unit's ``{field: value}``; None when it is not enabled.

    ``image_optional``: a unit without its own image uses the request's init image (img2img);
    elsewhere it is an error. ``model_titles``: the installed models; the unit's model must be one
    of them (None: not checked here). Errors are RequestErrors ``"ControlNet unit i: field: ..."``
    naming the unit as the UI shows it.
    """
    if not values.get("enabled"):
        return None
    where = f"ControlNet unit {index}"
    if image is None and not image_optional:
        raise RequestError(f"{where}: image: no control image; draw on the canvas (white on black) or upload an image")
    model = values.get("model")
    if not model or model == NO_MODEL:
        raise RequestError(f"{where}: model: no ControlNet model chosen; pick one from models/ControlNet "
                           f"(press {LABEL_REFRESH} after adding files)")
    if model_titles is not None and model not in model_titles:
        choices = ", ".join(model_titles) or "none installed (put ControlNet models in models/ControlNet)"
        raise RequestError(f"{where}: model: {model!r} is not in models/ControlNet; choose one of: {choices}")
    data = given({name: values.get(name) for name in UNIT_FIELDS})
    data["image"] = image
    try:
        unit = parse_request(ControlNetUnit, data)
        check_preprocessor(unit)
    except RequestError as err:
        raise RequestError(f"{where}: {err}") from None
    return unit


def check_preprocessor(unit: ControlNetUnit) -> None:
    """A known preprocessor with thresholds in its ranges; RequestError naming the unit's field."""
    from modules.controlnet.preprocessors import check_params

    try:
        check_params(unit.module, unit.processor_res, unit.threshold_a, unit.threshold_b)
    except RequestError as err:
        field = getattr(err, "field", None)
        text = str(err)
        raise RequestError("processor_res" + text.removeprefix("resolution") if field == "resolution" else text) from None


# ---------------------------------------------------------------------------------------------
# The widget


@dataclass
class UnitUI:
    """One unit's components; ``fields`` maps ControlNetUnit field names to components."""

    index: int
    fields: Fields
    image: gr.ImageEditor
    canvas_width: gr.Slider
    canvas_height: gr.Slider
    new_canvas: gr.Button
    refresh: gr.Button
    preview: gr.Button
    detected: gr.Image
    message: gr.HTML

    def inputs(self) -> Fields:
        """``{cn{i}_{field}: component}``, the canvas under ``cn{i}_image``."""
        return {unit_key(self.index, name): comp for name, comp in {**self.fields, IMAGE_KEY: self.image}.items()}


def unit_key(index: int, name: str) -> str:
    return f"cn{index}_{name}"


@dataclass
class UnitsUI:
    """The units widget of one tab. ``image_optional``: units may leave the image to the init image."""

    prefix: str
    units: list[UnitUI]
    services: Any
    image_optional: bool = False

    def inputs(self) -> Fields:
        """Every unit's components as named handler inputs (see :func:`unit_key`)."""
        named: Fields = {}
        for unit in self.units:
            named.update(unit.inputs())
        return named

    def build(self, values: dict[str, Any]) -> list[ControlNetUnit]:
        """The enabled units, from a handler's named values (which may hold other keys too)."""
        built = []
        titles = None
        for unit in self.units:
            own = {name: values.get(unit_key(unit.index, name)) for name in UNIT_FIELDS}
            if own.get("enabled") and titles is None:
                titles = model_titles(self.services)
            image = control_image(values.get(unit_key(unit.index, IMAGE_KEY)))
            made = build_unit(unit.index, own, image, self.image_optional, titles)
            if made is not None:
                built.append(made)
        return built

    def infotext_outputs(self) -> list:
        """The components an infotext restores (every unit field; never the image)."""
        return [comp for unit in self.units for comp in unit.fields.values()]

    def infotext_updates(self, text: str) -> dict:
        """``{component: update}`` restoring the units an infotext records (``ControlNet 0: "..."``);
        the other units are disabled. Nothing changes when the text has no parameters line."""
        parsed = parse_infotext(text or "")
        if set(parsed) <= {"Prompt", "Negative prompt"}:
            return {}
        try:
            restored = units_from_infotext(parsed)
        except ValueError as err:  # a ControlNet key that does not read back: said, the units stay
            gr.Warning(f"ControlNet units not restored: {err}")
            return {}
        updates: dict = {}
        for unit in self.units:
            values = restored.get(unit.index)
            if values is None:
                updates[unit.fields["enabled"]] = False
                continue
            for name, value in values.items():
                if name not in SLIDER_FIELDS:
                    updates[unit.fields[name]] = value
            try:
                sliders = slider_updates(values["module"], values)
            except RequestError:  # an unknown preprocessor: the values are shown, submitting names the problem
                sliders = {name: gr.update(value=values[name], visible=True) for name in SLIDER_FIELDS}
            updates.update({unit.fields[name]: update for name, update in sliders.items()})
        return updates


def units_from_infotext(parsed: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """``{unit index: {field: value as the widget shows it}}`` for the enabled units of a parsed
    infotext (``ControlNet N`` restores Unit N); a bad ControlNet key raises ValueError."""
    from modules.controlnet.apply import units_from_params

    restored: dict[int, dict[str, Any]] = {}
    for index, unit in enumerate(units_from_params(parsed)):
        if index >= MAX_CONTROLNET_UNITS or not unit.enabled:
            continue
        values = {name: getattr(unit, name) for name in UNIT_FIELDS}
        values["resize_mode"] = CONTROL_RESIZE_MODES[unit.resize_mode]
        values["control_mode"] = CONTROL_MODES[unit.control_mode]
        restored[index] = values
    return restored


def controlnet_units_ui(services, prefix: str, image_optional: bool = False) -> UnitsUI:
    """Build the units (sub-tabs "Unit 0/1/2") in the current Blocks context; elem ids ``{prefix}_cn{i}_*``."""
    models = model_choices(services)
    modules = module_choices()
    size = services.native_size()
    units = []
    with gr.Tabs(elem_id=f"{prefix}_controlnet_units"):
        for index in range(MAX_CONTROLNET_UNITS):
            with gr.Tab(f"Unit {index}", id=f"{prefix}_cn{index}", elem_id=f"{prefix}_cn{index}_tab"):
                units.append(_unit_ui(f"{prefix}_cn{index}", index, models, modules, size))
    return UnitsUI(prefix, units, services, image_optional)


def controlnet_accordion(services, prefix: str, open: bool = False, image_optional: bool = False) -> UnitsUI:
    """The units in a "ControlNet" accordion (as the extension shows them in txt2img/img2img)."""
    with gr.Accordion("ControlNet", open=open, elem_id=f"{prefix}_controlnet"):
        return controlnet_units_ui(services, prefix, image_optional)


def _unit_ui(eid: str, index: int, models: list[str], modules: list[str], size: int) -> UnitUI:
    module = NO_MODULE if NO_MODULE in modules else (modules[0] if modules else None)
    with gr.Row():
        with gr.Column(min_width=200):
            image = gr.ImageEditor(
                value=blank_canvas(size, size), type="pil", format="png", label="Control image (draw or upload)",
                elem_id=f"{eid}_image", sources=["upload", "clipboard"], layers=False, height=320,
                canvas_size=(size, size),
                brush=gr.Brush(colors=BRUSH_COLORS, default_color=BRUSH_COLORS[0], default_size=brush_size(size)),
                eraser=gr.Eraser(),
            )
        with gr.Column(min_width=200):
            detected = gr.Image(label="Preprocessor preview", type="pil", format="png", interactive=False,
                                elem_id=f"{eid}_detected", height=320)
            preview = gr.Button("Preview", elem_id=f"{eid}_preview")
            message = gr.HTML(elem_id=f"{eid}_message")
    with gr.Row():
        canvas_width = gr.Slider(8, 2048, value=size, step=8, label="Canvas width", elem_id=f"{eid}_canvas_width")
        canvas_height = gr.Slider(8, 2048, value=size, step=8, label="Canvas height", elem_id=f"{eid}_canvas_height")
        new_canvas = gr.Button("New canvas", elem_id=f"{eid}_new_canvas", scale=0, min_width=100)
    with gr.Row():
        enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"{eid}_enabled")
        pixel_perfect = gr.Checkbox(label="Pixel perfect", value=False, elem_id=f"{eid}_pixel_perfect")
        low_vram = gr.Checkbox(label="Low VRAM", value=False, elem_id=f"{eid}_low_vram")
    with gr.Row():
        module_dd = gr.Dropdown(modules, value=module, label="Preprocessor", allow_custom_value=True,
                                elem_id=f"{eid}_module")
        model = gr.Dropdown(models, value=default_model(models), label="Model", allow_custom_value=True, elem_id=f"{eid}_model",
                            scale=2)
        refresh = gr.Button(LABEL_REFRESH, elem_id=f"{eid}_refresh_models", scale=0, min_width=80, size="sm")
    with gr.Row():
        weight = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control weight", elem_id=f"{eid}_weight")
        start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting control step",
                          elem_id=f"{eid}_guidance_start")
        end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending control step", elem_id=f"{eid}_guidance_end")
    sliders = _initial_sliders(module)
    with gr.Row():
        resolution = gr.Slider(**sliders["processor_res"], elem_id=f"{eid}_processor_res")
        threshold_a = gr.Slider(**sliders["threshold_a"], elem_id=f"{eid}_threshold_a")
        threshold_b = gr.Slider(**sliders["threshold_b"], elem_id=f"{eid}_threshold_b")
    control_mode = gr.Radio(list(CONTROL_MODES), value=CONTROL_MODES[0], label="Control mode",
                            elem_id=f"{eid}_control_mode")
    resize_mode = gr.Radio(list(CONTROL_RESIZE_MODES), value=CONTROL_RESIZE_MODES[1], label="Resize mode",
                           elem_id=f"{eid}_resize_mode")
    fields = {"enabled": enabled, "module": module_dd, "model": model, "weight": weight, "resize_mode": resize_mode,
              "low_vram": low_vram, "processor_res": resolution, "threshold_a": threshold_a,
              "threshold_b": threshold_b, "guidance_start": start, "guidance_end": end,
              "control_mode": control_mode, "pixel_perfect": pixel_perfect}
    return UnitUI(index, fields, image, canvas_width, canvas_height, new_canvas, refresh, preview, detected, message)


FALLBACK_SLIDERS = {"processor_res": dict(label="Preprocessor resolution", minimum=64, maximum=2048, value=512, step=1),
                    "threshold_a": dict(label="Threshold A", minimum=-1, maximum=255, value=-1, step=1),
                    "threshold_b": dict(label="Threshold B", minimum=-1, maximum=255, value=-1, step=1)}


def _initial_sliders(module: str | None) -> dict[str, dict[str, Any]]:
    """gr.Slider arguments for the three preprocessor sliders of ``module`` (hidden when unused)."""
    metas = slider_meta(module) if module else {}
    sliders = {}
    for field, fallback in FALLBACK_SLIDERS.items():
        meta = metas.get(field)
        sliders[field] = {**fallback, **(meta or {}), "visible": meta is not None}
    return sliders


# ---------------------------------------------------------------------------------------------
# Events


def error_html(message: str) -> str:
    return f"<span class='easel-error'>{html.escape(message)}</span>"


def detect(services, values: dict[str, Any], editor: Any, timeout: float = DETECT_TIMEOUT_S) -> tuple[Any, str]:
    """Run the unit's preprocessor on its image as a ``controlnet_detect`` job: (map, message).
    Never raises: problems come back as the message (and a toast), with no map."""
    from modules.controlnet.preprocessors import DetectRequest

    image = control_image(editor)
    if image is None:
        return None, error_html("image: nothing to preview; draw on the canvas or upload an image first")
    try:
        data = given({name: values.get(name) for name in ("module", "processor_res", "threshold_a", "threshold_b")})
        request = parse_request(DetectRequest, {**data, "images": [image], "device": services.runtime.device})
        request.check()
        maps = services.submit("controlnet_detect", request).wait(timeout)
    except Exception as err:  # RequestError, QueueFull, a missing annotator file, ...: shown, never raised
        gr.Warning(str(err))
        return None, error_html(str(err))
    return (maps[0] if maps else None), ""


def bind_units(units: UnitsUI, services) -> None:
    """New canvas, model refresh, preprocessor sliders and Preview, for every unit."""
    for unit in units.units:
        _bind_unit(unit, services)


def _bind_unit(unit: UnitUI, services) -> None:
    fields = unit.fields
    unit.new_canvas.click(blank_canvas, inputs=[unit.canvas_width, unit.canvas_height], outputs=[unit.image],
                          queue=False)

    def refresh(current: str):
        choices = model_choices(services)
        return gr.update(choices=choices, value=default_model(choices, current))

    unit.refresh.click(refresh, inputs=[fields["model"]], outputs=[fields["model"]], queue=False)

    def on_module(module: str) -> dict:
        try:
            updates = slider_updates(module)
        except RequestError as err:  # an unknown name typed into the dropdown
            return {unit.message: error_html(str(err))}
        return {**{fields[name]: update for name, update in updates.items()}, unit.message: ""}

    fields["module"].input(on_module, inputs=[fields["module"]],
                           outputs=[*(fields[name] for name in SLIDER_FIELDS), unit.message], queue=False)

    named = {**fields, IMAGE_KEY: unit.image}

    def on_preview(data: dict):
        values = {name: data[comp] for name, comp in named.items() if comp in data}
        return detect(services, values, values.pop(IMAGE_KEY))

    unit.preview.click(on_preview, inputs=set(named.values()), outputs=[unit.detected, unit.message],
                       concurrency_limit=None)
