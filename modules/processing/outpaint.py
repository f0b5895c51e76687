"""Outpainting: extend the canvas by ``pixels`` on the chosen sides, fill the new area, inpaint it.

1. the canvas: the original pasted at (left, up) of a larger image whose new area is filled by
   ``outpaint_fill``: "edge" stretches the border rows/columns outwards, "noise" is seeded random
   colour, "solid" is ``fill_color``;
2. the mask is white over the new area, blurred by ``mask_blur`` for the model;
3. inpaint at the canvas size (img2img's loop, with latent blending or a 9-channel UNet);
4. paste back through the blurred mask with the original area forced to 0, so every original
   pixel comes back exactly where it was (the blend band lies inside the new area).
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageColor

from modules import masks
from modules.processing import common, img2img
from modules.processing.context import RunContext
from modules.schemas import INPAINTING_FILLS, GenerationResult, OutpaintRequest, RequestError


def margins(req: OutpaintRequest) -> tuple[int, int, int, int]:
    """(left, up, right, down) pixels added."""
    return tuple(req.pixels if side in req.direction else 0 for side in ("left", "up", "right", "down"))


def extend_canvas(image: Image.Image, margin: tuple[int, int, int, int], fill: str, color: str, seed: int) -> Image.Image:
    """The original at (left, up) of the larger canvas, the new area filled."""
    left, up, right, down = margin
    w, h = image.width + left + right, image.height + up + down
    if fill == "solid":
        try:
            rgb = ImageColor.getrgb(color)[:3]
        except ValueError:
            raise RequestError(f"fill_color: {color!r} is not a colour; use e.g. '#808080'") from None
        canvas = Image.new("RGB", (w, h), rgb)
    elif fill == "noise":
        arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
        canvas = Image.fromarray(arr)
    else:  # edge: every new pixel takes the nearest original pixel
        arr = np.asarray(image)
        ys = np.clip(np.arange(h) - up, 0, image.height - 1)
        xs = np.clip(np.arange(w) - left, 0, image.width - 1)
        canvas = Image.fromarray(arr[ys][:, xs])
    canvas.paste(image, (left, up))
    return canvas


def run(req: OutpaintRequest, ctx: RunContext, rng: random.Random | None = None) -> GenerationResult:
    req = common.apply_request_styles(req, ctx)
    if not req.init_images:
        raise RequestError("init_images: outpainting needs the image to extend")
    image = masks.to_rgb(req.init_images[0], "init_images[0]")
    margin = margins(req)
    left, up, right, down = margin
    cw, ch = image.width + left + right, image.height + up + down
    factor = ctx.model.vae_scale_factor
    gw, gh = -(-cw // factor) * factor, -(-ch // factor) * factor  # generation size: rounded up
    req = req.model_copy(update={"width": gw, "height": gh})
    plan = common.plan_batch(req, ctx, rng)
    # 1-2. canvas and masks
    canvas = extend_canvas(image, margin, req.outpaint_fill, req.fill_color, plan.seeds[0])
    mask = Image.new("L", (cw, ch), 255)
    mask.paste(0, (left, up, left + image.width, up + image.height))
    blurred = masks.blur_mask(mask, req.mask_blur)
    overlay = Image.fromarray(np.minimum(np.asarray(blurred), np.asarray(mask)))
    model_image = canvas if canvas.size == (gw, gh) else canvas.resize((gw, gh), masks.LANCZOS)
    model_mask = blurred if blurred.size == (gw, gh) else blurred.resize((gw, gh), masks.LANCZOS)
    if req.inpainting_fill == 0:
        model_image = masks.fill_masked(model_image, model_mask)
    prep = img2img.Prepared(model_image, model_mask, canvas, (0, 0, cw, ch), overlay)
    # 3-4. inpaint the new area and paste back
    params = {"Denoising strength": req.denoising_strength, "Mask blur": req.mask_blur,
              "Masked content": INPAINTING_FILLS[req.inpainting_fill]}
    return img2img.generate(req, ctx, plan, [prep], params, ctx.settings.outdir_img2img_samples, [])
