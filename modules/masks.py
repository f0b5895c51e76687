"""Image and mask preparation for img2img, inpainting and outpainting (A1111's semantics).

- ``to_rgb``: any PIL image to RGB (RGBA flattened on white, greyscale expanded); anything else
  is a RequestError naming the field.
- ``resize_image``: A1111's four resize modes (Just resize, Crop and resize, Resize and fill,
  Just resize (latent upscale), which resizes pixels like mode 0).
- masks: white = repaint. ``prepare_mask`` converts, resizes a mask of another size to the image
  (with a note) and inverts; ``blur_mask`` softens the edge; ``crop_region`` and
  ``expand_crop_region`` give the "only masked" box; ``paste_back`` puts the generated pixels
  into the original through the blurred mask, so pixels where the blurred mask is 0 are exact.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from modules.schemas import RequestError

LANCZOS = Image.Resampling.LANCZOS


def to_rgb(image: object, field: str, background: str = "#ffffff") -> Image.Image:
    """An RGB copy of ``image``; transparent pixels become ``background`` (A1111 flattens on white)."""
    if not isinstance(image, Image.Image):
        raise RequestError(f"{field}: expected an image (PIL.Image), got {type(image).__name__}")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, background)
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    return image.convert("RGB")


def resize_image(image: Image.Image, width: int, height: int, resize_mode: int) -> Image.Image:
    """Resize to width x height: 0/3 stretch, 1 crop the overflow (centred), 2 fit and fill the
    bands by stretching the image's edge rows/columns (centred).

    Mode 1 resizes only the part that is kept (the centred box with the target's aspect ratio), so
    nothing larger than the target is made, whatever the image's aspect ratio."""
    if resize_mode in (0, 3):
        return image.copy() if image.size == (width, height) else image.resize((width, height), LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    if resize_mode == 1:  # cover the target, crop what sticks out
        scale = max(width / image.width, height / image.height)
        box_w, box_h = width / scale, height / scale
        left, top = (image.width - box_w) / 2, (image.height - box_h) / 2
        return image.resize((width, height), LANCZOS, box=(left, top, left + box_w, top + box_h))
    if resize_mode == 2:  # fit inside the target, fill the bands
        fit = ratio < src_ratio
        w = width if fit else max(1, image.width * height // image.height)
        h = max(1, image.height * width // image.width) if fit else height
    else:
        raise RequestError(f"resize_mode: {resize_mode} is not one of 0-3")
    resized = image.resize((w, h), LANCZOS)
    out = Image.new(image.mode, (width, height))
    x, y = (width - w) // 2, (height - h) // 2
    out.paste(resized, (x, y))
    if resize_mode == 2:
        if h < height:  # bands above and below: stretch the first and last rows
            if y:
                out.paste(resized.resize((width, y), box=(0, 0, w, 1)), (0, 0))
            bottom = height - y - h
            if bottom:
                out.paste(resized.resize((width, bottom), box=(0, h - 1, w, h)), (0, y + h))
        if w < width:  # bands left and right: stretch the first and last columns
            if x:
                out.paste(resized.resize((x, height), box=(0, 0, 1, h)), (0, 0))
            right = width - x - w
            if right:
                out.paste(resized.resize((right, height), box=(w - 1, 0, w, h)), (x + w, 0))
    return out


def prepare_mask(mask: object, size: tuple[int, int], invert: bool, notes: list[str], field: str = "mask") -> Image.Image:
    """The mask as "L" at ``size`` (resized, with a note, when it was another size), inverted if asked.

    An RGBA mask with transparent pixels uses its alpha channel (strokes on a transparent layer).
    ``field`` names the request field in errors."""
    if not isinstance(mask, Image.Image):
        raise RequestError(f"{field}: expected an image (PIL.Image), got {type(mask).__name__}")
    m = mask.convert("L")
    if mask.mode in ("RGBA", "LA") and int(np.asarray(mask.getchannel("A")).min()) < 255:
        m = mask.getchannel("A")  # a drawing on a transparent layer: what is drawn is the mask
    if m.size != size:
        notes.append(f"Mask resized from {m.width}x{m.height} to the image size {size[0]}x{size[1]}")
        m = m.resize(size, Image.Resampling.BILINEAR)  # no Lanczos ringing outside the strokes
    if invert:
        m = Image.fromarray(255 - np.asarray(m))
    return m


def is_empty(mask: Image.Image) -> bool:
    return int(np.asarray(mask).max()) == 0


def blur_mask(mask: Image.Image, radius: int | tuple[int, int]) -> Image.Image:
    """Gaussian blur of the mask edge: one radius both ways, or (horizontal, vertical) as A1111's
    ``mask_blur_x``/``mask_blur_y`` (0: unchanged)."""
    x, y = (radius, radius) if isinstance(radius, int) else radius
    if x <= 0 and y <= 0:
        return mask.copy()
    return mask.filter(ImageFilter.GaussianBlur(x if x == y else (x, y)))


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int]:
    """Bounding box (x1, y1, x2, y2) of the mask's non-zero pixels, grown by ``padding``, clamped."""
    ys, xs = np.nonzero(np.asarray(mask))
    x1, y1 = max(int(xs.min()) - padding, 0), max(int(ys.min()) - padding, 0)
    x2, y2 = min(int(xs.max()) + 1 + padding, mask.width), min(int(ys.max()) + 1 + padding, mask.height)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, want: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) to length ``want`` around its centre, shifted to stay in [0, limit)."""
    want = min(want, limit)
    extra = want - (hi - lo)
    lo, hi = lo - extra // 2, hi + extra - extra // 2
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def expand_crop_region(
    region: tuple[int, int, int, int], width: int, height: int, image_w: int, image_h: int
) -> tuple[int, int, int, int]:
    """Grow the region so its aspect ratio matches width:height (as far as the image allows)."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grow(y1, y2, round((x2 - x1) * height / width), image_h)
    else:
        x1, x2 = _grow(x1, x2, round((y2 - y1) * width / height), image_w)
    return x1, y1, x2, y2


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked area painted with progressively blurred surrounding colours."""
    keep = Image.fromarray(255 - np.asarray(mask))
    out = Image.new("RGB", image.size, tuple(int(c) for c in np.asarray(image).reshape(-1, 3).mean(0)))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        for _ in range(repeats):
            layer = out.copy()
            layer.paste(image, mask=keep)
            out = layer.filter(ImageFilter.GaussianBlur(radius)) if radius else layer
    return Image.composite(out, image, mask)


def paste_back(original: Image.Image, generated: Image.Image, box: tuple[int, int, int, int], mask: Image.Image) -> Image.Image:
    """``generated`` resized into ``box`` of ``original``, then composited through ``mask``:
    where the mask is 0 the original's pixels come back exactly."""
    x1, y1, x2, y2 = box
    canvas = original.copy()
    patch = generated if generated.size == (x2 - x1, y2 - y1) else generated.resize((x2 - x1, y2 - y1), LANCZOS)
    canvas.paste(patch, (x1, y1))
    return Image.composite(canvas, original, mask)
