"""txt2img: text to images, one routine from request to saved result.

The sampling runs through the one core (``processing.sampling``) from seeded noise at strength 1,
with the ControlNets' residuals when the request has units; the hires fix's second pass is the
same core's img2img run at the target size. A refiner (``processing.refiner``) takes over the
steps after its switch.
"""

from __future__ import annotations

import random
from contextlib import nullcontext

import torch

from modules import token_merging
from modules.controlnet import apply as controlnet
from modules.processing import common, conditioning, hires, refiner, sampling
from modules.processing.context import RunContext
from modules.schemas import GenerationResult, Txt2ImgRequest


def run(req: Txt2ImgRequest, ctx: RunContext, rng: random.Random | None = None) -> GenerationResult:
    # 1. resolve the request against the model and settings (sampler, size, seeds, styles, hires, ControlNet)
    req = common.apply_request_styles(req, ctx)
    plan = common.plan_batch(req, ctx, rng)
    hp = hires.plan_hires(req, ctx, plan) if req.enable_hr else None
    units = controlnet.prepare_units(req.controlnet_units, ctx, plan.width, plan.height)
    rp = refiner.plan(req, ctx)  # with the hires fix: in the second pass (A1111's default)
    pipe = ctx.model.pipe
    # 2. prompts to embeddings, each distinct text once for the whole request, scheduled over the steps
    with torch.no_grad():
        cond = conditioning.encode(ctx, req.prompt, req.negative_prompt, req.clip_skip, req.steps)
    per_iteration = req.steps + (hires.pass_steps(req, hp) if hp else 0)
    total_steps = per_iteration * req.n_iter
    ctx.progress.update(0, total_steps)
    result = common.new_result(ctx, plan, hp.width if hp else None, hp.height if hp else None)
    result.detected_maps = controlnet.detected_maps(units, plan.width, plan.height)
    extra_params = {**(hires.params(req, hp) if hp else {}), **controlnet.infotext_params(units), **refiner.params(rp)}
    # 3. the ControlNet models, the refiner and the hires checkpoint (if any), locked for the whole request
    with (controlnet.controlnets_in_use(ctx, units) as control,
          refiner.in_use(ctx, rp, req, hp.steps if hp else req.steps, hires=hp is not None) as ref,
          hires.checkpoint_in_use(ctx, req) if hp else nullcontext(ctx) as hr_ctx):
        hr_cond = None
        if hp:  # the second pass's prompts (encoded again on a hires checkpoint)
            with torch.no_grad():
                hr_cond = hires.conditioning(req, hr_ctx, cond if hr_ctx is ctx else None, req.steps, hp)
            extra_params.update(hires.checkpoint_params(ctx, hr_ctx))
        hr_control = control.resized(hp.width, hp.height) if control and hp else None  # maps at the hires size
        for n in common.iterations(ctx, result, req.n_iter):  # Interrupt and Skip keep the partial image
            # 4. seeded noise on the CPU, one draw per image
            batch_seeds, batch_subseeds = plan.iteration(n, req.batch_size)
            noise = common.initial_noise(req, plan, batch_seeds, batch_subseeds, ctx)
            ctx.hooks.batch(req.mode, req, n, batch_seeds, batch_subseeds, ctx)
            # 5. denoise (the sampler's step noise seeded from the image seeds; with a refiner and no
            #    hires fix, the base runs to the switch and the refiner the rest), then decode
            on_step = common.step_hook(ctx, pipe, n * per_iteration, req.steps, total_steps)
            inp = first_pass_input(req, ctx, plan, cond, noise, batch_seeds, on_step, control)
            latents = refiner.sample(None if hp else ref, ctx, req, inp)
            if hp:  # 5b. hires fix: upscale, then the img2img pass at the target size
                if hr_ctx is not ctx:  # the hires checkpoint takes the device for its pass
                    ctx.refiners.to_device(hr_ctx.model)
                images = hires.second_pass(req, hr_ctx, plan, hp, latents, hr_cond, batch_seeds, batch_subseeds,
                                           n * per_iteration + req.steps, total_steps, control=hr_control, ref=ref)
                if hr_ctx is not ctx:
                    ctx.refiners.to_device(ctx.model)
            else:
                images = common.decode_latents(pipe, latents)
            images = ctx.hooks.images_decoded(req.mode, req, n, images, batch_seeds, ctx)  # extensions' image_decoded
            # 6. infotext per image, saved atomically
            common.add_batch(result, req, ctx, plan, images, batch_seeds, batch_subseeds, extra_params,
                             ctx.settings.outdir_txt2img_samples)
    return result


def first_pass_input(
    req: Txt2ImgRequest,
    ctx: RunContext,
    plan: common.BatchPlan,
    cond: sampling.Conditioning,
    noise: torch.Tensor,
    batch_seeds: list[int],
    on_step: sampling.StepCallback,
    control: controlnet.Control | None = None,
) -> sampling.SamplingInput:
    """The core's input for sampling ``noise`` (one image per seed of ``batch_seeds``) at strength 1."""
    pipe = ctx.model.pipe
    return sampling.SamplingInput(
        unet=pipe.unet,
        sampler=common.sampler_for(ctx, req, plan.sampler_name, plan.scheduler, req.steps, batch_seeds),
        model_sigmas=common.model_sigmas(pipe),
        prediction_type=common.prediction_type(pipe),
        device=pipe._execution_device,
        conditioning=cond,
        noise=noise,
        steps=req.steps,
        cfg_scale=req.cfg_scale,
        control=control,
        size_condition=(plan.height, plan.width) if ctx.model.is_sdxl else None,
        aesthetic_score=common.aesthetic_score(ctx.model),
        on_step=on_step,
        hooks=ctx.hooks,
        s_min_uncond=req.s_min_uncond,
        token_merging_ratio=token_merging.first_pass_ratio(req, ctx.settings),
    )
