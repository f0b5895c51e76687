"""txt2img for a group of queued jobs sampled as one batch (setting ``batch_queue_jobs``).

``modules.job_batching`` decides which jobs form a group; this routine runs them: every job is
planned (its seeds) and its prompts encoded as if it ran alone, then all the jobs' images go
through the sampling core in one batch (one UNet call per model evaluation, each job's rows
conditioned on its own prompts: ``SamplingInput.segments``), and each job gets back its own rows,
decoded, with its own infotexts, saved files and progress. The noise of every image, initial and
per step, is drawn from that image's own seed (``modules.samplers.noise``), so a job's images do
not depend on the jobs it was batched with.

Interrupt, Skip or a cancel of one job stops that job only: its image is the one sampling had
reached at that step (as alone), kept aside while the batch goes on for the others; the job ends
with the group. When every job has stopped, sampling stops.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from modules import job_batching
from modules.jobs import JobCancelled
from modules.processing import common, conditioning, sampling, txt2img
from modules.processing.context import RunContext
from modules.schemas import GenerationResult, Txt2ImgRequest


@dataclasses.dataclass
class Member:
    """One job of the group: its request resolved and encoded, its result so far."""

    index: int  # its place in the group (the outcome list)
    req: Txt2ImgRequest
    ctx: RunContext
    plan: common.BatchPlan
    cond: sampling.Conditioning
    result: GenerationResult
    on_step: sampling.StepCallback | None = None
    partial: torch.Tensor | None = None  # latents where Interrupt or Skip stopped it
    error: BaseException | None = None  # JobCancelled: it was cancelled while sampling
    stopped: bool = False


def run(reqs: list[Txt2ImgRequest], ctxs: list[RunContext]) -> list[GenerationResult | BaseException]:
    """One outcome per job, in order: its result, or the exception it ended with."""
    outcomes: list[Any] = [None] * len(reqs)
    members: list[Member] = []
    # 1. each job as alone: plan (sampler, size, seeds) and prompts to embeddings; a job refused here ends alone
    with torch.no_grad():
        for i, (req, ctx) in enumerate(zip(reqs, ctxs, strict=True)):
            try:
                plan = common.plan_batch(req, ctx)
                cond = conditioning.encode(ctx, req.prompt, req.negative_prompt, req.clip_skip, req.steps)
            except Exception as err:  # noqa: BLE001 - this job's own error: the others go on
                outcomes[i] = err
                continue
            ctx.progress.update(0, req.steps)
            members.append(Member(i, req, ctx, plan, cond, common.new_result(ctx, plan)))
    if not job_batching.conditionings_fit([m.cond for m in members]):  # AND weights or prompt lengths differ
        for m in members:
            outcomes[m.index] = _alone(m.req, m.ctx)
        return outcomes
    # 2. jobs stopped before sampling end as alone would (no image); the rest sample together
    active = []
    for m in members:
        try:
            going = common.go_on(m.ctx, m.result)
        except JobCancelled as err:
            outcomes[m.index] = err
            continue
        if going:
            active.append(m)
        else:
            outcomes[m.index] = m.result
    if active:
        _sample_together(active)
        for m in active:
            outcomes[m.index] = _finish(m)
    return outcomes


def _alone(req: Txt2ImgRequest, ctx: RunContext) -> GenerationResult | BaseException:
    """The job run by itself (txt2img.run), its exception as its outcome."""
    try:
        return txt2img.run(req, ctx)
    except Exception as err:  # noqa: BLE001 - this job's own error: the others go on
        return err


def _sample_together(active: list[Member]) -> None:
    """3. the seeded noise of every image, 4. one sampling run for all, 5. each job's rows decoded."""
    lead = active[0]
    pipe = lead.ctx.model.pipe
    noises, seeds = [], []
    for m in active:
        noises.append(common.initial_noise(m.req, m.plan, m.plan.seeds, m.plan.subseeds, m.ctx))
        seeds += m.plan.seeds
        m.ctx.hooks.batch(m.req.mode, m.req, 0, m.plan.seeds, m.plan.subseeds, m.ctx)
        m.on_step = common.step_hook(m.ctx, pipe, 0, m.req.steps, m.req.steps)
    rows = job_batching.row_slices([m.req.batch_size for m in active])

    def on_step(index: int, calls: int, denoised: torch.Tensor) -> None:
        """Each job's own step hook on its rows: progress, preview, and its Interrupt / Skip / cancel."""
        for m, own in zip(active, rows, strict=True):
            if m.stopped:
                continue
            try:
                m.on_step(index, calls, denoised[own])
            except sampling.StopSampling as stop:
                m.partial, m.stopped = stop.denoised.clone(), True
            except JobCancelled as err:
                m.error, m.stopped = err, True
        if all(m.stopped for m in active):
            raise sampling.StopSampling(denoised)

    inp = txt2img.first_pass_input(lead.req, lead.ctx, lead.plan, lead.cond, torch.cat(noises), seeds, on_step)
    inp = dataclasses.replace(inp, segments=tuple((m.cond, m.req.batch_size) for m in active))
    latents = sampling.sample(inp)
    for m, own in zip(active, rows, strict=True):
        if m.error is not None:
            continue
        mine = latents[own] if m.partial is None else m.partial.to(latents.device, latents.dtype)
        images = common.decode_latents(pipe, mine)
        images = m.ctx.hooks.images_decoded(m.req.mode, m.req, 0, images, m.plan.seeds, m.ctx)
        common.add_batch(m.result, m.req, m.ctx, m.plan, images, m.plan.seeds, m.plan.subseeds, {},
                         m.ctx.settings.outdir_txt2img_samples)


def _finish(m: Member) -> GenerationResult | BaseException:
    """6. the job's outcome: its result (marked interrupted or skipped as alone), or JobCancelled."""
    if m.error is not None:
        return m.error
    try:
        common.go_on(m.ctx, m.result)
    except JobCancelled as err:
        return err
    return m.result
