"""Steps shared by the generation modes: planning a batch, prompts, the sampling loop, infotext."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from modules import infotext, samplers, seeds
from modules.jobs import JobCancelled
from modules.processing.context import RunContext
from modules.schemas import GenerationRequest, RequestError


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


def initial_noise(req: GenerationRequest, plan: BatchPlan, batch_seeds: list[int], batch_subseeds: list[int], ctx: RunContext) -> torch.Tensor:
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
    if ctx.model.is_sdxl:  # SDXL: the pipeline's own encoder (no A1111 weighting yet)
        return {"prompt": prompt, "negative_prompt": negative, "clip_skip": clip_skip - 1 or None}
    from modules import prompts

    try:
        cond, uncond = prompts.encode_prompt_pair(
            pipe.tokenizer, pipe.text_encoder, prompt, negative, clip_skip=clip_skip, device=pipe._execution_device
        )
    except prompts.PromptTooLong as err:
        raise RequestError(f"prompt: {err}") from None
    return {"prompt_embeds": cond, "negative_prompt_embeds": uncond}


def step_callback(ctx: RunContext, done_before: int, total: int, preview_every: int):
    """The pipeline's per-step hook: cancel, skip, progress and the occasional preview."""

    def callback(pipe, i: int, t, tensors: dict) -> dict:
        if ctx.token.cancelled:
            raise JobCancelled("interrupted")
        if ctx.token.skipped:
            raise SkipIteration()
        preview = None
        if preview_every and (i + 1) % preview_every == 0 and "latents" in tensors:
            preview = decode_preview(pipe, tensors["latents"])
        ctx.progress.update(done_before + i + 1, total, preview=preview)
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


def scheduler_for(ctx: RunContext, plan: BatchPlan):
    return samplers.make_scheduler(ctx.model.pipe.scheduler.config, plan.sampler_name, plan.scheduler)


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
    if req.subseed_strength > 0:
        params["Variation seed"] = subseed
        params["Variation seed strength"] = req.subseed_strength
    if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
        params["Seed resize from"] = f"{req.seed_resize_from_w}x{req.seed_resize_from_h}"
    if req.clip_skip > 1:
        params["Clip skip"] = req.clip_skip
    return params


def finish_params(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    params["Version"] = ctx.version
    return params


def make_infotext(req: GenerationRequest, params: dict[str, Any]) -> str:
    return infotext.build_infotext(req.prompt, req.negative_prompt, params)
