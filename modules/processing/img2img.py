"""img2img, sketch and inpainting (one mode, as in A1111): init image(s), optional mask.

1. resolve: styles, images to RGB, default size (the first image's), sampler and seeds;
2. prepare each init image (``Prepared``): resize by ``resize_mode`` or, for "only masked", crop
   the masked region (plus padding) and scale it to width x height; fill the masked area;
3. encode to latents, add the seeded noise at the level ``denoising_strength`` picks, denoise
   (latent blending keeps the unmasked area of an ordinary checkpoint; a 9-channel inpainting
   UNet gets the mask and the masked image as extra channels);
4. decode and paste back into the original through the blurred mask, so pixels the blurred
   mask does not touch come back unchanged; infotext with A1111's keys; save.

ControlNet units without their own image use the init image (the first one of the request);
with "only masked" the units' maps are cut to the same region as the init image.

``denoising_strength`` so low that no step runs (``int(steps * strength) == 0``) returns the
prepared input exactly, without a VAE round trip. An empty mask (nothing white after inversion)
is a RequestError: there is nothing to repaint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules import masks, soft_inpainting, token_merging
from modules.controlnet import apply as controlnet
from modules.processing import common, conditioning, refiner, sampling
from modules.processing.context import RunContext
from modules.schemas import INPAINTING_FILLS, GenerationResult, Img2ImgRequest, RequestError


@dataclass
class Prepared:
    """One init image made ready for the model, and how its result goes back into the original."""

    image: Image.Image  # model input, plan size (or its own size for latent upscale)
    mask: Image.Image | None = None  # "L", same size as image, 255 = repaint (blurred)
    original: Image.Image | None = None  # the result is pasted into this...
    box: tuple[int, int, int, int] | None = None  # ...at this box...
    overlay_mask: Image.Image | None = None  # ...through this mask (original's size)
    latent_source: Image.Image | None = None  # "L", same size as image: the latent blend's mask (A1111's latent_mask)

    @property
    def blend_mask(self) -> Image.Image | None:
        """The mask the latents are blended through: ``latent_source`` where given, else ``mask``."""
        return self.latent_source if self.latent_source is not None else self.mask

    def finish(self, generated: Image.Image, overlay: Image.Image | None = None) -> Image.Image:
        """The generated image put back into the original; ``overlay`` (image size, 255 = generated)
        replaces the blurred mask there (soft inpainting's composite mask)."""
        if self.original is None:
            return generated
        mask = self.overlay_mask if overlay is None else self.uncrop(overlay)
        return masks.paste_back(self.original, generated, self.box, mask)

    def uncrop(self, overlay: Image.Image) -> Image.Image:
        """``overlay`` (model size) placed at ``box`` on a black mask of the original's size."""
        x1, y1, x2, y2 = self.box
        canvas = Image.new("L", self.original.size, 0)
        canvas.paste(overlay.resize((x2 - x1, y2 - y1), masks.LANCZOS), (x1, y1))
        return canvas


def composite_sketch(background: Image.Image, sketch: Image.Image) -> Image.Image:
    """A sketch request's init image: the RGBA drawing over the picture (resized to it)."""
    base = masks.to_rgb(background, "init_images[0]").convert("RGBA")
    if not isinstance(sketch, Image.Image):
        raise RequestError(f"sketch: expected an image (PIL.Image), got {type(sketch).__name__}")
    layer = sketch.convert("RGBA")
    if layer.size != base.size:
        layer = layer.resize(base.size, Image.Resampling.LANCZOS)
    base.alpha_composite(layer)
    return base.convert("RGB")


def round_down_8(v: int, factor: int) -> int:
    return max(factor, v // factor * factor)


def run(req: Img2ImgRequest, ctx: RunContext, rng: random.Random | None = None) -> GenerationResult:
    # 1. resolve the request
    req = common.apply_request_styles(req, ctx)
    if not req.init_images:
        raise RequestError("init_images: at least one image is needed for img2img")
    images = [masks.to_rgb(im, f"init_images[{i}]") for i, im in enumerate(req.init_images)]
    factor = ctx.model.vae_scale_factor
    req = req.model_copy(update={
        "width": req.width or round_down_8(images[0].width, factor),
        "height": req.height or round_down_8(images[0].height, factor),
    })
    plan = common.plan_batch(req, ctx, rng)
    notes: list[str] = []
    mask = latent = None
    if req.mask is not None:
        mask = masks.prepare_mask(req.mask, images[0].size, bool(req.inpainting_mask_invert), notes)
        if masks.is_empty(mask):
            what = "all white before inversion" if req.inpainting_mask_invert else "all black"
            raise RequestError(f"mask: the mask is empty ({what}); paint the area to repaint in white")
        if req.latent_mask is not None:  # as A1111: neither inverted nor blurred
            latent = masks.prepare_mask(req.latent_mask, images[0].size, False, [], field="latent_mask")
    # 2. prepare every init image
    preps = [prepare(req, plan, image, mask, factor, latent) for image in images]
    return generate(req, ctx, plan, preps, image_params(req), ctx.settings.outdir_img2img_samples, notes)


def blur_radii(req: Img2ImgRequest) -> tuple[int, int]:
    """The mask's horizontal and vertical blur: ``mask_blur_x``/``_y`` where given, else ``mask_blur``."""
    x = req.mask_blur if req.mask_blur_x is None else req.mask_blur_x
    y = req.mask_blur if req.mask_blur_y is None else req.mask_blur_y
    return x, y


def prepare(req: Img2ImgRequest, plan: common.BatchPlan, image: Image.Image, mask: Image.Image | None, factor: int,
            latent: Image.Image | None = None) -> Prepared:
    """Resize or crop ``image`` (and ``mask`` and ``latent``, the latent blend's own mask, same size as
    the image) for the model; ``latent`` goes through the same crop and resize as the mask."""
    w, h = plan.width, plan.height
    if mask is None:
        if req.resize_mode == 3:  # encoded at its own size, the latents are upscaled
            own = (round_down_8(image.width, factor), round_down_8(image.height, factor))
            return Prepared(masks.resize_image(image, *own, 0))
        return Prepared(masks.resize_image(image, w, h, req.resize_mode))
    if mask.size != image.size:
        mask = mask.resize(image.size, masks.LANCZOS)
    if latent is not None and latent.size != image.size:
        latent = latent.resize(image.size, masks.LANCZOS)
    blurred = masks.blur_mask(mask, blur_radii(req))
    if req.inpaint_full_res:
        region = masks.crop_region(blurred, req.inpaint_full_res_padding)
        region = masks.expand_crop_region(region, w, h, image.width, image.height)

        def to_model(im: Image.Image) -> Image.Image:
            return im.crop(region).resize((w, h), masks.LANCZOS)

        prep = Prepared(to_model(image), to_model(blurred), image, region, blurred)
    else:
        mode = 0 if req.resize_mode == 3 else req.resize_mode

        def to_model(im: Image.Image) -> Image.Image:
            return masks.resize_image(im, w, h, mode)

        base, model_mask = to_model(image), to_model(blurred)
        prep = Prepared(base, model_mask, base, (0, 0, w, h), model_mask)
    if latent is not None:
        prep.latent_source = to_model(latent)
    if req.inpainting_fill == 0:
        prep.image = masks.fill_masked(prep.image, prep.mask)
    return prep


def image_params(req: Img2ImgRequest) -> dict[str, Any]:
    """The infotext keys A1111 adds for img2img and inpainting, in its order."""
    params: dict[str, Any] = {"Denoising strength": req.denoising_strength}
    if req.initial_noise_multiplier != 1.0:
        params["Noise multiplier"] = req.initial_noise_multiplier
    if req.mask is not None:
        blur_x, blur_y = blur_radii(req)
        if blur_x == blur_y:  # A1111 writes no Mask blur when the two differ
            params["Mask blur"] = blur_x
        if req.inpainting_mask_invert:
            params["Mask mode"] = "Inpaint not masked"
        params["Masked content"] = INPAINTING_FILLS[req.inpainting_fill]
        if req.inpaint_full_res:
            params["Inpaint area"] = "Only masked"
            params["Masked area padding"] = req.inpaint_full_res_padding
        params.update(soft_inpainting.infotext_params(req.soft_inpainting))
    return params


def latent_mask(mask: Image.Image, latent_w: int, latent_h: int, rounded: bool = True) -> torch.Tensor:
    """(1, 1, h, w) mask at latent size, rounded to 0/1 as A1111 does (its ``mask_round``, on by default)."""
    small = np.asarray(mask.resize((latent_w, latent_h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    return torch.from_numpy(np.around(small) if rounded else small)[None, None]


@torch.no_grad()
def inpaint_channels(pipe, image: Image.Image, mask: Image.Image | None, latent_size: tuple[int, int]) -> torch.Tensor:
    """A 9-channel UNet's extra input: the mask (latent size) and the latents of the image with
    the masked area blanked (no mask: everything is masked, as A1111 does for img2img)."""
    vae = pipe.vae
    with common.vae_upcast(pipe), common.vae_tiling_for(pipe, image.width, image.height):
        pixels = pipe.image_processor.preprocess([image]).to(vae.device, vae.dtype)
        if mask is None:
            pixel_mask = torch.ones_like(pixels[:, :1])
        else:
            pixel_mask = torch.from_numpy(np.around(np.asarray(mask, dtype=np.float32) / 255.0))[None, None]
        masked = pixels * (1 - pixel_mask.to(pixels))
        masked_latents = vae.encode(masked).latent_dist.mean * vae.config.scaling_factor
    small = torch.nn.functional.interpolate(pixel_mask.float(), size=latent_size).round()
    return torch.cat([small.to(masked_latents), masked_latents], dim=1)


def generate(
    req: Img2ImgRequest,
    ctx: RunContext,
    plan: common.BatchPlan,
    preps: list[Prepared],
    extra_params: dict[str, Any],
    outdir: str,
    notes: list[str],
) -> GenerationResult:
    """Steps 3-4 for prepared init images (also used by outpainting), with the request's ControlNet units."""
    pipe = ctx.model.pipe
    units = controlnet.prepare_units(req.controlnet_units, ctx, plan.width, plan.height, *control_input(preps[0]))
    rp = refiner.plan(req, ctx)
    extra_params = {**extra_params, **controlnet.infotext_params(units), **refiner.params(rp)}
    with torch.no_grad():
        cond = conditioning.encode(ctx, req.prompt, req.negative_prompt, req.clip_skip, req.steps)
    run_steps = sampling.steps_that_run(req.steps, req.denoising_strength)
    total = run_steps * req.n_iter
    ctx.progress.update(0, total)
    result = common.new_result(ctx, plan)
    result.comments.extend(notes)
    result.detected_maps = controlnet.detected_maps(units, plan.width, plan.height)
    f = ctx.model.vae_scale_factor
    lw, lh = plan.width // f, plan.height // f
    nine = pipe.unet.config.in_channels == 9
    encoded: dict[int, torch.Tensor] = {}  # each init image goes through the VAE once per request
    with (controlnet.controlnets_in_use(ctx, units if run_steps else []) as control,
          refiner.in_use(ctx, rp if run_steps else None, req, req.steps) as ref):
        for n in common.iterations(ctx, result, req.n_iter):  # Interrupt and Skip keep the partial image
            batch_seeds, batch_subseeds = plan.iteration(n, req.batch_size)
            batch = [preps[(n * req.batch_size + j) % len(preps)] for j in range(req.batch_size)]
            ctx.hooks.batch(req.mode, req, n, batch_seeds, batch_subseeds, ctx)
            if run_steps == 0:  # nothing to denoise: the input comes back exactly
                finals = [p.finish(p.image.copy()) for p in batch]
            else:
                finals = _denoise_batch(req, ctx, plan, pipe, cond, batch, batch_seeds, batch_subseeds,
                                        n * run_steps, total, (lw, lh), nine, encoded, control, ref)
            finals = ctx.hooks.images_decoded(req.mode, req, n, finals, batch_seeds, ctx)  # extensions' image_decoded
            common.add_batch(result, req, ctx, plan, finals, batch_seeds, batch_subseeds, extra_params, outdir)
    if result.images:
        result.width, result.height = result.images[0].size
    return result


def control_input(prep: Prepared) -> tuple[Image.Image, tuple[tuple[int, int], tuple[int, int, int, int]] | None]:
    """The image ControlNet units without their own image use, and the inpainting crop (for ``prepare_units``).

    Plain img2img: the prepared init image. Inpainting and outpainting: the picture the result goes
    back into; "only masked" cuts it (and the units' own images) to the region that is generated.
    """
    if prep.original is None:
        return prep.image, None
    if prep.box is None or prep.box == (0, 0, *prep.original.size):
        return prep.original, None
    return prep.original.crop(prep.box), (prep.original.size, prep.box)


def _denoise_batch(req, ctx, plan, pipe, cond, batch, batch_seeds, batch_subseeds, done, total, latent_size, nine,
                   encoded: dict[int, torch.Tensor], control=None, ref: refiner.Refiner | None = None):
    lw, lh = latent_size
    for p in batch:
        if id(p) not in encoded:
            encoded[id(p)] = common.encode_images(pipe, [p.image])
    init = torch.cat([encoded[id(p)] for p in batch])
    if init.shape[-2:] != (lh, lw):  # resize mode 3: upscale the latents
        init = torch.nn.functional.interpolate(init, size=(lh, lw), mode="bilinear")
    device, dtype = pipe._execution_device, pipe.unet.dtype
    noise = common.initial_noise(req, plan, batch_seeds, batch_subseeds, ctx)
    blend = None
    soft = req.soft_inpainting if req.soft_inpainting is not None and req.soft_inpainting.enabled else None
    if batch[0].mask is not None:
        rounded = req.mask_round and soft is None  # soft inpainting turns the rounding off, as A1111's script does
        blend = torch.cat([latent_mask(p.blend_mask, lw, lh, rounded) for p in batch]).to(device, dtype)
        init = init.to(device, dtype)
        if req.inpainting_fill == 2:  # latent noise
            init = init * (1 - blend) + noise.to(device, dtype) * blend
        elif req.inpainting_fill == 3:  # latent nothing
            init = init * (1 - blend)
    extra = None
    if nine:
        extra = torch.cat([inpaint_channels(pipe, p.image, p.mask, (lh, lw)) for p in batch]).to(device, dtype)
    inp = sampling.SamplingInput(
        unet=pipe.unet,
        sampler=common.sampler_for(ctx, req, plan.sampler_name, plan.scheduler, req.steps, batch_seeds),
        model_sigmas=common.model_sigmas(pipe),
        prediction_type=common.prediction_type(pipe),
        device=device,
        conditioning=cond,
        noise=noise * req.initial_noise_multiplier,  # A1111's Noise multiplier: the noise on the init latents
        steps=req.steps,
        cfg_scale=req.cfg_scale,
        strength=req.denoising_strength,
        init_latents=init,
        mask=None if nine else blend,
        inpaint_channels=extra,
        control=control,
        size_condition=(plan.height, plan.width) if ctx.model.is_sdxl else None,
        aesthetic_score=common.aesthetic_score(ctx.model),
        on_step=common.step_hook(ctx, pipe, done, req.steps, total, req.denoising_strength),
        hooks=ctx.hooks,
        s_min_uncond=req.s_min_uncond,
        token_merging_ratio=token_merging.first_pass_ratio(req, ctx.settings),
        soft_inpainting=soft if blend is not None else None,
    )
    latents = refiner.sample(ref, ctx, req, inp, blend)  # the refiner takes over at its switch
    images = common.decode_latents(pipe, latents)
    if soft is None or blend is None:
        return [p.finish(img) for p, img in zip(batch, images, strict=True)]
    # soft inpainting: the original comes back wherever the latents did not move
    overlays = soft_inpainting.composite_mask(soft, blend, init, latents, (plan.width, plan.height))
    return [p.finish(img, overlay) for p, img, overlay in zip(batch, images, overlays, strict=True)]
