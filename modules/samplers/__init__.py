"""A1111 sampler names and schedule types, mapped to diffusers schedulers.

A1111 picks a sampler ("DPM++ 2M") and, separately since 1.9, a schedule type ("Karras"). Older
versions folded both into one name ("DPM++ 2M Karras"); those legacy names still resolve here.

Each sampler is one row of ``_SAMPLERS``: the diffusers class that implements it, the fixed options
that make that class behave like the A1111 sampler, and which schedule types the class supports.
``make_scheduler`` builds the scheduler with ``Cls.from_config(model_config, **overrides)`` so the
model's own ``prediction_type``, betas and ``num_train_timesteps`` are kept.

Where diffusers has no exact twin of a k-diffusion sampler the row says so in its ``note``.
A1111 samplers with no honest diffusers counterpart (DPM fast, DPM adaptive, Restart, DDIM CFG++)
are not offered, and neither are the schedule types diffusers cannot express (Polyexponential,
KL Optimal, Align Your Steps, Simple, Normal, DDIM).
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import diffusers

AUTOMATIC = "Automatic"


class UnknownSamplerError(ValueError):
    """A sampler name or schedule type that this registry does not know."""


class UnsupportedScheduleError(ValueError):
    """A known sampler combined with a schedule type its diffusers scheduler cannot do."""


@dataclass(frozen=True)
class ScheduleType:
    """One A1111 schedule type and the diffusers settings that express it."""

    name: str  # A1111's id, e.g. "karras"
    label: str  # A1111's display name, e.g. "Karras"
    aliases: tuple[str, ...] = ()
    default_rho: float = -1.0
    need_inner_model: bool = False
    sigma_flag: str | None = None  # diffusers flag that selects this sigma schedule
    timestep_spacing: str | None = None  # diffusers timestep_spacing this type forces
    needs: tuple[str, ...] = ()  # Python packages diffusers needs for it


@dataclass(frozen=True)
class Sampler:
    """One A1111 sampler and the diffusers scheduler that stands in for it."""

    name: str  # A1111's display name
    aliases: tuple[str, ...]
    scheduler_class: str  # name of the diffusers class
    options: Mapping[str, Any] = field(default_factory=dict)  # fixed from_config overrides
    sigma_schedules: bool = False  # class has use_karras/exponential/beta_sigmas
    timestep_spacing: bool = False  # class honours timestep_spacing
    a1111_default: str = AUTOMATIC  # what A1111 uses for "Automatic" (Karras / Exponential)
    needs: tuple[str, ...] = ()  # Python packages the diffusers class needs
    note: str = ""  # how the diffusers scheduler differs from A1111's sampler


_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

# A1111 modules/sd_schedulers.py order, limited to what diffusers can express.
_SCHEDULE_TYPES: tuple[ScheduleType, ...] = (
    ScheduleType("automatic", AUTOMATIC),
    ScheduleType("uniform", "Uniform", need_inner_model=True, timestep_spacing="linspace"),
    ScheduleType("karras", "Karras", default_rho=7.0, sigma_flag="use_karras_sigmas"),
    ScheduleType("exponential", "Exponential", sigma_flag="use_exponential_sigmas"),
    ScheduleType("sgm_uniform", "SGM Uniform", aliases=("SGMUniform",), need_inner_model=True, timestep_spacing="trailing"),
    ScheduleType("beta", "Beta", need_inner_model=True, sigma_flag="use_beta_sigmas", needs=("scipy",)),
)

# A1111 schedule types that exist there but have no diffusers equivalent: named in errors.
_A1111_ONLY_SCHEDULE_TYPES = ("Polyexponential", "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM")

_DPMPP_MULTISTEP = "DPMSolverMultistepScheduler"

# A1111's sampler order (k-diffusion samplers, then the timestep samplers, then LCM).
# fmt: off
_SAMPLERS: tuple[Sampler, ...] = (
    Sampler(
        "DPM++ 2M", ("k_dpmpp_2m",), _DPMPP_MULTISTEP,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint", "use_lu_lambdas": False},
        sigma_schedules=True, timestep_spacing=True, a1111_default="Karras",
    ),
    Sampler(
        "DPM++ SDE", ("k_dpmpp_sde",), "DPMSolverSDEScheduler",
        sigma_schedules=True, timestep_spacing=True, a1111_default="Karras", needs=("torchsde",),
        note="Brownian-tree noise is seeded from make_scheduler(seed=...); without a seed diffusers draws one at random.",
    ),
    Sampler(
        "DPM++ 2M SDE", ("k_dpmpp_2m_sde",), _DPMPP_MULTISTEP,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint", "use_lu_lambdas": False},
        sigma_schedules=True, timestep_spacing=True, a1111_default="Exponential",
        note="Noise comes from the pipeline generator, not from a Brownian tree as in A1111.",
    ),
    Sampler(
        "DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), _DPMPP_MULTISTEP,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun", "use_lu_lambdas": False},
        sigma_schedules=True, timestep_spacing=True, a1111_default="Exponential",
        note="Noise comes from the pipeline generator, not from a Brownian tree as in A1111.",
    ),
    Sampler(
        "DPM++ 2S a", ("k_dpmpp_2s_a",), "DPMSolverSinglestepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint", "lower_order_final": True},
        sigma_schedules=True, a1111_default="Karras",
        note=(
            "Approximation: diffusers has no ancestral DPM++ 2S. The singlestep 2nd-order SDE solver is the "
            "closest: stochastic like '2S a', but it spends one model call per step where A1111 spends two."
        ),
    ),
    Sampler(
        "DPM++ 3M SDE", ("k_dpmpp_3m_sde",), _DPMPP_MULTISTEP,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "midpoint", "use_lu_lambdas": False},
        sigma_schedules=True, timestep_spacing=True, a1111_default="Exponential",
        note="A1111 also drops the next-to-last sigma; diffusers does not. Below 15 steps diffusers lowers the order at the end.",
    ),
    Sampler(
        "Euler a", ("k_euler_a", "k_euler_ancestral"), "EulerAncestralDiscreteScheduler",
        timestep_spacing=True,
    ),
    Sampler(
        "Euler", ("k_euler",), "EulerDiscreteScheduler",
        sigma_schedules=True, timestep_spacing=True,
    ),
    Sampler(
        "LMS", ("k_lms",), "LMSDiscreteScheduler",
        sigma_schedules=True, timestep_spacing=True, needs=("scipy",),
    ),
    Sampler(
        "Heun", ("k_heun",), "HeunDiscreteScheduler",
        sigma_schedules=True, timestep_spacing=True,
    ),
    Sampler(
        "DPM2", ("k_dpm_2",), "KDPM2DiscreteScheduler",
        sigma_schedules=True, timestep_spacing=True, a1111_default="Karras",
        note="A1111 drops the next-to-last sigma; diffusers does not.",
    ),
    Sampler(
        "DPM2 a", ("k_dpm_2_a",), "KDPM2AncestralDiscreteScheduler",
        sigma_schedules=True, timestep_spacing=True, a1111_default="Karras",
        note="A1111 drops the next-to-last sigma; diffusers does not.",
    ),
    Sampler(
        "DDIM", ("ddim",), "DDIMScheduler",
        timestep_spacing=True,
        note="eta is a pipeline argument (A1111's default is 0).",
    ),
    Sampler(
        "PLMS", ("plms",), "PNDMScheduler",
        {"skip_prk_steps": True},
        timestep_spacing=True,
    ),
    Sampler(
        "UniPC", ("unipc",), "UniPCMultistepScheduler",
        {"solver_order": 3, "solver_type": "bh2", "predict_x0": True},
        sigma_schedules=True, timestep_spacing=True,
        note="Order 3 with the bh2 variant, A1111's defaults.",
    ),
    Sampler(
        "LCM", ("k_lcm", "lcm"), "LCMScheduler",
        note="Meant for LCM-distilled models or LoRAs; it picks its own timesteps.",
    ),
)
# fmt: on

SAMPLER_NAMES: tuple[str, ...] = tuple(s.name for s in _SAMPLERS)
SCHEDULE_TYPES: tuple[str, ...] = tuple(t.label for t in _SCHEDULE_TYPES)

# Suffixes of A1111's legacy aliases such as "k_dpmpp_2m_ka".
_LEGACY_ALIAS_SUFFIXES = (("_ka", "Karras"), ("_exp", "Exponential"))


def _normalize(text: str) -> str:
    """Case-folded, with surrounding and repeated whitespace removed."""
    return " ".join(text.split()).casefold()


def _sampler_by_key() -> dict[str, Sampler]:
    """Every accepted spelling of every sampler (name and aliases), normalized."""
    table: dict[str, Sampler] = {}
    for sampler in _SAMPLERS:
        for key in (sampler.name, *sampler.aliases):
            table[_normalize(key)] = sampler
    return table


def _schedule_by_key() -> dict[str, ScheduleType]:
    """Every accepted spelling of every schedule type (id, label, aliases), normalized."""
    table: dict[str, ScheduleType] = {}
    for stype in _SCHEDULE_TYPES:
        for key in (stype.name, stype.label, *stype.aliases):
            table[_normalize(key)] = stype
    return table


def get_sampler(sampler_name: str) -> Sampler:
    """The registry row of a canonical or alias sampler name (no legacy schedule suffix)."""
    sampler = _sampler_by_key().get(_normalize(sampler_name))
    if sampler is None:
        raise UnknownSamplerError(f"unknown sampler {sampler_name!r}; choose one of: {', '.join(SAMPLER_NAMES)}")
    return sampler


def _schedule_type(name: str) -> ScheduleType:
    """The schedule type for an A1111 label, id or alias."""
    stype = _schedule_by_key().get(_normalize(name))
    if stype is not None:
        return stype
    hint = ""
    if _normalize(name) in {_normalize(x) for x in _A1111_ONLY_SCHEDULE_TYPES}:
        hint = " (A1111 has it, but diffusers cannot express it)"
    raise UnknownSamplerError(f"unknown schedule type {name!r}{hint}; choose one of: {', '.join(SCHEDULE_TYPES)}")


def _split_sampler_name(sampler_name: str) -> tuple[Sampler, str | None]:
    """A sampler name, alias or legacy combined name → (sampler, schedule type it implies or None)."""
    key = _normalize(sampler_name)
    samplers = _sampler_by_key()
    if key in samplers:
        return samplers[key], None
    for skey, stype in _schedule_by_key().items():
        prefix = key.removesuffix(" " + skey)
        if stype.label != AUTOMATIC and prefix != key and prefix in samplers:
            return samplers[prefix], stype.label
    for suffix, label in _LEGACY_ALIAS_SUFFIXES:
        prefix = key.removesuffix(suffix)
        if prefix != key and prefix in samplers:
            return samplers[prefix], label
    legacy = "; legacy names like 'DPM++ 2M Karras' are accepted too"
    raise UnknownSamplerError(f"unknown sampler {sampler_name!r}; choose one of: {', '.join(SAMPLER_NAMES)}{legacy}")


def _supports(sampler: Sampler, stype: ScheduleType) -> bool:
    """Whether the sampler's diffusers class can express the schedule type."""
    if stype.label == AUTOMATIC:
        return True
    if stype.sigma_flag is not None:  # Karras, Exponential, Beta
        return sampler.sigma_schedules
    if stype.label == "Uniform":  # plain sigmas, and linspace spacing where the class has spacing
        return sampler.sigma_schedules or sampler.timestep_spacing
    return sampler.timestep_spacing  # SGM Uniform


def supported_schedule_types(sampler_name: str) -> tuple[str, ...]:
    """The schedule types (A1111 labels) the sampler's diffusers scheduler can do."""
    sampler = _split_sampler_name(sampler_name)[0]
    return tuple(stype.label for stype in _SCHEDULE_TYPES if _supports(sampler, stype))


def resolve(sampler_name: str, scheduler: str | None = None) -> tuple[str, str]:
    """Canonical (sampler name, schedule type label) for A1111 input.

    ``sampler_name`` may be a display name, an alias (``k_euler_a``) or a legacy combined name
    (``DPM++ 2M Karras``). ``scheduler`` may be a label (``Karras``) or an A1111 id (``karras``);
    None or "" means Automatic. A legacy name whose schedule contradicts an explicit non-Automatic
    ``scheduler`` is a ValueError, and so is a schedule type the sampler cannot do.
    """
    sampler, implied = _split_sampler_name(sampler_name)
    requested = AUTOMATIC if scheduler is None or not scheduler.strip() else _schedule_type(scheduler).label
    if implied is not None and requested not in (AUTOMATIC, implied):
        raise ValueError(
            f"sampler {sampler_name!r} already implies schedule type {implied!r}, which contradicts {scheduler!r}; "
            f"use sampler {sampler.name!r} with scheduler {requested!r}, or leave the scheduler Automatic"
        )
    schedule = implied or requested
    supported = supported_schedule_types(sampler.name)
    if schedule not in supported:
        raise UnsupportedScheduleError(
            f"sampler {sampler.name!r} cannot use schedule type {schedule!r} "
            f"(its diffusers {sampler.scheduler_class} does not support it); supported: {', '.join(supported)}"
        )
    return sampler.name, schedule


def effective_schedule_type(sampler_name: str, scheduler: str | None = None) -> str:
    """The concrete schedule type used: Automatic becomes A1111's default for the sampler.

    Automatic stays Automatic for samplers that use their own default spacing (e.g. Euler).
    """
    name, schedule = resolve(sampler_name, scheduler)
    if schedule == AUTOMATIC:
        return get_sampler(name).a1111_default
    return schedule


def _is_installed(package: str) -> bool:
    """Whether a Python package can be imported (without importing it)."""
    return importlib.util.find_spec(package) is not None


def _check_packages(sampler: Sampler, stype: ScheduleType) -> None:
    """Raise ImportError naming the packages diffusers needs for this sampler and schedule."""
    missing = [p for p in (*sampler.needs, *stype.needs) if not _is_installed(p)]
    if missing:
        raise ImportError(
            f"sampler {sampler.name!r} with schedule type {stype.label!r} needs the Python package(s) "
            f"{', '.join(missing)}, which are not installed; install them or choose another sampler"
        )


def _schedule_overrides(sampler: Sampler, stype: ScheduleType) -> dict[str, Any]:
    """from_config overrides that select the schedule type (sigma flags set explicitly)."""
    overrides: dict[str, Any] = {}
    if sampler.sigma_schedules:
        for flag in _SIGMA_FLAGS:
            overrides[flag] = flag == stype.sigma_flag
    if sampler.timestep_spacing and stype.timestep_spacing is not None:
        overrides["timestep_spacing"] = stype.timestep_spacing
    return overrides


def make_scheduler(
    base_config: Mapping[str, Any],
    sampler_name: str,
    scheduler: str | None = AUTOMATIC,
    *,
    seed: int | list[int] | None = None,
) -> Any:
    """A new diffusers scheduler for an A1111 sampler and schedule type.

    ``base_config`` is the model's own scheduler config (``pipe.scheduler.config`` or a dict); its
    betas, ``prediction_type``, ``num_train_timesteps`` and ``timestep_spacing`` are kept, while the
    sigma-schedule flags are always set explicitly so a Karras base config cannot leak into Uniform.
    Automatic means A1111's default for the sampler (Karras for DPM++ 2M, Exponential for DPM++ 2M
    SDE, otherwise the scheduler's own schedule). ``seed`` seeds DPM++ SDE's Brownian-tree noise
    (one int, or one per image of the batch); the other samplers draw noise from the pipeline's
    generator and ignore it.
    """
    name, schedule = resolve(sampler_name, scheduler)
    sampler = get_sampler(name)
    stype = _schedule_type(effective_schedule_type(name, schedule))
    _check_packages(sampler, stype)
    overrides = {**sampler.options, **_schedule_overrides(sampler, stype)}
    if sampler.scheduler_class == "DPMSolverSDEScheduler":
        overrides["noise_sampler_seed"] = seed  # always explicit: a stale seed must not leak in
    scheduler_class = getattr(diffusers, sampler.scheduler_class)
    return scheduler_class.from_config(_accepted_config(scheduler_class, base_config), **overrides)


def _accepted_config(scheduler_class: type, base_config: Mapping[str, Any]) -> dict[str, Any]:
    """The base config without keys the class does not take (diffusers would warn and ignore them).

    Keys starting with "_" are diffusers' own bookkeeping and are kept.
    """
    accepted = set(inspect.signature(scheduler_class.__init__).parameters)
    return {k: v for k, v in base_config.items() if k in accepted or k.startswith("_")}


def sampler_list() -> list[dict[str, Any]]:
    """The samplers in the shape of A1111's ``GET /sdapi/v1/samplers``."""
    items = []
    for sampler in _SAMPLERS:
        options = {"diffusers_scheduler": sampler.scheduler_class}
        if sampler.a1111_default != AUTOMATIC:
            options["scheduler"] = _schedule_type(sampler.a1111_default).name
        items.append({"name": sampler.name, "aliases": list(sampler.aliases), "options": options})
    return items


def scheduler_list() -> list[dict[str, Any]]:
    """The schedule types in the shape of A1111's ``GET /sdapi/v1/schedulers``."""
    return [
        {
            "name": stype.name,
            "label": stype.label,
            "aliases": list(stype.aliases) or None,
            "default_rho": stype.default_rho,
            "need_inner_model": stype.need_inner_model,
        }
        for stype in _SCHEDULE_TYPES
    ]
