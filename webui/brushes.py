"""Brushes sized to the picture, for the sketch and inpaint editors.

Gradio's ImageEditor draws with a 25 px brush whatever the image (one stroke covers two thirds
of a 64 px picture). Here the brush and eraser start at about 5% of the image's short side (at
least 1 px): at build time from the selected checkpoint's native size, and again whenever a
picture is uploaded or sent into the editor. The inpaint mask is painted semi-transparent, so
the picture stays visible under it, and clearing the editor keeps the picture (only the
strokes go).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gradio as gr
from PIL import Image

BRUSH_FRACTION = 0.05
MASK_COLOR = ("#ffffff", 0.5)  # white at half opacity: the painted area and the picture under it


def brush_size(width: int, height: int) -> int:
    """The brush's size for Gradio, which takes a radius: a stroke about 5% of the short side wide
    (a radius of 2.5%), at least 1 px."""
    return max(1, round(BRUSH_FRACTION / 2 * min(width, height)))


def background_of(value: Any) -> Image.Image | None:
    """The picture of an editor value (a dict with ``background``) or a plain image."""
    if isinstance(value, dict):
        value = value.get("background")
    return value if isinstance(value, Image.Image) else None


def sized_tools(editor: gr.ImageEditor, image: Image.Image | None) -> dict[str, Any]:
    """``brush`` and ``eraser`` props for ``editor`` sized to ``image`` (empty without an image)."""
    if image is None:
        return {}
    size = brush_size(*image.size)
    return {"brush": dataclasses.replace(editor.brush, default_size=size),
            "eraser": dataclasses.replace(editor.eraser, default_size=size)}


def editor_update(editor: gr.ImageEditor, image: Any) -> Any:
    """An update that puts ``image`` into ``editor`` with its brush sized to it."""
    picture = background_of(image)
    return gr.update(value=image, **sized_tools(editor, picture))


def bind_brush_fitting(editor: gr.ImageEditor, background: gr.State) -> None:
    """On upload: size the brush to the picture and remember it; on clear: put the picture back."""
    def on_upload(value):
        picture = background_of(value)
        return gr.update(**sized_tools(editor, picture)), picture

    def on_clear(picture):
        if picture is None:
            return gr.update()
        return gr.update(value={"background": picture, "layers": [], "composite": picture},
                         **sized_tools(editor, picture))

    editor.upload(on_upload, inputs=[editor], outputs=[editor, background], queue=False, show_progress="hidden")
    editor.clear(on_clear, inputs=[background], outputs=[editor], queue=False, show_progress="hidden")
