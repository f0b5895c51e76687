"""A1111's "Extras" single image: upscale by a factor or to a size, with up to two upscalers.

``upscaler_2`` with ``extras_upscaler_2_visibility`` > 0 is blended over ``upscaler_1``'s result
(A1111's rule). Latent upscalers work only inside hires fix and are refused here. An output past
``settings.max_side`` per side is a RequestError before any work.
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


def upscale(req: ExtrasRequest, image: Image.Image, models_dir, max_side: int) -> tuple[Image.Image, dict[str, Any]]:
    """The upscaled image and A1111's "Postprocess ..." infotext keys."""
    up1 = upscalers.get_upscaler(req.upscaler_1, models_dir, include_latent=False, field="upscaler_1")
    up2 = upscalers.get_upscaler(req.upscaler_2, models_dir, include_latent=False, field="upscaler_2")
    w, h = target_size(req, image.width, image.height)
    upscalers.check_size(w, h, max_side, "upscaling_resize")
    crop = req.resize_mode == 1 and req.upscaling_crop
    cover = (w, h)
    if crop:  # upscale to cover the target with the image's aspect ratio, then crop the centre
        s = max(w / image.width, h / image.height)
        cover = (max(w, round(image.width * s)), max(h, round(image.height * s)))
    out = upscalers.upscale_image(image, up1, *cover)
    if up2.name != "None" and req.extras_upscaler_2_visibility > 0:
        second = upscalers.upscale_image(image, up2, *cover)
        out = Image.blend(out, second, req.extras_upscaler_2_visibility)
    if crop and out.size != (w, h):
        out = masks.resize_image(out, w, h, 1)
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
