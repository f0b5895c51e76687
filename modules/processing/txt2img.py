"""txt2img: text to images, one routine from request to saved result.

Without ControlNet units the diffusers pipeline runs the sampling; with units the same steps run
through ``common.denoise`` (strength 1, no init latents), which adds the ControlNets' residuals.
"""

from __future__ import annotations

import random

import torch

from modules.controlnet import apply as controlnet
from modules.processing import common, hires
from modules.processing.context import RunContext
from modules.schemas import GenerationResult, Txt2ImgRequest


def run(req: Txt2ImgRequest, ctx: RunContext, rng: random.Random | None = None) -> GenerationResult:
    # 1. resolve the request against the model and settings (sampler, size, seeds, styles, hires, ControlNet)
    req = common.apply_request_styles(req, ctx)
    plan = common.plan_batch(req, ctx, rng)
    hp = hires.plan_hires(req, ctx, plan) if req.enable_hr else None
    units = controlnet.prepare_units(req.controlnet_units, ctx, plan.width, plan.height)
    pipe = ctx.model.pipe
    # 2. prompts to embeddings, once for the whole request
    with torch.no_grad():
        prompt_kwargs = common.encode_prompts(ctx, req.prompt, req.negative_prompt, req.clip_skip)
        hr_cond = hires.conditioning(req, ctx, prompt_kwargs) if hp else None
    per_iteration = req.steps + (hires.pass_steps(req, hp) if hp else 0)
    total_steps = per_iteration * req.n_iter
    ctx.progress.update(0, total_steps)
    result = common.new_result(ctx, plan, hp.width if hp else None, hp.height if hp else None)
    extra_params = {**(hires.params(req, hp) if hp else {}), **controlnet.infotext_params(units)}
    device, dtype = pipe._execution_device, pipe.unet.dtype
    # 3. the ControlNet models (if any), locked on the device for the whole request
    with controlnet.controlnets_in_use(ctx, units) as control:
        hr_control = control.resized(hp.width, hp.height) if control and hp else None  # maps at the hires size
        for n in range(req.n_iter):
            ctx.token.check()
            # 4. seeded noise on the CPU, one draw per image
            batch_seeds, batch_subseeds = plan.iteration(n, req.batch_size)
            latents = common.initial_noise(req, plan, batch_seeds, batch_subseeds, ctx).to(device, dtype)
            generators = [torch.Generator("cpu").manual_seed(s) for s in batch_seeds]
            # 5. denoise and decode, with a sampler built from the model's own scheduler config (the
            #    worker holds the model's lock, so no other job sees the swap; it is undone after)
            try:
                with common.sampler_installed(pipe, common.scheduler_for(ctx, plan, batch_seeds[0])):
                    if control is None:
                        images = _pipeline_pass(req, ctx, plan, pipe, prompt_kwargs, latents, generators,
                                                n * per_iteration, total_steps, hp is not None)
                    else:
                        images = _controlled_pass(req, ctx, pipe, prompt_kwargs, latents, generators,
                                                  n * per_iteration, total_steps, control, hp is not None)
                if hp:  # 5b. hires fix: upscale, then the img2img pass at the target size
                    images = hires.second_pass(req, ctx, plan, hp, images, hr_cond, batch_seeds, batch_subseeds,
                                               n * per_iteration + req.steps, total_steps, control=hr_control)
            except common.SkipIteration:
                ctx.token.clear_skip()
                result.skipped += 1
                continue
            # 6. infotext per image, saved atomically
            common.add_batch(result, req, ctx, plan, images, batch_seeds, batch_subseeds, extra_params,
                             ctx.settings.outdir_txt2img_samples)
    return result


def _pipeline_pass(req, ctx, plan, pipe, prompt_kwargs, latents, generators, done, total, keep_latents: bool) -> list:
    """The first pass through the diffusers pipeline (no ControlNet): PIL images, or latents for hires."""
    callback = common.step_callback(ctx, done, req.steps, total, ctx.settings.show_progress_every_n_steps)
    return pipe(
        **prompt_kwargs,
        num_images_per_prompt=req.batch_size,
        latents=latents,
        generator=generators,
        num_inference_steps=req.steps,
        guidance_scale=req.cfg_scale,
        width=plan.width,
        height=plan.height,
        output_type="latent" if keep_latents else "pil",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents"],
    ).images


def _controlled_pass(req, ctx, pipe, prompt_kwargs, noise, generators, done, total, control, keep_latents: bool):
    """The first pass with ControlNet residuals: the img2img loop from pure noise (strength 1)."""
    callback = common.img2img_callback(ctx, done, req.steps, 1.0, total)
    latents = common.denoise(ctx, pipe, common.Conditioning.from_kwargs(prompt_kwargs), None, noise, req.steps, 1.0,
                             req.cfg_scale, generators, callback, control=control)
    return latents if keep_latents else common.decode_latents(pipe, latents)
