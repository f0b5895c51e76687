"""Soft inpainting, as A1111's built-in "Soft Inpainting" extension does it (Easel's own code).

Inpainting with an ordinary checkpoint keeps the unmasked area by putting the original latents
back after every model call, through the latent mask (0/1 once rounded). Soft inpainting uses the
blurred mask as it is (``mask`` is 1 where the picture is repainted) and changes two things:

1. ``blend_latents`` (every model call): the original latents ``init`` and the denoised estimate
   are interpolated through ``mask ** (sigma ** mask_blend_power * mask_blend_scale)``: at high noise
   the exponent is large and partly masked places keep more of the original, at low noise the
   model has its way. The vectors' lengths are interpolated apart from their directions, as
   ``length ** inpaint_detail_preservation``, so the transition keeps its contrast. There is no hard
   blend at the end.
2. ``composite_mask`` (the final picture): a mask from how far each latent place moved from the
   original (a weighted percentile filter over a 5x5 Gaussian window, then a soft threshold at
   ``composite_difference_threshold``, biased by the mask by ``composite_mask_influence``, with
   ``composite_difference_contrast``), scaled to the picture and blurred; the result is pasted over
   the original through it, so places that did not change keep their original pixels.

The infotext keys are A1111's (``INFOTEXT_KEYS``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from modules.schemas import SoftInpainting

ENABLED_KEY = "Soft inpainting enabled"
# request field -> A1111's infotext key
INFOTEXT_KEYS = {
    "mask_blend_power": "Soft inpainting schedule bias",
    "mask_blend_scale": "Soft inpainting preservation strength",
    "inpaint_detail_preservation": "Soft inpainting transition contrast boost",
    "composite_mask_influence": "Soft inpainting mask influence",
    "composite_difference_threshold": "Soft inpainting difference threshold",
    "composite_difference_contrast": "Soft inpainting difference contrast",
}
# the order of the script's args after ``enabled`` (A1111's ui() return order)
ARG_FIELDS = tuple(INFOTEXT_KEYS)
OVERLAY_BLUR = 4  # A1111 blurs the composite mask by 4 pixels against aliasing


def infotext_params(settings: SoftInpainting | None) -> dict[str, Any]:
    """A1111's infotext keys for ``settings`` (nothing when off)."""
    if settings is None or not settings.enabled:
        return {}
    return {ENABLED_KEY: True, **{key: getattr(settings, name) for name, key in INFOTEXT_KEYS.items()}}


def from_infotext(params: dict[str, Any]) -> dict[str, Any] | None:
    """The ``soft_inpainting`` field from parsed infotext parameters, or None when it was not on.
    A value that does not read as a number raises ValueError."""
    if str(params.get(ENABLED_KEY, "")).strip().lower() != "true":
        return None
    out: dict[str, Any] = {"enabled": True}
    for name, key in INFOTEXT_KEYS.items():
        if key in params:
            out[name] = float(params[key])
    return out


def step_mask(settings: SoftInpainting, mask: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """How much of the denoised estimate to take at noise level ``sigma`` (1 = all of it): the soft
    mask raised to ``sigma ** mask_blend_power * mask_blend_scale`` (A1111's ``get_modified_nmask``)."""
    exponent = float(sigma) ** settings.mask_blend_power * settings.mask_blend_scale
    return torch.pow(mask, exponent)


def blend_latents(settings: SoftInpainting, init: torch.Tensor, denoised: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``init`` -> ``denoised`` by ``t`` (batch, 1, h, w), with each place's vector length interpolated
    as ``length ** inpaint_detail_preservation`` (A1111's ``latent_blend``), so it does not shrink
    where two different vectors are mixed."""
    mixed = init * (1 - t) + denoised * t
    power = settings.inpaint_detail_preservation
    length = torch.linalg.vector_norm(mixed, dim=1, keepdim=True).double() + 1e-5
    wanted = (torch.linalg.vector_norm(init, dim=1, keepdim=True).double() ** power * (1 - t)
              + torch.linalg.vector_norm(denoised, dim=1, keepdim=True).double() ** power * t) ** (1 / power)
    return mixed * (wanted / length).to(mixed.dtype)


def gaussian_kernel(stddev: float = 1.5, radius: int = 2) -> np.ndarray:
    """A (2r+1)^2 Gaussian window whose weights reach 0 one pixel past ``radius`` (A1111's thresholded kernel)."""
    zero = np.exp(-((radius + 1.0) ** 2) / stddev**2)
    ys, xs = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    kernel = (np.exp(-(xs**2 + ys**2) / stddev**2) - zero) / (1 - zero)
    return np.maximum(kernel, 0.0)


def weighted_percentile_filter(image: np.ndarray, kernel: np.ndarray, low: float, high: float,
                               min_width: float = 1.0) -> np.ndarray:
    """For each pixel, the mean of the window's values between the ``low`` and ``high`` fractions of
    their kernel-weighted stack (sorted by value; window cut at the image's edges), the stack window
    at least ``min_width`` weight wide (A1111's ``weighted_histogram_filter``, vectorised)."""
    h, w = image.shape
    r = kernel.shape[0] // 2
    padded = np.pad(image.astype(np.float64), r)
    inside = np.pad(np.ones_like(image, dtype=np.float64), r)
    values, weights = [], []
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            values.append(padded[dy:dy + h, dx:dx + w])
            weights.append(inside[dy:dy + h, dx:dx + w] * kernel[dy, dx])
    values, weights = np.stack(values, -1), np.stack(weights, -1)
    order = np.argsort(values, axis=-1, kind="stable")
    values, weights = np.take_along_axis(values, order, -1), np.take_along_axis(weights, order, -1)
    top = np.cumsum(weights, -1)
    bottom = top - weights
    total = top[..., -1:]
    lo, hi = total * low, total * high
    narrow = (hi - lo) < min_width
    centre = (lo + hi) / 2
    lo = np.where(narrow, centre - min_width / 2, lo)
    hi = np.where(narrow, centre + min_width / 2, hi)
    over = hi > total
    lo, hi = np.where(over, total - min_width, lo), np.where(over, total, hi)
    under = lo < 0
    lo, hi = np.where(under, 0.0, lo), np.where(under, min_width, hi)
    overlap = np.clip(np.minimum(hi, top) - np.maximum(lo, bottom), 0.0, None)
    weight = overlap.sum(-1)
    return np.where(weight > 0, (values * overlap).sum(-1) / np.where(weight > 0, weight, 1), 0.0)


def smootherstep(x: np.ndarray) -> np.ndarray:
    """Perlin's smootherstep on [0, 1]."""
    return x * x * x * (x * (6 * x - 15) + 10)


def composite_mask(settings: SoftInpainting, mask: torch.Tensor, init: torch.Tensor, result: torch.Tensor,
                   size: tuple[int, int]) -> list[Image.Image]:
    """One "L" mask per image at ``size`` (width, height), 255 = take the generated pixels: where the
    latents moved from the original by more than the difference threshold (A1111's
    ``apply_adaptive_masks``). ``mask`` is the latent mask (batch, 1, h, w), 1 = repaint."""
    soft = torch.clamp(mask[:, 0].float(), 0, 1) ** (settings.mask_blend_scale / 2)
    scalar = 0.5 * (1 - settings.composite_mask_influence) + (1 - soft) * settings.composite_mask_influence
    scalar = (scalar / (1.00001 - scalar)).cpu().numpy()
    distance = torch.linalg.vector_norm(result.float() - init.float(), dim=1).cpu().numpy()
    kernel = gaussian_kernel()
    out = []
    for i, dist in enumerate(distance):
        dist = weighted_percentile_filter(dist, kernel, 0.9, 1.0)
        dist = weighted_percentile_filter(dist, kernel, 0.25, 0.75)
        half = np.maximum(settings.composite_difference_threshold * scalar[min(i, len(scalar) - 1)], 1e-8)
        keep = 1 / (1 + (dist / half) ** settings.composite_difference_contrast)
        take = 1 - smootherstep(np.clip(keep, 0.0, 1.0))
        small = Image.fromarray((255.0 * take).astype(np.uint8))
        out.append(small.resize(size, Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(OVERLAY_BLUR)))
    return out
