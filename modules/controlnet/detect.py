"""The ``controlnet_detect`` job: run a preprocessor on images (the preview of a control map).

It is a model-free job in the one queue, so the worker stays the only thing that touches the
device (the neural annotators run there). ``POST /controlnet/detect`` and the UI submit it with a
``DetectRequest`` (defined beside the preprocessors).
"""

from __future__ import annotations

from PIL import Image

from modules.controlnet.preprocessors import DetectRequest, preprocess
from modules.processing.context import RunContext

__all__ = ["DetectRequest", "run"]


def run(request: DetectRequest, ctx: RunContext) -> list[Image.Image]:
    """The control map of each image, in order (RGB, short side = the resolution; "none": the image)."""
    annotators = ctx.settings.models_dir / "ControlNet" / "annotators"
    maps = []
    for i, image in enumerate(request.images):
        ctx.token.check()
        ctx.progress.update(i, len(request.images), textinfo=f"{request.module} {i + 1}/{len(request.images)}")
        maps.append(preprocess(request.module, image, request.processor_res, request.threshold_a, request.threshold_b,
                               annotators, request.device))
    return maps
