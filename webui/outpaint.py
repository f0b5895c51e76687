"""The outpaint tab: grow the image by some pixels in the chosen directions and paint the new area."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from modules.schemas import OUTPAINT_DIRECTIONS, OUTPAINT_FILLS, OutpaintRequest, RequestError, parse_request
from webui.img2img import generation_fields
from webui.runner import Batch
from webui.tab import GenerationTab, bind_common
from webui.txt2img import style_names
from webui.widgets import generate_buttons, given, output_panel, prompt_row

PREFIX = "outpaint"


def create_ui(services) -> GenerationTab:
    """Build the tab (call inside a ``gr.Tab``)."""
    with gr.Row():
        with gr.Column(scale=6):
            prompt = prompt_row(PREFIX)
        with gr.Column(scale=2):
            generate, interrupt, skip = generate_buttons(PREFIX)
            styles = gr.Dropdown(style_names(services), value=[], multiselect=True, label="Styles",
                                 elem_id=f"{PREFIX}_styles")
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="Image to extend", elem_id=f"{PREFIX}_image",
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
            fields, seed = generation_fields(PREFIX, services, prompt.fields, styles)
            fields.update({"direction": direction, "pixels": pixels, "outpaint_fill": fill, "fill_color": color,
                           "mask_blur": blur})
            fields["denoising_strength"].value = 0.9
        with gr.Column():
            panel = output_panel(PREFIX, generate, interrupt, skip)
    return GenerationTab(PREFIX, fields, panel, seed, prompt.read_params, image=image)


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
        fields = {k: v for k, v in values.items() if k in tab.fields}
        request = build_request(fields, values["_image"])
        return Batch([(request.mode, request)])

    bind_common(tab, services, batch, extra_inputs={"_image": tab.image})
