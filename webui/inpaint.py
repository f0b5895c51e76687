"""The inpaint tab: paint the mask with a brush on the image (gr.ImageEditor: brush size, eraser),
or upload a mask; mask blur, masked content, inpaint area and padding, invert mask.

The mask is every pixel any brush layer covers (alpha > 0); white = repaint. The brush paints
half-transparent white, sized to the picture (``webui.brushes``). The image is the
editor's background, so brush strokes never leak into the pixels that are kept. ControlNet units
work as in img2img (a unit without its own image uses the image).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from modules.schemas import INPAINTING_FILLS, ControlNetUnit, Img2ImgRequest, RequestError, parse_request
from webui.brushes import MASK_COLOR, bind_brush_fitting, brush_size
from webui.controlnet_units import controlnet_accordion
from webui.img2img import generation_fields
from webui.runner import Batch
from webui.tab import GenerationTab, bind_common
from webui.uploads import clear_non_images
from webui.widgets import given, output_panel, top_row

PREFIX = "inpaint"
MASK_SOURCES = ("Draw mask", "Upload mask")
INPAINT_AREAS = ("Whole picture", "Only masked")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")


def create_ui(services) -> GenerationTab:
    """Build the tab (call inside a ``gr.Tab``)."""
    top = top_row(PREFIX, services)
    native = services.native_size()
    brush = brush_size(native, native)  # resized to each picture put into the editor (webui.brushes)
    with gr.Row():
        with gr.Column():
            source = gr.Radio(list(MASK_SOURCES), value=MASK_SOURCES[0], label="Mask",
                              elem_id=f"{PREFIX}_mask_source")
            editor = gr.ImageEditor(
                type="pil", label="Image (paint the area to repaint)", elem_id=f"{PREFIX}_editor",
                brush=gr.Brush(colors=[MASK_COLOR], default_color=MASK_COLOR, color_mode="fixed",
                               default_size=brush),
                eraser=gr.Eraser(default_size=brush), format="png", layers=False,
                sources=["upload", "clipboard"], height=420,
            )
            mask_upload = gr.Image(type="pil", format="png", image_mode="L", label="Mask (white = repaint)", visible=False,
                                   elem_id=f"{PREFIX}_mask_upload", sources=["upload", "clipboard"])
            options = inpaint_options(PREFIX)
            fields, seed, warning = generation_fields(PREFIX, services, top.prompt.fields, top.styles)
            fields.update(options)
            units = controlnet_accordion(services, PREFIX, image_optional=True)
        with gr.Column():
            panel = output_panel(PREFIX, top.generate, top.interrupt, top.skip)
    extra = {"source": source, "mask_upload": mask_upload, "background": gr.State(None)}
    return GenerationTab(PREFIX, fields, panel, seed, top.prompt.read_params,
                         counters=top.prompt.counters, image=editor, extra=extra, units=units, size_warning=warning)


def inpaint_options(prefix: str) -> dict[str, Any]:
    """Mask blur, masked content, inpaint area, padding and invert, by request field name."""
    with gr.Row():
        blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id=f"{prefix}_mask_blur")
        invert = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], type="index", label="Mask mode",
                          elem_id=f"{prefix}_mask_mode")
    fill = gr.Radio(list(INPAINTING_FILLS), value=INPAINTING_FILLS[1], type="index", label="Masked content",
                    elem_id=f"{prefix}_inpainting_fill")
    with gr.Row():
        area = gr.Radio(list(INPAINT_AREAS), value=INPAINT_AREAS[0], type="index", label="Inpaint area",
                        elem_id=f"{prefix}_inpaint_full_res")
        padding = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                            elem_id=f"{prefix}_inpaint_full_res_padding")
    return {"mask_blur": blur, "inpainting_mask_invert": invert, "inpainting_fill": fill,
            "inpaint_full_res": area, "inpaint_full_res_padding": padding}


def mask_from_layers(value: dict | None) -> Image.Image | None:
    """The painted mask of an ImageEditor value: white where any layer has alpha > 0; None if unpainted."""
    if not value or value.get("background") is None:
        return None
    background = value["background"]
    painted = np.zeros((background.height, background.width), dtype=bool)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        alpha = np.asarray(layer.convert("RGBA").resize(background.size))[..., 3]
        painted |= alpha > 0
    if not painted.any():
        return None
    return Image.fromarray(painted.astype(np.uint8) * 255, mode="L")


def build_request(values: dict[str, Any], editor: dict | None, uploaded_mask: Image.Image | None,
                  mask_source: str, units: list[ControlNetUnit] | None = None) -> Img2ImgRequest:
    """The typed inpaint request: the editor's background as the image, the painted or uploaded mask."""
    if not editor or editor.get("background") is None:
        raise RequestError("init_images: no input image; upload one into the inpaint editor")
    if mask_source == MASK_SOURCES[1]:
        if uploaded_mask is None:
            raise RequestError("mask: 'Upload mask' is chosen but no mask image was uploaded")
        mask = uploaded_mask.convert("L")
    else:
        mask = mask_from_layers(editor)
        if mask is None:
            raise RequestError("mask: nothing is painted; paint the area to repaint with the brush")
    data = given(values)
    data["inpaint_full_res"] = bool(data.get("inpaint_full_res"))
    data["init_images"] = [editor["background"].convert("RGB")]
    data["mask"] = mask
    data["controlnet_units"] = list(units or [])
    return parse_request(Img2ImgRequest, data)


def bind_events(tab: GenerationTab, services) -> None:
    """Generate, mask source switch, Interrupt/Skip, seed and read-parameters buttons."""
    source, mask_upload = tab.extra["source"], tab.extra["mask_upload"]

    def batch(values: dict[str, Any]) -> Batch:
        request = build_request(tab.field_values(values), values["_editor"], values["_mask"], values["_source"],
                                tab.units.build(values))
        return Batch([(request.mode, request)])

    bind_common(tab, services, batch, extra_inputs={"_editor": tab.image, "_mask": mask_upload, "_source": source})
    source.change(lambda s: gr.update(visible=s == MASK_SOURCES[1]), inputs=[source], outputs=[mask_upload],
                  queue=False)
    bind_brush_fitting(tab.image, tab.extra["background"])
    clear_non_images(mask_upload)
