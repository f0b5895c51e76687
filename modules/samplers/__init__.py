"""A1111's samplers and schedule types as k-diffusion-style functions.

``registry`` holds the names and turns a choice into a run; the names callers use are here.
"""

from modules.samplers.registry import (
    AUTOMATIC,
    SAMPLER_NAMES,
    SCHEDULE_TYPES,
    Sampler,
    SamplerRun,
    SamplerSettings,
    UnknownSamplerError,
    effective_schedule_type,
    get_sampler,
    get_schedule,
    infotext_params,
    prepare,
    resolve,
    sampler_list,
    scheduler_list,
)

__all__ = [
    "AUTOMATIC",
    "SAMPLER_NAMES",
    "SCHEDULE_TYPES",
    "Sampler",
    "SamplerRun",
    "SamplerSettings",
    "UnknownSamplerError",
    "effective_schedule_type",
    "get_sampler",
    "get_schedule",
    "infotext_params",
    "prepare",
    "resolve",
    "sampler_list",
    "scheduler_list",
]
