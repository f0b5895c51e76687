"""Steps shared by the generation modes: planning a batch, the per-step hook, VAE, infotext.

The sampling itself is ``processing.sampling`` (one core for every mode); the prompts become its
conditioning in ``processing.conditioning``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from modules import infotext, samplers, seeds, token_merging
from modules.images import ImageSaveError
from modules.jobs import JobCancelled
from modules.processing import sampling
from modules.processing.context import RunContext
from modules.samplers.schedules import ModelSigmas
from modules.schemas import GenerationRequest, RequestError

logger = logging.getLogger(__name__)


def iterations(ctx: RunContext, result, n_iter: int) -> Iterator[int]:
    """The batch count's iteration numbers, with A1111's Interrupt and Skip between them.

    Interrupt ends the run before the next iteration and Skip goes on with it; the iteration they
    stopped is kept, its image decoded from where sampling stopped (``step_hook``). Marks the
    result ``interrupted`` and counts the iterations Skip cut short in ``result.skipped``. A cancel
    (the queue stopping) raises ``JobCancelled``: nothing is kept.
    """
    for n in range(n_iter):
        if not go_on(ctx, result):
            return
        yield n
    go_on(ctx, result)


def go_on(ctx: RunContext, result) -> bool:
    """Between iterations: count a Skip of the one before, False after Interrupt (the result marked
    ``interrupted``), ``JobCancelled`` after a cancel, else True (the next iteration runs)."""
    if ctx.token.skipped:  # the iteration before was cut short; it is kept, the next one runs
        ctx.token.clear_skip()
        result.skipped += 1
    if ctx.token.interrupted:
        result.interrupted = True
        return False
    ctx.token.check()
    return True


def stopped(ctx: RunContext) -> bool:
    """Whether Interrupt or Skip stopped this iteration's sampling (a hires pass then does not run)."""
    return ctx.token.interrupted or ctx.token.skipped


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
        schedule = samplers.effective_schedule_type(sampler_name, schedule)  # what runs, for the infotext
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


def step_hook(
    ctx: RunContext, pipe, done_before: int, steps: int, total: int, strength: float = 1.0
) -> sampling.StepCallback:
    """The core's per-call hook for a pass of ``steps`` at ``strength``: interrupt, skip, cancel,
    progress and, every ``show_progress_every_n_steps`` calls while a client watches, a preview
    (none at the pass's last call: what it would show is decoded next).

    Interrupt and Skip end the pass after the step that just ran (``sampling.StopSampling``): the
    core returns that step's denoised latents, which become the iteration's partial image.

    Progress counts the user's sampling steps that run (the sampler reports each step once,
    however many model calls it takes).
    """
    skipped = steps - sampling.steps_that_run(steps, strength)
    preview_every = ctx.settings.show_progress_every_n_steps

    def on_step(index: int, calls: int, latents: torch.Tensor) -> None:
        step = min(steps, -(-(index + 1) * steps // max(1, calls)))
        if stopped(ctx):
            raise sampling.StopSampling(latents)
        if ctx.token.cancelled:
            raise JobCancelled("cancelled")
        preview = None
        last = index + 1 >= calls  # the pass's last step: its latents are decoded next anyway, no preview
        if preview_every and (index + 1) % preview_every == 0 and not last and ctx.progress.previews_wanted():
            preview = decode_preview(pipe, latents)
        ctx.progress.update(done_before - skipped + step, total, preview=preview)

    return on_step


@torch.no_grad()
def decode_preview(pipe, latents: torch.Tensor):
    """A small preview of the first image of the batch (full VAE decode of one latent)."""
    from PIL import Image

    vae = pipe.vae
    with vae_upcast(pipe):
        lat = latents[:1].to(vae.device, vae.dtype) / vae.config.scaling_factor
        img = vae.decode(lat).sample[0].float().clamp(-1, 1)
    arr = ((img + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def sampler_settings(ctx: RunContext, req: GenerationRequest) -> samplers.SamplerSettings:
    """A1111's sampler parameters: the settings, with the request's ``eta`` and ``s_*`` fields over them."""
    s = ctx.settings

    def pick(value, default):
        return default if value is None else value

    return samplers.SamplerSettings(
        eta_ancestral=pick(req.eta, s.eta_ancestral), eta_ddim=pick(req.eta, s.eta_ddim),
        s_churn=pick(req.s_churn, s.s_churn), s_tmin=pick(req.s_tmin, s.s_tmin), s_tmax=pick(req.s_tmax, s.s_tmax),
        s_noise=pick(req.s_noise, s.s_noise), sigma_min=s.sigma_min, sigma_max=s.sigma_max, rho=s.rho,
        always_discard_next_to_last_sigma=s.always_discard_next_to_last_sigma,
        sgm_noise_multiplier=s.sgm_noise_multiplier, uni_pc_order=s.uni_pc_order,
        eta_noise_seed_delta=s.eta_noise_seed_delta,
    )


def model_sigmas(pipe) -> ModelSigmas:
    """The model's noise levels, from its scheduler config (betas, zero-terminal SNR)."""
    return ModelSigmas.from_config(pipe.scheduler.config)


def prediction_type(pipe) -> str:
    """What the model's UNet predicts: "epsilon" or "v_prediction"."""
    return pipe.scheduler.config.get("prediction_type", "epsilon")


AESTHETIC_SCORES = (6.0, 2.5)  # an SDXL refiner's time ids: A1111's high / low aesthetic scores (prompt / negative)


def aesthetic_score(model) -> tuple[float, float] | None:
    """The aesthetic scores an SDXL refiner's UNet is conditioned on (None for other models)."""
    return AESTHETIC_SCORES if model.is_refiner else None


def sampler_for(ctx: RunContext, req: GenerationRequest, sampler_name: str, scheduler: str, steps: int,
                batch_seeds: list[int]) -> samplers.SamplerRun:
    """The sampler of one batch iteration: schedule for ``steps``, step noise from the image seeds."""
    return samplers.prepare(sampler_name, scheduler, model_sigmas(ctx.model.pipe), steps, batch_seeds,
                            sampler_settings(ctx, req), sdxl=ctx.model.is_sdxl)


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
    params.update(samplers.infotext_params(plan.sampler_name, plan.scheduler, sampler_settings(ctx, req)))
    if ctx.model.vae_name:
        params["VAE hash"] = ctx.model.vae_hash
        params["VAE"] = ctx.model.vae_name
    if req.subseed_strength > 0:
        params["Variation seed"] = subseed
        params["Variation seed strength"] = req.subseed_strength
    if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
        params["Seed resize from"] = f"{req.seed_resize_from_w}x{req.seed_resize_from_h}"
    if req.s_min_uncond > 0:
        params["NGMS"] = req.s_min_uncond  # A1111's key for s_min_uncond
    if req.clip_skip > 1:
        params["Clip skip"] = req.clip_skip
    if req.tiling:
        params["Tiling"] = True  # A1111's key: the UNet and VAE padded circularly
    merging = token_merging.first_pass_ratio(req, ctx.settings)
    if merging > 0:
        params["Token merging ratio"] = merging
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


def is_sdxl_pipe(pipe) -> bool:
    """An SDXL pipeline (base or refiner): it has SDXL's second text encoder."""
    return getattr(pipe, "text_encoder_2", None) is not None


@contextmanager
def vae_upcast(pipe, upcast: bool | None = None) -> Iterator[None]:
    """The VAE in float32 for the block when it is float16 and its config says ``force_upcast``
    (SDXL's VAE overflows in float16, as its pipelines know), then back; ``upcast`` None: for SDXL
    pipelines only (SD 1.x/2.x VAEs run in their own dtype, as before)."""
    vae = pipe.vae
    if upcast is None:
        upcast = is_sdxl_pipe(pipe)
    own_dtype = vae.dtype
    widen = upcast and own_dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if widen:
        vae.to(dtype=torch.float32)
    try:
        yield
    finally:
        if widen:
            vae.to(dtype=own_dtype)


@torch.no_grad()
def encode_images(pipe, images: list, upcast: bool | None = None) -> torch.Tensor:
    """PIL images (same size, multiples of the VAE factor) to scaled latents: the mean of the VAE
    posterior (deterministic, so a request reproduces); ``upcast`` as ``vae_upcast``."""
    vae = pipe.vae
    with vae_upcast(pipe, upcast), vae_tiling_for(pipe, images[0].width, images[0].height):
        pixels = pipe.image_processor.preprocess(images).to(vae.device, vae.dtype)
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    return latents.to(vae.dtype)  # the VAE's own dtype again


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, upcast: bool | None = None) -> list:
    """Latents to PIL images; ``upcast`` as ``vae_upcast`` (SDXL's float16 VAE decodes in float32)."""
    vae = pipe.vae
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    with vae_upcast(pipe, upcast), vae_tiling_for(pipe, latents.shape[-1] * f, latents.shape[-2] * f):
        pixels = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(pixels, output_type="pil")
