"""The img2img tab, with a sketch mode (draw over the image in colours; the drawing is the input),
and the ControlNet units (a unit without its own image uses the input image)."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from modules.schemas import RESIZE_MODES, ControlNetUnit, Img2ImgRequest, RequestError, parse_request
from webui import extension_scripts, extra_networks, xyplot
from webui.brushes import bind_brush_fitting, brush_size, editor_update
from webui.controlnet_units import controlnet_accordion
from webui.runner import Batch
from webui.tab import GenerationTab, bind_common
from webui.uploads import clear_non_images, open_upload
from webui.widgets import (
    Fields,
    given,
    output_panel,
    refiner_section,
    sampler_row,
    seed_row,
    size_batch_cfg,
    size_warning_line,
    tab_defaults,
    top_row,
)

PREFIX = "img2img"
MODES = ("img2img", "Sketch")
SKETCH_COLORS = ["#000000", "#ffffff", "#ff0000", "#00a000", "#0000ff", "#ffd000"]


def img2img_options(prefix: str, default_denoise: float = 0.75) -> Fields:
    """Resize mode and denoising strength, shared with the inpaint tab."""
    resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], type="index", label="Resize mode",
                           elem_id=f"{prefix}_resize_mode")
    denoise = gr.Slider(0.0, 1.0, value=default_denoise, step=0.01, label="Denoising strength",
                        elem_id=f"{prefix}_denoising_strength")
    return {"resize_mode": resize_mode, "denoising_strength": denoise}


def generation_fields(prefix: str, services, prompt_fields: Fields, styles) -> tuple[Fields, Any, gr.HTML]:
    """Sampler, size, seed, img2img options and the refiner: the left column under the image. Returns the
    fields, the seed row and the size warning line."""
    defaults = tab_defaults(services)
    fields: Fields = {**prompt_fields, "styles": styles}
    fields.update(img2img_options(prefix))
    fields.update(sampler_row(prefix, defaults["sampler_name"], defaults["steps"]))
    fields.update(size_batch_cfg(prefix, defaults["width"], defaults["height"]))
    warning = size_warning_line(prefix)
    seed = seed_row(prefix)
    fields.update(seed.fields)
    fields.update(refiner_section(prefix, services))
    return fields, seed, warning


def create_ui(services) -> GenerationTab:
    """Build the tab (call inside a ``gr.Tab``)."""
    top = top_row(PREFIX, services)
    cards = extra_networks.create_ui(PREFIX, services)
    native = services.native_size()
    brush = brush_size(native, native)  # resized to each picture put into the editor (webui.brushes)
    with gr.Row():
        with gr.Column():
            mode = gr.Radio(list(MODES), value=MODES[0], label="Mode", elem_id=f"{PREFIX}_mode")
            image = gr.Image(type="pil", format="png", label="Image for img2img", elem_id=f"{PREFIX}_image",
                             sources=["upload", "clipboard"], height=400)
            sketch = gr.ImageEditor(type="pil", label="Sketch", elem_id=f"{PREFIX}_sketch", visible=False,
                                    brush=gr.Brush(colors=SKETCH_COLORS, default_color=SKETCH_COLORS[0],
                                                   default_size=brush),
                                    eraser=gr.Eraser(default_size=brush), format="png",
                                    sources=["upload", "clipboard"], height=400)
            fields, seed, warning = generation_fields(PREFIX, services, top.prompt.fields, top.styles)
            units = controlnet_accordion(services, PREFIX, image_optional=True)
            script = xyplot.create_ui(PREFIX, services)
            ext_scripts = extension_scripts.create_ui(services, True, PREFIX)
        with gr.Column():
            panel = output_panel(PREFIX, top.generate, top.interrupt, top.skip)
    extra = {"mode": mode, "sketch": sketch, "xyplot": script, "sketch_background": gr.State(None),
             "extension_scripts": ext_scripts, "cards": cards}
    return GenerationTab(PREFIX, fields, panel, seed, top.prompt.read_params,
                         counters=top.prompt.counters, image=image, extra=extra, units=units, size_warning=warning)


def sketch_image(value: Any) -> Image.Image | None:
    """The drawing from an ImageEditor value: its composite (background with every layer), as RGB."""
    if not value:
        return None
    composite = value.get("composite") if isinstance(value, dict) else value
    return composite.convert("RGB") if composite is not None else None


def build_request(values: dict[str, Any], init_image: Image.Image | None,
                  units: list[ControlNetUnit] | None = None) -> Img2ImgRequest:
    """The typed request from the tab's named values, the input image and the enabled ControlNet units."""
    if init_image is None:
        raise RequestError("init_images: no input image; upload one (or send one from another tab)")
    data = given(values)
    data["init_images"] = [init_image.convert("RGB")]
    data["controlnet_units"] = list(units or [])
    return parse_request(Img2ImgRequest, data)


def bind_events(tab: GenerationTab, services) -> None:
    """Generate (image or sketch), mode switch, Interrupt/Skip, seed and read-parameters buttons."""
    mode, sketch, script = tab.extra["mode"], tab.extra["sketch"], tab.extra["xyplot"]

    def batch(values: dict[str, Any]) -> Batch:
        init = sketch_image(values["_sketch"]) if values["_mode"] == "Sketch" else values["_image"]
        request = build_request(tab.field_values(values), init, tab.units.build(values))
        script_values = {k: v for k, v in values.items() if k in script}
        if script_values.get("xy_enabled"):
            planned = xyplot.plan_batch("img2img", request, script_values, services)
        else:
            planned = Batch([("img2img", request)])
        return extension_scripts.with_scripts(planned, ext_scripts, values)

    ext_scripts: extension_scripts.ScriptsUi = tab.extra["extension_scripts"]
    extra_inputs = {"_mode": mode, "_image": tab.image, "_sketch": sketch, **script, **ext_scripts.fields}
    bind_common(tab, services, batch, extra_inputs=extra_inputs)
    mode.change(lambda m: (gr.update(visible=m != "Sketch"), gr.update(visible=m == "Sketch")),
                inputs=[mode], outputs=[tab.image, sketch], queue=False)
    # sketching starts from the uploaded image, with the brush sized to it (read raw: see webui.uploads)
    def to_sketch(payload):
        picture = open_upload(payload)
        return editor_update(sketch, picture), picture

    tab.image.change(to_sketch, inputs=[tab.image], outputs=[sketch, tab.extra["sketch_background"]], queue=False,
                     preprocess=False)
    bind_brush_fitting(sketch, tab.extra["sketch_background"])
    clear_non_images(tab.image)
