"""Captions of images (A1111's "interrogate"). Easel's one interrogator reads the bundled model's
shapes world back into its captions (``bundled.detect``: plain OpenCV, no model file): the image is
scaled to the world's 64x64 side, then background, shape, colour, size and position are read, and
written as the training captions are (``a large red circle on the left, blue background``).

Any other image gets no caption (``NoCaption``, naming why): A1111's own interrogators (CLIP with
BLIP, DeepDanbooru) need model files and code that Easel does not ship.
"""

from __future__ import annotations

import cv2
from PIL import Image

from bundled.detect import detect
from bundled.shapes import POSITION_PHRASES, SIDE

# A1111's interrogation models and the files they load (its modules/interrogate.py, modules/deepbooru.py)
A1111_INTERROGATORS = {"clip": "models/BLIP/model_base_caption_capfilt_large.pth (with CLIP ViT-L/14)",
                       "deepdanbooru": "models/torch_deepdanbooru/model-resnet_custom_v3.pt"}
# the names that run the shapes-world reader: A1111 clients ask for "clip" by default
SHAPES_MODELS = ("clip", "shapes")
# how far (RGB distance) the border and the shape may be from the world's palette and still be read
MAX_BACKGROUND_DISTANCE = 40.0
MAX_COLOR_DISTANCE = 60.0


class NoCaption(LookupError):
    """No interrogator can caption this image (the message says why and what would be needed)."""


def interrogate(image: Image.Image, model: str) -> str:
    """The caption of ``image`` by ``model`` ("clip" or "shapes": the shapes-world reader), or NoCaption."""
    name = model.strip().lower()
    if name not in SHAPES_MODELS:
        wanted = A1111_INTERROGATORS.get(name)
        if wanted is None:
            known = ", ".join(map(repr, (*SHAPES_MODELS, *A1111_INTERROGATORS)))
            raise NoCaption(f"interrogate: model {model!r} not found; known: {known}")
        raise NoCaption(f"interrogate: model {model!r} is not installed: A1111's {model!r} loads {wanted},"
                        " which Easel does not run; Easel's own interrogator ('clip' or 'shapes') reads the"
                        " bundled model's shapes world")
    caption = shapes_caption(image)
    if caption is None:
        raise NoCaption(f"interrogate: no caption: Easel's interrogator reads only the bundled model's shapes world"
                        f" (one shape on a plain background); for other images A1111's 'clip' needs"
                        f" {A1111_INTERROGATORS['clip']}, which Easel does not run")
    return caption


def shapes_caption(image: Image.Image) -> str | None:
    """The shapes-world caption of ``image``, or None when it is not a shapes-world scene."""
    small = image.convert("RGB")
    if small.size != (SIDE, SIDE):
        small = small.resize((SIDE, SIDE), Image.Resampling.BOX)  # bounded work whatever the input size
    try:
        found = detect(small)
    except (cv2.error, ValueError, ArithmeticError):  # a degenerate outline: not a scene the reader knows
        return None
    if found.shape is None or found.size is None or found.position is None:
        return None
    if found.background_distance > MAX_BACKGROUND_DISTANCE or (found.color_distance or 0.0) > MAX_COLOR_DISTANCE:
        return None
    return f"a {found.size} {found.color} {found.shape} {POSITION_PHRASES[found.position][0]}, {found.background} background"
