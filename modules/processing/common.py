"""Steps shared by the generation modes: planning a batch, prompts, the sampling loop, infotext."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from modules import infotext, samplers, seeds
from modules.images import ImageSaveError
from modules.jobs import JobCancelled
from modules.processing.context import RunContext
from modules.schemas import GenerationRequest, RequestError

logger = logging.getLogger(__name__)


class SkipIteration(Exception):
    """The user pressed Skip: abandon this iteration of the batch count, go on with the next."""


@dataclass(frozen=True)
class BatchPlan:
    """A request resolved into concrete values: sampler, size, and every image's seeds."""

    sampler_name: str
    scheduler: str
    width: int
    height: int
    seeds: list[int]  # one per image, n_iter * batch_size
    subseeds: list[int]

    def iteration(self, n: int, batch_size: int) -> tuple[list[int], list[int]]:
        sl = slice(n * batch_size, (n + 1) * batch_size)
        return self.seeds[sl], self.subseeds[sl]


def plan_batch(req: GenerationRequest, ctx: RunContext, rng: random.Random | None = None) -> BatchPlan:
    """Validate the request against the model and settings; resolve sampler, size and seeds."""
    settings = ctx.settings
    try:
        sampler_name, schedule = samplers.resolve(req.effective_sampler(settings.default_sampler), req.scheduler)
    except ValueError as err:
        raise RequestError(f"sampler_name: {err}") from None
    native = ctx.model.native_size
    width, height = req.width or native, req.height or native
    factor = ctx.model.vae_scale_factor
    for name, v in (("width", width), ("height", height)):
        if v > settings.max_side:
            raise RequestError(f"{name}: {v} is larger than the limit of {settings.max_side} pixels (setting max_side)")
        if v % factor:
            raise RequestError(f"{name}: {v} must be a multiple of {factor} for this model")
    total = req.batch_size * req.n_iter
    if total > settings.max_batch_images:
        raise RequestError(
            f"batch_size x n_iter = {total} images; at most {settings.max_batch_images} per request (setting max_batch_images)"
        )
    seed = seeds.resolve_seed(req.seed, rng)
    subseed = seeds.resolve_seed(req.subseed, rng)
    all_seeds = [(seed + i) % (seeds.MAX_SEED + 1) for i in range(total)]
    all_subseeds = [(subseed + i) % (seeds.MAX_SEED + 1) for i in range(total)]
    return BatchPlan(sampler_name, schedule, width, height, all_seeds, all_subseeds)


def initial_noise(
    req: GenerationRequest, plan: BatchPlan, batch_seeds: list[int], batch_subseeds: list[int], ctx: RunContext
) -> torch.Tensor:
    """Seeded CPU noise for one iteration of the batch, in latent space."""
    f = ctx.model.vae_scale_factor
    channels = ctx.model.pipe.vae.config.latent_channels
    shape = (channels, plan.height // f, plan.width // f)
    resize_from = None
    if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
        resize_from = (channels, req.seed_resize_from_h // f, req.seed_resize_from_w // f)
    return seeds.create_noise(shape, batch_seeds, batch_subseeds, req.subseed_strength, resize_from)


def encode_prompts(ctx: RunContext, prompt: str, negative: str, clip_skip: int) -> dict[str, Any]:
    """Keyword arguments for the pipeline call: A1111-weighted embeddings (SD 1.x / 2.x)."""
    pipe = ctx.model.pipe
    embeddings = None
    if ctx.networks is not None:  # <lora:...> tags out of the text, those LoRAs on (modules/extra_networks.py)
        prompt, negative, embeddings = ctx.networks.prepare(prompt, negative)
    if ctx.model.is_sdxl:  # SDXL: the pipeline's own encoder (no A1111 weighting yet)
        return {"prompt": prompt, "negative_prompt": negative, "clip_skip": clip_skip - 1 or None}
    from modules import prompts

    try:
        cond, uncond = prompts.encode_prompt_pair(
            pipe.tokenizer, pipe.text_encoder, prompt, negative, clip_skip=clip_skip, device=pipe._execution_device,
            embeddings=embeddings,
        )
    except prompts.PromptTooLong as err:
        raise RequestError(f"prompt: {err}") from None
    return {"prompt_embeds": cond, "negative_prompt_embeds": uncond}


def step_callback(ctx: RunContext, done_before: int, steps: int, total: int, preview_every: int):
    """The pipeline's per-step hook: cancel, skip, progress and the occasional preview.

    Progress counts the user's sampling steps; second-order samplers (Heun, DPM2) evaluate
    the model about twice per step, so their model calls are scaled down to steps.
    """

    def callback(pipe, i: int, t, tensors: dict) -> dict:
        calls = max(1, len(pipe.scheduler.timesteps))
        step = min(steps, -(-(i + 1) * steps // calls))
        if ctx.token.cancelled:
            raise JobCancelled("interrupted")
        if ctx.token.skipped:
            raise SkipIteration()
        preview = None
        if preview_every and (i + 1) % preview_every == 0 and "latents" in tensors:
            preview = decode_preview(pipe, tensors["latents"])
        ctx.progress.update(done_before + step, total, preview=preview)
        return {}

    return callback


@torch.no_grad()
def decode_preview(pipe, latents: torch.Tensor):
    """A small preview of the first image of the batch (full VAE decode of one latent)."""
    from PIL import Image

    vae = pipe.vae
    lat = latents[:1].to(vae.device, vae.dtype) / vae.config.scaling_factor
    img = vae.decode(lat).sample[0].float().clamp(-1, 1)
    arr = ((img + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


@contextmanager
def sampler_installed(pipe, scheduler) -> Iterator[None]:
    """Run with ``scheduler`` on the pipeline, then put the model's own scheduler back."""
    own = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        yield
    finally:
        pipe.scheduler = own


def scheduler_for(ctx: RunContext, plan: BatchPlan, seed: int | None = None):
    """A fresh scheduler for one batch iteration; ``seed`` seeds the noise of SDE samplers
    (DPM++ SDE draws its Brownian noise itself, not from the pipeline's generators)."""
    return samplers.make_scheduler(ctx.model.pipe.scheduler.config, plan.sampler_name, plan.scheduler, seed=seed)


def base_params(req: GenerationRequest, plan: BatchPlan, ctx: RunContext, seed: int, subseed: int) -> dict[str, Any]:
    """A1111's infotext keys shared by all modes, in A1111's order."""
    params: dict[str, Any] = {
        "Steps": req.steps,
        "Sampler": plan.sampler_name,
        "Schedule type": plan.scheduler,
        "CFG scale": req.cfg_scale,
        "Seed": seed,
        "Size": f"{plan.width}x{plan.height}",
        "Model hash": ctx.model.short_hash,
        "Model": ctx.model.info.model_name,
    }
    if ctx.model.vae_name:
        params["VAE hash"] = ctx.model.vae_hash
        params["VAE"] = ctx.model.vae_name
    if req.subseed_strength > 0:
        params["Variation seed"] = subseed
        params["Variation seed strength"] = req.subseed_strength
    if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
        params["Seed resize from"] = f"{req.seed_resize_from_w}x{req.seed_resize_from_h}"
    if req.clip_skip > 1:
        params["Clip skip"] = req.clip_skip
    return params


def finish_params(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    if ctx.networks is not None:  # Lora hashes, TI hashes
        params.update(ctx.networks.infotext_params())
    params["Version"] = ctx.version
    return params


def make_infotext(req: GenerationRequest, params: dict[str, Any]) -> str:
    return infotext.build_infotext(req.prompt, req.negative_prompt, params)


# ---------------------------------------------------------------------------------------------
# Shared by the edit modes (img2img, inpaint, outpaint, hires fix)

# Above this many pixels the VAE encodes/decodes in tiles, so memory stays bounded.
VAE_TILING_PIXELS = 1024 * 1024


def apply_request_styles(req: GenerationRequest, ctx: RunContext) -> GenerationRequest:
    """The request with its ``styles`` (from ``styles.csv`` in the data folder) merged into the
    prompts; the styled prompts are what gets encoded and written to the infotext."""
    if not req.styles:
        return req
    from modules import styles

    table = styles.load_styles(ctx.settings.path(styles.STYLES_FILE))
    prompt, negative = styles.apply_styles(req.prompt, req.negative_prompt, req.styles, table)
    return req.model_copy(update={"prompt": prompt, "negative_prompt": negative, "styles": []})


def new_result(ctx: RunContext, plan: BatchPlan, width: int | None = None, height: int | None = None):
    from modules.schemas import GenerationResult

    return GenerationResult(
        images=[], infotexts=[], seeds=[], subseeds=[], prompts=[], negative_prompts=[],
        model_name=ctx.model.info.model_name, model_hash=ctx.model.short_hash,
        width=width or plan.width, height=height or plan.height, sampler_name=plan.sampler_name, scheduler=plan.scheduler,
    )


def add_image(
    result, req: GenerationRequest, ctx: RunContext, image, seed: int, subseed: int, params: dict[str, Any], outdir: str
) -> None:
    """Append one image with its infotext to the result, and save it when the request asks."""
    text = make_infotext(req, finish_params(params, ctx))
    result.images.append(image)
    result.infotexts.append(text)
    result.seeds.append(seed)
    result.subseeds.append(subseed)
    result.prompts.append(req.prompt)
    result.negative_prompts.append(req.negative_prompt)
    save_if_asked(result, req, ctx, image, seed, text, outdir)


def add_batch(
    result,
    req: GenerationRequest,
    ctx: RunContext,
    plan: BatchPlan,
    images: list,
    batch_seeds: list[int],
    batch_subseeds: list[int],
    extra_params: dict[str, Any],
    outdir: str,
) -> None:
    """``add_image`` for one iteration's images: the shared infotext keys, then ``extra_params``."""
    for image, seed, subseed in zip(images, batch_seeds, batch_subseeds, strict=True):
        params = {**base_params(req, plan, ctx, seed, subseed), **extra_params}
        add_image(result, req, ctx, image, seed, subseed, params, outdir)


def save_if_asked(result, req, ctx: RunContext, image, seed: int, text: str, outdir: str, pattern: str | None = None) -> None:
    """Save ``image`` into the folder the setting ``outdir`` names and record its path, when the request
    asks to save and the context has a saver; ``pattern`` defaults to ``samples_filename_pattern``.

    A save that fails for lack of room or rights (disk full, read-only, no permission) does not fail
    the job: the image stays in the result and the reason, naming the folder and the setting, goes
    to ``result.save_errors`` (once per reason) for the caller to show.
    """
    if not req.save_images or ctx.saver is None:
        return
    s = ctx.settings
    if pattern is None:
        pattern = s.samples_filename_pattern
    try:
        path = ctx.saver.save_image(image, s.path(outdir), seed, text, pattern=pattern, use_date_subdir=s.save_to_dirs)
    except ImageSaveError as err:
        setting = next((name for name in type(s).model_fields if name.startswith("outdir_") and getattr(s, name) == outdir),
                       None)
        message = f"{err}, or choose another folder (setting {setting})" if setting else str(err)
        if message not in result.save_errors:
            logger.warning("%s", message)
            result.save_errors.append(message)
        return
    result.paths.append(path)


def require_sd_unet(ctx: RunContext, what: str) -> None:
    if ctx.model.is_sdxl:
        raise RequestError(f"{what} is not supported on SDXL checkpoints yet; choose an SD 1.x/2.x checkpoint")


@contextmanager
def vae_tiling_for(pipe, width: int, height: int) -> Iterator[None]:
    """Tile the VAE while working on a large image; the previous setting is put back after."""
    vae = pipe.vae
    was = bool(getattr(vae, "use_tiling", False))
    large = width * height > VAE_TILING_PIXELS
    if large and not was:
        vae.enable_tiling()
    try:
        yield
    finally:
        if large and not was:
            vae.disable_tiling()


@torch.no_grad()
def encode_images(pipe, images: list) -> torch.Tensor:
    """PIL images (same size, multiples of 8) to scaled latents: the mean of the VAE posterior
    (deterministic, so a request reproduces)."""
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(images).to(vae.device, vae.dtype)
    with vae_tiling_for(pipe, images[0].width, images[0].height):
        dist = vae.encode(pixels).latent_dist
    return dist.mean * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> list:
    vae = pipe.vae
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    with vae_tiling_for(pipe, latents.shape[-1] * f, latents.shape[-2] * f):
        pixels = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(pixels, output_type="pil")


def img2img_callback(ctx: RunContext, done_before: int, steps: int, strength: float, total: int):
    """``step_callback`` for ``denoise``: progress counts only the steps that run."""
    skipped = steps - denoise_steps(steps, strength)
    return step_callback(ctx, done_before - skipped, steps, total, ctx.settings.show_progress_every_n_steps)


def denoise_steps(steps: int, strength: float) -> int:
    """How many of ``steps`` an img2img pass runs at ``strength`` (0: none, the input is kept)."""
    return min(int(steps * strength), steps)


def unet_residuals(residuals) -> dict[str, Any]:
    """The UNet's keyword arguments for ControlNet residuals ``(down, mid)``; none for None."""
    if residuals is None:
        return {}
    down, mid = residuals
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def _step_kwargs(scheduler, generators: list) -> dict[str, Any]:
    import inspect

    accepted = inspect.signature(scheduler.step).parameters
    return {"generator": generators} if "generator" in accepted else {}


@dataclass
class Conditioning:
    """Encoded prompts for classifier-free guidance (each (1, tokens, dim))."""

    cond: torch.Tensor
    uncond: torch.Tensor

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Conditioning:
        return cls(kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"])


@torch.no_grad()
def denoise(
    ctx: RunContext,
    pipe,
    conditioning: Conditioning,
    init_latents: torch.Tensor | None,
    noise: torch.Tensor,
    steps: int,
    strength: float,
    cfg_scale: float,
    generators: list,
    callback,
    blend_mask: torch.Tensor | None = None,
    inpaint_extra: torch.Tensor | None = None,
    control=None,
) -> torch.Tensor:
    """The img2img sampling loop on the installed scheduler; returns the final latents.

    ``strength`` picks where on the schedule to start (diffusers' and A1111's rule: the last
    ``int(steps * strength)`` steps run); the init latents get the seeded ``noise`` at that level.
    ``blend_mask`` (1 = repaint, latent size): after every step the area outside it is reset to the
    init latents noised to the current level (inpainting with an ordinary checkpoint).
    ``inpaint_extra``: the 5 extra input channels (mask, masked-image latents) of a 9-channel
    inpainting UNet. ``callback`` (``step_callback``) gets each step's index in the full
    schedule, so build it with ``img2img_callback``. ``control`` (a ``modules.controlnet.apply.Control``)
    gives the ControlNet residuals added to each UNet call, from the latent input (the 4 channels,
    without an inpainting UNet's extra ones), the step's index among the steps that run, and their count.
    """
    scheduler = pipe.scheduler
    device, dtype = pipe._execution_device, pipe.unet.dtype
    scheduler.set_timesteps(steps, device=device)
    run = denoise_steps(steps, strength)
    start = (steps - run) * scheduler.order
    timesteps = scheduler.timesteps[start:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    noise = noise.to(device, dtype)
    batch = noise.shape[0]
    if init_latents is not None:
        init_latents = init_latents.to(device, dtype)
    if init_latents is None or run == steps:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(batch))
    guided = cfg_scale > 1.0
    cond = conditioning.cond.to(device, dtype).repeat(batch, 1, 1)
    embeds = torch.cat([conditioning.uncond.to(device, dtype).repeat(batch, 1, 1), cond]) if guided else cond
    extra = _step_kwargs(scheduler, generators)
    for i, t in enumerate(timesteps):
        model_in = torch.cat([latents] * 2) if guided else latents
        model_in = scheduler.scale_model_input(model_in, t)
        residuals = control(model_in, t, embeds, i, len(timesteps), guided) if control is not None else None
        if inpaint_extra is not None:
            model_in = torch.cat([model_in, torch.cat([inpaint_extra] * 2) if guided else inpaint_extra], dim=1)
        pred = pipe.unet(model_in, t, encoder_hidden_states=embeds, **unet_residuals(residuals)).sample
        if guided:
            uncond_pred, cond_pred = pred.chunk(2)
            pred = uncond_pred + cfg_scale * (cond_pred - uncond_pred)
        latents = scheduler.step(pred, t, latents, **extra).prev_sample
        if blend_mask is not None and init_latents is not None:
            if i + 1 < len(timesteps):
                keep = scheduler.add_noise(init_latents, noise, timesteps[i + 1 : i + 2].repeat(batch))
            else:
                keep = init_latents
            latents = blend_mask * latents + (1 - blend_mask) * keep
        callback(pipe, start + i, t, {"latents": latents})  # the index in the full schedule
    return latents
