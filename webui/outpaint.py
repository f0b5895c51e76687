"""The outpaint tab: grow the image by some pixels in the chosen directions and paint the new area."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from modules.schemas import OUTPAINT_DIRECTIONS, OUTPAINT_FILLS, OutpaintRequest, RequestError, parse_request
from webui.img2img import generation_fields
from webui.runner import Batch
from webui.tab import GenerationTab, bind_common
from webui.uploads import clear_non_images
from webui.widgets import given, output_panel, top_row

PREFIX = "outpaint"
# its own defaults, which parameters sent from another tab leave alone (the new canvas sets the size)
SEND_KEEPS = ("denoising_strength", "mask_blur", "width", "height", "direction", "pixels", "outpaint_fill",
              "fill_color")


def create_ui(services) -> GenerationTab:
    """Build the tab (call inside a ``gr.Tab``)."""
    top = top_row(PREFIX, services)
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", format="png", label="Image to extend", elem_id=f"{PREFIX}_image",
                             sources=["upload", "clipboard"], height=400)
            with gr.Row():
                direction = gr.CheckboxGroup(list(OUTPAINT_DIRECTIONS), value=list(OUTPAINT_DIRECTIONS),
                                             label="Outpainting direction", elem_id=f"{PREFIX}_direction")
                pixels = gr.Slider(8, 512, value=64, step=8, label="Pixels to expand", elem_id=f"{PREFIX}_pixels")
            with gr.Row():
                fill = gr.Radio(list(OUTPAINT_FILLS), value=OUTPAINT_FILLS[0], label="Fill new area with",
                                elem_id=f"{PREFIX}_fill")
                color = gr.ColorPicker(value="#808080", label="Solid fill colour", elem_id=f"{PREFIX}_fill_color")
                blur = gr.Slider(0, 64, value=8, step=1, label="Mask blur", elem_id=f"{PREFIX}_mask_blur")
            fields, seed, _ = generation_fields(PREFIX, services, top.prompt.fields, top.styles)
            fields.update({"direction": direction, "pixels": pixels, "outpaint_fill": fill, "fill_color": color,
                           "mask_blur": blur})
            fields["denoising_strength"].value = 0.9
        with gr.Column():
            panel = output_panel(PREFIX, top.generate, top.interrupt, top.skip)
    return GenerationTab(PREFIX, fields, panel, seed, top.prompt.read_params, counters=top.prompt.counters, image=image,
                         send_keeps=SEND_KEEPS)


def build_request(values: dict[str, Any], image: Image.Image | None) -> OutpaintRequest:
    """The typed outpaint request from the tab's named values and the image to extend."""
    if image is None:
        raise RequestError("init_images: no image to extend; upload one (or send one from another tab)")
    data = {k: v for k, v in given(values).items() if k not in ("width", "height")}  # the new canvas sets the size
    data["init_images"] = [image.convert("RGB")]
    return parse_request(OutpaintRequest, data)


def bind_events(tab: GenerationTab, services) -> None:
    """Generate, Interrupt/Skip, seed and read-parameters buttons."""
    def batch(values: dict[str, Any]) -> Batch:
        request = build_request(tab.field_values(values), values["_image"])
        return Batch([(request.mode, request)])

    bind_common(tab, services, batch, extra_inputs={"_image": tab.image})
    clear_non_images(tab.image)
