"""A1111's "Extras" single image: upscale by a factor or to a size, with up to two upscalers.

``upscaler_2`` with ``extras_upscaler_2_visibility`` > 0 is blended over ``upscaler_1``'s result
(A1111's rule). Latent upscalers work only inside hires fix and are refused here. An output past
``settings.max_side`` per side is a RequestError before any work. "Crop to fit" crops the source to
the target's aspect ratio first and upscales that, so no image larger than the output is ever made
(A1111 upscales to cover the target, then crops: a 64x1 image cropped to 2048x2048 made 131072x2048).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from modules import infotext, masks, upscalers
from modules.processing import common
from modules.processing.context import RunContext
from modules.schemas import ExtrasRequest, GenerationResult


def target_size(req: ExtrasRequest, width: int, height: int) -> tuple[int, int]:
    if req.resize_mode == 1:
        return req.upscaling_resize_w, req.upscaling_resize_h
    return max(1, int(width * req.upscaling_resize)), max(1, int(height * req.upscaling_resize))


def crop_box(width: int, height: int, target_w: int, target_h: int) -> tuple[int, int, int, int]:
    """The centred box of a ``width`` x ``height`` image with the target's aspect ratio (at least 1x1)."""
    scale = max(target_w / width, target_h / height)  # the source scaled by this covers the target
    w = min(width, max(1, round(target_w / scale)))
    h = min(height, max(1, round(target_h / scale)))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def upscale(req: ExtrasRequest, image: Image.Image, models_dir, max_side: int) -> tuple[Image.Image, dict[str, Any]]:
    """The upscaled image and A1111's "Postprocess ..." infotext keys."""
    up1 = upscalers.get_upscaler(req.upscaler_1, models_dir, include_latent=False, field="upscaler_1")
    up2 = upscalers.get_upscaler(req.upscaler_2, models_dir, include_latent=False, field="upscaler_2")
    w, h = target_size(req, image.width, image.height)
    field = "upscaling_resize_w/upscaling_resize_h" if req.resize_mode == 1 else "upscaling_resize"
    upscalers.check_size(w, h, max_side, field)
    if req.resize_mode == 1 and req.upscaling_crop:  # the centre with the target's aspect ratio, then upscaled
        box = crop_box(image.width, image.height, w, h)
        image = image.crop(box) if box != (0, 0, image.width, image.height) else image
    out = upscalers.upscale_image(image, up1, w, h)
    if up2.name != "None" and req.extras_upscaler_2_visibility > 0:
        second = upscalers.upscale_image(image, up2, w, h)
        out = Image.blend(out, second, req.extras_upscaler_2_visibility)
    params: dict[str, Any] = {}
    if req.resize_mode == 1:
        params["Postprocess upscale to"] = f"{w}x{h}"
    else:
        params["Postprocess upscale by"] = req.upscaling_resize
    params["Postprocess upscaler"] = up1.name
    if up2.name != "None" and req.extras_upscaler_2_visibility > 0:
        params["Postprocess upscaler 2"] = up2.name
    return out, params


def run(req: ExtrasRequest, ctx: RunContext) -> GenerationResult:
    """Upscale ``req.image``; uses no model (``ctx`` gives the settings and the saver only)."""
    settings = ctx.settings
    image = masks.to_rgb(req.image, "image")
    out, params = upscale(req, image, settings.models_dir, settings.max_side)
    text = infotext.build_infotext("", "", params)
    result = GenerationResult(
        images=[out], infotexts=[text], seeds=[], subseeds=[], prompts=[""], negative_prompts=[""],
        model_name="", model_hash=None, width=out.width, height=out.height, sampler_name="", scheduler="",
    )
    common.save_if_asked(result, req, ctx, out, -1, text, settings.outdir_extras_samples, pattern="[number]")
    return result
