"""Seamless tiling (A1111's "Tiling"): for one job, the UNet's and the VAE's convolutions pad
circularly instead of with zeros, so the picture's left edge continues its right edge and its top
its bottom, and copies of it tile without seams.

``torch.nn.Conv2d`` pads by ``padding_mode`` itself, so switching the mode on each convolution is
the whole change; it is undone when the job ends (the model stays in the cache for other jobs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

CIRCULAR = "circular"


def tiled_convolutions(pipe: Any) -> list[torch.nn.Conv2d]:
    """The 2-D convolutions of the pipeline's UNet and VAE (the parts it has)."""
    parts = [getattr(pipe, name, None) for name in ("unet", "vae")]
    return [m for part in parts if part is not None for m in part.modules() if isinstance(m, torch.nn.Conv2d)]


@contextmanager
def seamless_tiling(pipe: Any, enabled: bool) -> Iterator[None]:
    """Within the block, ``pipe``'s UNet and VAE pad circularly when ``enabled``; restored after, even on error."""
    if not enabled:
        yield
        return
    convs = tiled_convolutions(pipe)
    before = [conv.padding_mode for conv in convs]
    for conv in convs:
        conv.padding_mode = CIRCULAR
    try:
        yield
    finally:
        for conv, mode in zip(convs, before, strict=True):
            conv.padding_mode = mode
