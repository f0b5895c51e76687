"""One module per generation mode; each exposes ``run(request, ctx) -> GenerationResult``.

A1111 extensions import ``process_images``, ``Processed`` and ``StableDiffusionProcessing*`` from
here: those names resolve lazily to the adapter ``modules.a1111_compat.processing`` (the core
does not use them).
"""

from typing import Any

A1111_NAMES = ("process_images", "Processed", "StableDiffusionProcessing", "StableDiffusionProcessingTxt2Img",
               "StableDiffusionProcessingImg2Img")


def __getattr__(name: str) -> Any:
    if name in A1111_NAMES:
        from modules.a1111_compat import processing

        return getattr(processing, name)
    raise AttributeError(f"module 'modules.processing' has no attribute {name!r}")
