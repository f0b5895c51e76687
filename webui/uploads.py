"""A non-image upload is refused with one line, ``not an image: NAME``.

Gradio opens every uploaded image with PIL before a handler runs; a text file named ``.png``
then fails inside Gradio with a processing error that dumps the upload's internal path and
value. So an image input's upload event checks the file first (without Gradio's preprocessing)
and takes a non-image out again with a one-line toast; the input's own change events read the
raw upload (``preprocess=False``) through ``open_upload``, so nothing ever hands Gradio a file it
cannot open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

UPLOAD_TITLE = "Upload refused"


def upload_path(payload: Any) -> str | None:
    """The server-side path of a raw image value (Gradio's file dict), None when empty."""
    return payload.get("path") if isinstance(payload, dict) else None


def upload_name(payload: Any) -> str:
    """The name the user's file had."""
    path = upload_path(payload)
    return (payload.get("orig_name") if isinstance(payload, dict) else None) or (Path(path).name if path else "upload")


def is_image_file(path: str | None) -> bool:
    """Whether PIL recognises the file at ``path`` as an image (from its header)."""
    try:
        with Image.open(path):
            return True
    except Exception:  # PIL raises many types for files it cannot read
        return False


def open_upload(payload: Any) -> Image.Image | None:
    """The image of a raw upload value, fully read; None when empty or not an image."""
    path = upload_path(payload)
    if path is None or not is_image_file(path):
        return None
    with Image.open(path) as image:
        image.load()
        return image.copy()


def clear_non_images(image: gr.Image) -> None:
    """An upload that is no image is taken out of ``image`` again, with the one line as a toast."""
    def check(payload):
        path = upload_path(payload)
        if path is None or is_image_file(path):
            return gr.update()
        gr.Warning(f"not an image: {upload_name(payload)}", title=UPLOAD_TITLE)
        return None

    # queued (the default): Gradio sends toasts only to queued events
    image.upload(check, inputs=[image], outputs=[image], preprocess=False, show_progress="hidden")
