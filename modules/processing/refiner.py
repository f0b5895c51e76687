"""The refiner (A1111's ``refiner_checkpoint`` / ``refiner_switch_at``): a second checkpoint takes
over the sampling at a fraction of the steps.

1. ``plan``: the refiner's name and title (the infotext's ``Refiner``) and the switch fraction;
2. ``in_use``: the refiner from the model cache (``RunContext.refiners``: ``Services.use_refiner``),
   locked beside the job's model for the whole request, with its own conditioning, encoded once per
   request (an SDXL refiner encodes with OpenCLIP bigG alone: ``conditioning.sdxl_encoders``); it must
   share the base's latent space (same family, latent channels and VAE factor);
3. the base runs steps [0, switch) of the schedule (``SamplingInput.end_step``), the refiner steps
   [switch, end) of the same schedule from the latents the base left, without new noise
   (``first_step``); the switch is A1111's: the first step whose fraction of the steps that run is
   past ``refiner_switch_at`` (with 20 steps at 0.8, the base runs 17). An SDXL refiner's time ids
   end with the aesthetic score, A1111's 6.0 for the prompt and 2.5 for the negative prompt
   (``common.aesthetic_score``).

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


def switch_step(steps: int, switch_at: float) -> int:
    """A1111's switch: the refiner runs from the first step whose fraction ``step / steps`` is past ``switch_at``."""
    return next((step for step in range(steps) if step / steps > switch_at), steps)


def params(rp: RefinerPlan | None) -> dict[str, Any]:
    """A1111's infotext keys of the refiner."""
    return {"Refiner": rp.title, "Refiner switch at": rp.switch_at} if rp else {}


def check_compatible(base: LoadedModel, refiner: LoadedModel) -> None:
    """The refiner must continue the base's latents: the same family, latent channels and VAE factor."""
    ours, theirs = family_of_arch(base.arch), family_of_arch(refiner.arch)
    same_latents = (refiner.pipe.unet.config.in_channels == base.pipe.unet.config.in_channels
                    and refiner.vae_scale_factor == base.vae_scale_factor)
    if ours != theirs or not same_latents:
        raise RequestError(f"refiner_checkpoint: {refiner.info.name} is {FAMILY_NAMES[theirs]} and does not continue the"
                           f" latents of {base.info.name} ({FAMILY_NAMES[ours]}); choose a refiner of the same family")


@contextmanager
def in_use(ctx: RunContext, rp: RefinerPlan | None, req: GenerationRequest, steps: int) -> Iterator[Refiner | None]:
    """The refiner locked for the block, with its conditioning of the request's prompts (None without one)."""
    if rp is None:
        yield None
        return
    with ctx.refiners.use_refiner(rp.name) as model:
        check_compatible(ctx.model, model)
        own = dataclasses.replace(ctx, model=model, networks=None, controlnets=None)  # <lora:...> tags: the base's
        prompt = prompts.parse_extra_networks(req.prompt)[0]
        negative = prompts.parse_extra_networks(req.negative_prompt)[0]
        with torch.no_grad():
            cond = conditioning.encode(own, prompt, negative, req.clip_skip, steps)
        yield Refiner(rp, model, cond)


def refine(
    refiner: Refiner,
    ctx: RunContext,
    req: GenerationRequest,
    base_input: sampling.SamplingInput,
    latents: torch.Tensor,
) -> torch.Tensor:
    """The rest of ``base_input``'s run (from its ``end_step``) on the refiner, from the base's ``latents``."""
    pipe = refiner.model.pipe
    sdxl = refiner.model.is_sdxl
    return sampling.sample(dataclasses.replace(
        base_input,
        unet=pipe.unet,
        model_sigmas=common.model_sigmas(pipe),
        prediction_type=common.prediction_type(pipe),
        device=pipe._execution_device,
        conditioning=refiner.cond,
        init_latents=latents,
        mask=None,
        inpaint_channels=None,
        control=None,
        size_condition=base_input.size_condition if sdxl else None,
        aesthetic_score=common.aesthetic_score(refiner.model),
        first_step=base_input.end_step,
        end_step=None,
    ))


def base_end(refiner: Refiner | None, steps: int, strength: float = 1.0) -> int | None:
    """Where the base model stops: the switch among the steps that run (None: it runs them all)."""
    if refiner is None:
        return None
    return switch_step(sampling.steps_that_run(steps, strength), refiner.plan.switch_at)
