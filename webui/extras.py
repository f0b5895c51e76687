"""The Extras tab: upscale one image with the upscaler registry (no diffusion)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from modules import upscalers
from modules.schemas import ExtrasRequest, RequestError, parse_request
from webui import runner
from webui.runner import Batch, Shown
from webui.uploads import clear_non_images
from webui.widgets import Fields, OutputPanel, generate_buttons, given, named_values, output_panel

PREFIX = "extras"
RESIZE_MODES = ("Scale by", "Scale to")


@dataclass
class ExtrasTab:
    fields: Fields
    panel: OutputPanel
    image: Any


def create_ui(services) -> ExtrasTab:
    """Build the tab (call inside a ``gr.Tab``)."""
    names = [u.name for u in upscalers.list_upscalers(services.settings.models_dir, include_latent=False)]
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", format="png", label="Source", elem_id=f"{PREFIX}_image",
                               sources=["upload", "clipboard"], height=400)
            resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], type="index", label="Resize",
                                   elem_id=f"{PREFIX}_resize_mode")
            scale = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label="Resize by", elem_id=f"{PREFIX}_upscaling_resize")
            with gr.Row():
                width = gr.Number(512, precision=0, label="Width", elem_id=f"{PREFIX}_upscaling_resize_w")
                height = gr.Number(512, precision=0, label="Height", elem_id=f"{PREFIX}_upscaling_resize_h")
                crop = gr.Checkbox(True, label="Crop to fit", elem_id=f"{PREFIX}_upscaling_crop")
            with gr.Row():
                up1 = gr.Dropdown(names, value=names[1] if len(names) > 1 else names[0], label="Upscaler 1",
                                  elem_id=f"{PREFIX}_upscaler_1")
                up2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id=f"{PREFIX}_upscaler_2")
                visibility = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Upscaler 2 visibility",
                                       elem_id=f"{PREFIX}_upscaler_2_visibility")
        with gr.Column():
            generate, interrupt, skip = generate_buttons(PREFIX)
            panel = output_panel(PREFIX, generate, interrupt, skip, send_targets=("img2img", "inpaint", "outpaint"))
    fields = {"resize_mode": resize_mode, "upscaling_resize": scale, "upscaling_resize_w": width,
              "upscaling_resize_h": height, "upscaling_crop": crop, "upscaler_1": up1, "upscaler_2": up2,
              "extras_upscaler_2_visibility": visibility}
    return ExtrasTab(fields, panel, image)


def build_request(values: dict[str, Any], image: Image.Image | None) -> ExtrasRequest:
    """The typed extras request from the tab's named values and the source image."""
    if image is None:
        raise RequestError("image: no source image; upload one (or send one from another tab)")
    return parse_request(ExtrasRequest, {**given(values), "image": image.convert("RGB")})


def show_result(results: list[Any]) -> Shown:
    """Extras results: a GenerationResult-like object (images, infotexts) or plain PIL images."""
    shown = Shown([], [], [])
    for result in results:
        images = list(getattr(result, "images", None) or ([result] if isinstance(result, Image.Image) else []))
        infotexts = list(getattr(result, "infotexts", None) or [""] * len(images))
        shown.images.extend(images)
        shown.infotexts.extend(infotexts)
        shown.seeds.extend([-1] * len(images))
    return shown


def bind_events(tab: ExtrasTab, services) -> None:
    """Generate (upscale) and Interrupt."""
    named = {**tab.fields, "_image": tab.image}

    def on_generate(data: dict):
        values = named_values(named, data)

        def batch() -> Batch:
            fields = {k: v for k, v in values.items() if k in tab.fields}
            request = build_request(fields, values["_image"])
            return Batch([(request.mode, request)], show_result)

        yield from runner.stream_jobs(services, tab.panel, batch)

    tab.panel.generate.click(on_generate, inputs=set(named.values()), outputs=tab.panel.job_outputs(),
                             concurrency_limit=None, show_progress="hidden")
    runner.bind_panel(services, tab.panel)
    clear_non_images(tab.image)
