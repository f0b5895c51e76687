"""Hires fix for txt2img (A1111's semantics): a first pass at width x height, an upscale, then an
img2img pass at the target size with ``denoising_strength``.

The target is ``hr_scale`` times the first pass, or ``hr_resize_x``/``hr_resize_y`` (one of them
0: the other side keeps the aspect ratio; both given: stretched to exactly that size), rounded
down to a multiple of the VAE factor. A "Latent ..." upscaler interpolates the latents; any other
upscaler decodes, upscales the pixels and encodes again. The second pass draws its noise from the
same seeds at the target size, so a request reproduces. A target past ``settings.max_side`` is a
RequestError before anything runs.

``hr_checkpoint_name`` runs the second pass on another checkpoint of the same family
(``checkpoint_in_use``): it comes from the model cache beside the job's model, as the refiner does
(the two take turns on the device), encodes the prompts with its own text encoders and decodes with
its own VAE; the infotext's ``Hires checkpoint`` names it. It cannot be combined with a refiner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from modules import prompt_schedule, samplers, seeds, token_merging, upscalers
from modules.checkpoints import CheckpointError
from modules.processing import common, refiner, sampling
from modules.processing import conditioning as prompt_conditioning
from modules.processing.context import RunContext
from modules.schemas import RequestError, Txt2ImgRequest


@dataclass(frozen=True)
class HiresPlan:
    width: int
    height: int
    upscaler: upscalers.Upscaler
    steps: int  # the second pass's schedule length
    sampler_name: str
    scheduler: str
    token_merging_ratio: float = 0.0  # the second pass's (``modules.token_merging.hires_ratio``)


def target_size(req: Txt2ImgRequest, width: int, height: int, factor: int) -> tuple[int, int]:
    x, y = req.hr_resize_x, req.hr_resize_y
    if not x and not y:
        w, h = int(width * req.hr_scale), int(height * req.hr_scale)
    elif not y:
        w, h = x, x * height // width
    elif not x:
        w, h = y * width // height, y
    else:
        w, h = x, y
    return max(factor, w // factor * factor), max(factor, h // factor * factor)


def plan_hires(req: Txt2ImgRequest, ctx: RunContext, plan: common.BatchPlan) -> HiresPlan:
    """Validate the hires fields: upscaler, sampler and the target size against max_side."""
    upscaler = upscalers.get_upscaler(req.hr_upscaler, ctx.settings.models_dir, field="hr_upscaler")
    w, h = target_size(req, plan.width, plan.height, ctx.model.vae_scale_factor)
    upscalers.check_size(w, h, ctx.settings.max_side, "hr_scale/hr_resize")
    sampler_name, schedule = plan.sampler_name, plan.scheduler
    if req.hr_sampler_name or req.hr_scheduler:
        try:
            sampler_name, schedule = samplers.resolve(
                req.hr_sampler_name or plan.sampler_name, req.hr_scheduler or plan.scheduler
            )
        except ValueError as err:
            raise RequestError(f"hr_sampler_name: {err}") from None
    return HiresPlan(w, h, upscaler, req.hr_second_pass_steps or req.steps, sampler_name, schedule,
                     token_merging.hires_ratio(req, ctx.settings))


def pass_steps(req: Txt2ImgRequest, hp: HiresPlan) -> int:
    """Steps the second pass actually runs."""
    return sampling.steps_that_run(hp.steps, req.denoising_strength)


def params(req: Txt2ImgRequest, hp: HiresPlan) -> dict[str, Any]:
    """A1111's hires infotext keys, in its order."""
    out: dict[str, Any] = {"Denoising strength": req.denoising_strength}
    if req.hr_resize_x or req.hr_resize_y:
        out["Hires resize"] = f"{req.hr_resize_x}x{req.hr_resize_y}"
    else:
        out["Hires upscale"] = req.hr_scale
    if req.hr_second_pass_steps:
        out["Hires steps"] = req.hr_second_pass_steps
    out["Hires upscaler"] = hp.upscaler.name
    if req.hr_sampler_name:
        out["Hires sampler"] = hp.sampler_name
    if req.hr_scheduler:
        out["Hires schedule type"] = hp.scheduler
    if req.hr_prompt:
        out["Hires prompt"] = req.hr_prompt
    if req.hr_negative_prompt:
        out["Hires negative prompt"] = req.hr_negative_prompt
    if hp.token_merging_ratio > 0:
        out["Token merging ratio hr"] = hp.token_merging_ratio
    return out


@contextmanager
def checkpoint_in_use(ctx: RunContext, req: Txt2ImgRequest) -> Iterator[RunContext]:
    """The context the second pass runs in: ``ctx`` on ``hr_checkpoint_name``'s model (locked beside the
    job's model for the block), or ``ctx`` itself without one (or when it names the job's own checkpoint).
    RequestError naming ``hr_checkpoint_name`` when it cannot be used."""
    name = req.hr_checkpoint_name
    if not name:
        yield ctx
        return
    if ctx.refiners is None:
        raise RequestError("hr_checkpoint_name: no other checkpoint can be used in this context")
    try:
        title = ctx.refiners.refiner_title(name)
    except CheckpointError as err:
        raise RequestError(f"hr_checkpoint_name: {err}") from None
    if title == ctx.refiners.refiner_title(ctx.model.info.name):
        yield ctx
        return
    if req.refiner_checkpoint:
        raise RequestError("hr_checkpoint_name: a hires checkpoint and a refiner (refiner_checkpoint) cannot be used"
                           " together; leave one out")
    with ctx.refiners.use_refiner(name) as model:
        refiner.check_compatible(ctx.model, model, "hr_checkpoint_name")
        networks = ctx.networks.on_model(model) if ctx.networks is not None else None
        yield dataclasses.replace(ctx, model=model, networks=networks)


def checkpoint_params(ctx: RunContext, hr_ctx: RunContext) -> dict[str, Any]:
    """A1111's ``Hires checkpoint`` key when the second pass ran on another checkpoint."""
    if hr_ctx.model is ctx.model or ctx.refiners is None:
        return {}
    return {"Hires checkpoint": ctx.refiners.refiner_title(hr_ctx.model.info.name)}


def conditioning(
    req: Txt2ImgRequest, ctx: RunContext, first: sampling.Conditioning | None, first_steps: int, hp: HiresPlan
) -> sampling.Conditioning:
    """The second pass's prompts: hr_prompt / hr_negative_prompt where given, scheduled as A1111
    schedules the hires pass (edit steps counted on from the first pass); the first pass's
    conditioning when the prompts are the same and have no edits (``first`` None: encoded again,
    for a hires checkpoint)."""
    prompt, negative = req.hr_prompt or req.prompt, req.hr_negative_prompt or req.negative_prompt
    same = (prompt, negative) == (req.prompt, req.negative_prompt)
    if first is not None and same and prompt_schedule.is_static(prompt) and prompt_schedule.is_static(negative):
        return first
    with torch.no_grad():
        return prompt_conditioning.encode(ctx, prompt, negative, req.clip_skip, hp.steps, base_steps=first_steps)


def second_pass(
    req: Txt2ImgRequest,
    ctx: RunContext,
    plan: common.BatchPlan,
    hp: HiresPlan,
    latents: torch.Tensor,
    cond: sampling.Conditioning,
    batch_seeds: list[int],
    batch_subseeds: list[int],
    done_before: int,
    total: int,
    control=None,
    ref=None,
) -> list:
    """Upscale the first pass's latents and run the img2img pass; returns PIL images (the first
    pass's, at its size, when Interrupt or Skip stopped it).

    ``control``: the ControlNet units (``modules.controlnet.apply.Control``) with their maps at the target size;
    ``ref``: the refiner (``processing.refiner.Refiner``), which takes over at its switch within this pass.
    """
    pipe = ctx.model.pipe
    if common.stopped(ctx):  # Interrupt or Skip in the first pass: its partial image, as A1111 returns it
        return common.decode_latents(pipe, latents, upcast=ctx.model.is_sdxl)
    f = ctx.model.vae_scale_factor
    lh, lw = hp.height // f, hp.width // f
    nothing_to_denoise = pass_steps(req, hp) == 0
    if hp.upscaler.is_latent:
        init = upscalers.upscale_latents(latents.float(), hp.upscaler, lh, lw)
    else:
        firsts = common.decode_latents(pipe, latents)
        big = [upscalers.upscale_image(im, hp.upscaler, hp.width, hp.height) for im in firsts]
        if nothing_to_denoise:
            return big  # the upscaled images as they are
        init = common.encode_images(pipe, big)
    if nothing_to_denoise:
        return common.decode_latents(pipe, init)
    noise = seeds.create_noise((latents.shape[1], lh, lw), batch_seeds, batch_subseeds, req.subseed_strength)
    inp = sampling.SamplingInput(
        unet=pipe.unet,
        sampler=common.sampler_for(ctx, req, hp.sampler_name, hp.scheduler, hp.steps, batch_seeds),
        model_sigmas=common.model_sigmas(pipe),
        prediction_type=common.prediction_type(pipe),
        device=pipe._execution_device,
        conditioning=cond,
        noise=noise,
        steps=hp.steps,
        cfg_scale=req.cfg_scale,
        strength=req.denoising_strength,
        init_latents=init,
        control=control,
        size_condition=(hp.height, hp.width) if ctx.model.is_sdxl else None,
        aesthetic_score=common.aesthetic_score(ctx.model),
        on_step=common.step_hook(ctx, pipe, done_before, hp.steps, total, req.denoising_strength),
        hooks=ctx.hooks,
        s_min_uncond=req.s_min_uncond,
        token_merging_ratio=hp.token_merging_ratio,
    )
    out = refiner.sample(ref, ctx, req, inp)  # the refiner takes over at its switch within this pass
    return common.decode_latents(pipe, out)
