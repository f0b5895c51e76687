"""The refiner (A1111's ``refiner_checkpoint`` / ``refiner_switch_at``): a second checkpoint takes
over the sampling at a fraction of the steps.

1. ``plan``: the refiner's name and title (the infotext's ``Refiner``) and the switch fraction;
2. ``in_use``: the refiner from the model cache (``RunContext.refiners``: ``services.JobRefiners``),
   locked beside the job's model for the whole request (the two take turns on the device: with one
   model's room the one not in use is offloaded), with its own conditioning, encoded once per
   request (an SDXL refiner encodes with OpenCLIP bigG alone: ``conditioning.sdxl_encoders``); it must
   share the base's latent space (same family, latent channels and VAE factor);
3. the base runs steps [0, switch) of the schedule (``SamplingInput.end_step``), the refiner steps
   [switch, end) of the same schedule from the latents the base left, without new noise
   (``first_step``, ``resume_latents``; inpainting's mask still keeps the picture); the switch is
   A1111's (``switch_step``: by noise level, the first step whose timestep t has
   ``(999 - t) / 1000 >= refiner_switch_at``). An SDXL refiner's time ids
   end with the aesthetic score, A1111's 6.0 for the prompt and 2.5 for the negative prompt
   (``common.aesthetic_score``).

With the hires fix the refiner takes part in the second pass only (A1111's default for
``hires_fix_refiner_pass``), switching within it the same way.

The sampler's history (multistep samplers) starts afresh at the switch and its step noise comes
from the image seeds again; a request still reproduces exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from modules import prompts
from modules.checkpoints import CheckpointError
from modules.controlnet.models import FAMILY_NAMES, family_of_arch
from modules.model_loading import LoadedModel
from modules.processing import common, conditioning, sampling
from modules.processing.context import RunContext
from modules.samplers.schedules import ModelSigmas
from modules.schemas import GenerationRequest, RequestError


@dataclass(frozen=True)
class RefinerPlan:
    name: str  # the checkpoint, as the model cache knows it
    title: str  # "name [hash]", as the infotext records it
    switch_at: float


@dataclass(frozen=True)
class Refiner:
    """The refiner in use for one request: its model and its conditioning."""

    plan: RefinerPlan
    model: LoadedModel
    cond: sampling.Conditioning


def plan(req: GenerationRequest, ctx: RunContext) -> RefinerPlan | None:
    """The request's refiner (None without one); RequestError naming ``refiner_checkpoint`` when it cannot be."""
    if not req.refiner_checkpoint:
        return None
    if ctx.refiners is None:
        raise RequestError("refiner_checkpoint: no refiner can be used in this context")
    try:
        title = ctx.refiners.refiner_title(req.refiner_checkpoint)
    except CheckpointError as err:
        raise RequestError(f"refiner_checkpoint: {err}") from None
    return RefinerPlan(req.refiner_checkpoint, title, req.refiner_switch_at)


def switch_step(sigmas: torch.Tensor, model_sigmas: ModelSigmas, switch_at: float) -> int:
    """A1111's switch (1.10, by noise level): the refiner runs from the first step whose level's
    timestep t (the model's nearest level) has ``(999 - t) / 1000 >= switch_at``; ``sigmas`` are the
    levels of the steps that run (and the final one). A1111 checks at every model call, so a sampler
    with two calls per step may switch inside a step there; here the switch is at a step's start."""
    table = model_sigmas.sigmas
    for step, sigma in enumerate(sigmas[:-1].cpu().float()):
        t = int(torch.argmin((table - sigma).abs()))
        if (999 - t) / 1000 >= switch_at:
            return step
    return len(sigmas) - 1


def params(rp: RefinerPlan | None) -> dict[str, Any]:
    """A1111's infotext keys of the refiner."""
    return {"Refiner": rp.title, "Refiner switch at": rp.switch_at} if rp else {}


def check_compatible(base: LoadedModel, refiner: LoadedModel, field: str = "refiner_checkpoint") -> None:
    """The refiner (or a hires checkpoint: ``field``) must continue the base's latents: the same family,
    latent channels and VAE factor."""
    ours, theirs = family_of_arch(base.arch), family_of_arch(refiner.arch)
    same_latents = (refiner.pipe.vae.config.latent_channels == base.pipe.vae.config.latent_channels
                    and refiner.vae_scale_factor == base.vae_scale_factor
                    and refiner.pipe.unet.config.in_channels == refiner.pipe.vae.config.latent_channels)
    if ours != theirs or not same_latents:
        raise RequestError(f"{field}: {refiner.info.name} is {FAMILY_NAMES[theirs]} and does not continue the"
                           f" latents of {base.info.name} ({FAMILY_NAMES[ours]}); choose a checkpoint of the same family")


@contextmanager
def in_use(ctx: RunContext, rp: RefinerPlan | None, req: GenerationRequest, steps: int,
           hires: bool = False) -> Iterator[Refiner | None]:
    """The refiner locked for the block, with its conditioning of the request's prompts over a pass of
    ``steps`` (None without one); ``hires``: of the hires pass's prompts, scheduled as that pass."""
    if rp is None:
        yield None
        return
    with ctx.refiners.use_refiner(rp.name) as model:
        check_compatible(ctx.model, model)
        networks = ctx.networks.on_model(model) if ctx.networks is not None else None  # embeddings; LoRAs: the base's
        own = dataclasses.replace(ctx, model=model, networks=networks, controlnets=None)
        prompt, negative, base_steps = req.prompt, req.negative_prompt, None
        if hires:
            prompt, negative = req.hr_prompt or prompt, req.hr_negative_prompt or negative
            base_steps = req.steps
        prompt = prompts.parse_extra_networks(prompt)[0]
        negative = prompts.parse_extra_networks(negative)[0]
        with torch.no_grad():
            cond = conditioning.encode(own, prompt, negative, req.clip_skip, steps, base_steps)
        yield Refiner(rp, model, cond)


def refine(
    refiner: Refiner,
    ctx: RunContext,
    req: GenerationRequest,
    base_input: sampling.SamplingInput,
    latents: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The rest of ``base_input``'s run (from its ``end_step``) on the refiner, from the base's ``latents``
    (a switch at step 0, possible in img2img, is the whole run on the refiner from the init latents).
    ``mask``: inpainting's latent mask (a 9-channel base has none in its input; the refiner blends)."""
    ctx.refiners.to_device(refiner.model)  # with one model's room, the base goes to the CPU meanwhile
    try:
        return _refine(refiner, base_input, latents, base_input.mask if mask is None else mask)
    finally:
        ctx.refiners.to_device(ctx.model)  # the base decodes and runs the next image


def _refine(refiner: Refiner, base_input: sampling.SamplingInput, latents: torch.Tensor,
            mask: torch.Tensor | None) -> torch.Tensor:
    pipe = refiner.model.pipe
    sdxl = refiner.model.is_sdxl
    return sampling.sample(dataclasses.replace(
        base_input,
        unet=pipe.unet,
        model_sigmas=common.model_sigmas(pipe),
        prediction_type=common.prediction_type(pipe),
        device=pipe._execution_device,
        conditioning=refiner.cond,
        resume_latents=latents if base_input.end_step else None,
        mask=mask,
        inpaint_channels=None,
        control=None,
        size_condition=base_input.size_condition if sdxl else None,
        aesthetic_score=common.aesthetic_score(refiner.model),
        first_step=base_input.end_step,
        end_step=None,
    ))


def sample(refiner: Refiner | None, ctx: RunContext, req: GenerationRequest, inp: sampling.SamplingInput,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """``inp``'s run through the core: the base to the refiner's switch and the refiner the rest
    (``refine``), or the base alone without a refiner; returns the final latents."""
    base = split(refiner, inp)
    latents = sampling.sample(base)
    return latents if refiner is None else refine(refiner, ctx, req, base, latents, mask)


def split(refiner: Refiner | None, inp: sampling.SamplingInput) -> sampling.SamplingInput:
    """The base's part of a run: ``inp`` ending at the refiner's switch (``inp`` itself without a refiner)."""
    if refiner is None:
        return inp
    levels = inp.sampler.sigmas
    run = sampling.steps_that_run(len(levels) - 1, inp.strength)
    end = switch_step(levels[len(levels) - 1 - run:], inp.model_sigmas, refiner.plan.switch_at)
    return dataclasses.replace(inp, end_step=end)
