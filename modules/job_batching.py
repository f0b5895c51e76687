"""Batched queue (setting ``batch_queue_jobs``): which waiting txt2img jobs can share one UNet batch.

With the setting on, the worker that takes a txt2img job from the queue also takes the jobs waiting
right behind it that fit with it (``group_size``), up to ``batch_queue_max`` images in all, and
runs them as one batch through the sampling core (``processing.txt2img_group``). Each job keeps its
own prompt, negative prompt, seeds, variation seed, clip skip, saving and progress; everything else
must be the same (``batch_key``): checkpoint, VAE, size, sampler, schedule, steps, CFG scale, the
sampler's eta and churn values, tiling. Jobs that use what a merged batch does not do run alone:
a batch count above 1, the hires fix, a refiner, ControlNet units, styles, extension scripts,
LoRA and other ``<...>`` tags, and any job while extensions hook into processing.

The group is the run of fitting jobs at the head of the queue: a job that does not fit ends it,
so no job ever runs before one submitted earlier that it was not merged with (FIFO order is kept).
A job's own error before sampling (its prompt, its sampler) fails that job alone; an error inside
the shared sampling (the model itself) fails every job of the group, as it would each alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modules.prompts import parse_extra_networks

GROUP_KINDS = ("txt2img",)  # the job kinds a merged batch runs

# Fields each job of a merged batch keeps for itself: they change the conditioning or the seeded
# noise of its own rows, or what happens to its own images, never the shared UNet batch.
PER_JOB_FIELDS = frozenset({
    "prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "seed_resize_from_h",
    "seed_resize_from_w", "batch_size", "clip_skip", "save_images", "send_images", "override_settings",
    "override_settings_restore_afterwards",
})

# Extension hook points that see one job's processing: with any of them in use, jobs run alone.
PROCESSING_HOOKS = ("before_process", "around_process", "after_process", "batch", "image_decoded", "cfg_denoiser")


def batch_key(kind: str, request: Any) -> dict[str, Any] | None:
    """What must be equal for two jobs to share a batch: every request field but the per-job ones
    (``PER_JOB_FIELDS``); None for a job that always runs alone (see the module docstring)."""
    if kind not in GROUP_KINDS:
        return None
    if request.n_iter != 1 or getattr(request, "enable_hr", False) or request.refiner_checkpoint:
        return None
    if request.controlnet_units or request.styles or request.extension_script or request.extension_alwayson:
        return None
    if parse_extra_networks(request.prompt)[1] or parse_extra_networks(request.negative_prompt)[1]:
        return None  # LoRAs change the model for the whole batch: one job's would apply to all
    return request.model_dump(exclude=set(PER_JOB_FIELDS))


def group_size(head: tuple[str, Any], waiting: Sequence[tuple[str, Any]], max_images: int) -> int:
    """How many of the ``waiting`` (kind, request) pairs, from the front, run in one batch with
    ``head``: those with head's ``batch_key``, until one differs or the images would pass ``max_images``."""
    key = batch_key(*head)
    if key is None:
        return 0
    images = head[1].batch_size
    count = 0
    for kind, request in waiting:
        if batch_key(kind, request) != key or images + request.batch_size > max_images:
            break
        images += request.batch_size
        count += 1
    return count


def row_slices(counts: Sequence[int]) -> list[slice]:
    """The rows of each job in a merged batch: job i has ``counts[i]`` images, in job order."""
    slices, start = [], 0
    for count in counts:
        slices.append(slice(start, start + count))
        start += count
    return slices


def conditionings_fit(conditionings: Sequence[Any]) -> bool:
    """Whether the jobs' encoded prompts (``processing.sampling.Conditioning``) can share one UNet
    batch: the same ``AND`` parts with the same weights, and every embedding the same number of
    tokens (a prompt past 75 tokens has more: such a job runs alone rather than be padded)."""
    if not conditionings:
        return True
    weights = [weight for _, weight in conditionings[0].parts]
    shape = conditionings[0].uncond.entries[0][1].tokens.shape
    for conditioning in conditionings:
        if [weight for _, weight in conditioning.parts] != weights:
            return False
        schedules = (conditioning.uncond, *(schedule for schedule, _ in conditioning.parts))
        if any(embedding.tokens.shape != shape for schedule in schedules for _, embedding in schedule.entries):
            return False
    return True
