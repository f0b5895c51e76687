"""The PNG Info tab: drop an image, see the generation parameters it carries, send them on."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from modules.images import read_infotext
from modules.infotext import parse_infotext
from webui.uploads import clear_non_images, upload_path

PREFIX = "pnginfo"


@dataclass
class PngInfoTab:
    image: gr.Image
    parameters: gr.Textbox
    table: gr.HTML
    send_txt2img: gr.Button
    send_img2img: gr.Button


def create_ui(services) -> PngInfoTab:
    """Build the tab (call inside a ``gr.Tab``)."""
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="filepath", label="Source", elem_id=f"{PREFIX}_image", sources=["upload", "clipboard"],
                             height=400)
        with gr.Column():
            parameters = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id=f"{PREFIX}_parameters")
            table = gr.HTML(elem_id=f"{PREFIX}_table")
            with gr.Row():
                send_txt2img = gr.Button("Send to txt2img", elem_id=f"{PREFIX}_send_to_txt2img")
                send_img2img = gr.Button("Send to img2img", elem_id=f"{PREFIX}_send_to_img2img")
    return PngInfoTab(image, parameters, table, send_txt2img, send_img2img)


def describe(path: str | None) -> tuple[str, str]:
    """(infotext, HTML table of the parsed parameters) for an image file; a message if it has none."""
    if not path:
        return "", ""
    try:
        text = read_infotext(Path(path))
    except ValueError:
        return "", f"<p class='easel-error'>{html.escape(f'not an image: {Path(path).name}')}</p>"
    if not text:
        return "", "<p>This image carries no generation parameters.</p>"
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in parse_infotext(text).items() if v != "")
    return text, f"<table class='easel-pnginfo'>{rows}</table>"


def bind_events(tab: PngInfoTab, services) -> None:
    """Reading the parameters when an image is dropped (the send buttons are wired by the app)."""
    tab.image.change(lambda payload: describe(upload_path(payload)), inputs=[tab.image],
                     outputs=[tab.parameters, tab.table], queue=False, preprocess=False)  # raw: see webui.uploads
    clear_non_images(tab.image)
