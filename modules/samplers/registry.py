"""A1111's samplers and schedule types, by the names people know, as k-diffusion-style functions.

A1111 picks a sampler ("DPM++ 2M") and, separately since 1.9, a schedule type ("Karras"); older
versions folded both into one name ("DPM++ 2M Karras"), which still resolves here. Every one of
the 20 samplers runs with every one of the 12 schedule types (240 pairs), as in A1111.

- ``schedules.py``: the sigma schedules, pure functions of the model's noise levels and the steps;
- ``euler.py``, ``timestep.py``, ``dpm.py``, ``dpm_solver.py``, ``unipc.py``: the samplers, flat
  functions ``(denoiser, x, sigmas, options, callback, noise) -> x`` (``base.SamplerFn``);
- ``noise.py``: their noise, seeded per image (a generator per image, or a Brownian tree per image
  for the SDE samplers, as A1111);
- this file: the name table (``_SAMPLERS``, A1111 1.10's order and options), name resolution, and
  ``prepare``, which turns a sampler, a schedule type, the model's noise levels, the steps, the
  seeds and A1111's sampler settings into a ``SamplerRun`` the sampling core executes.

"Automatic" is each sampler's own default, as in A1111 (Karras for DPM++ 2M, Exponential for the
DPM++ SDE samplers, DDIM's uniform timesteps for DDIM and PLMS, SGM Uniform for LCM, otherwise
Uniform); the infotext records the schedule that ran.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from modules.samplers import dpm, dpm_solver, euler, schedules, timestep, unipc
from modules.samplers.base import NoiseSource, SamplerFn, SamplerOptions
from modules.samplers.noise import BrownianTreeNoise, GeneratorNoise
from modules.samplers.schedules import ModelSigmas, ScheduleOptions, ScheduleType

AUTOMATIC = "Automatic"


class UnknownSamplerError(ValueError):
    """A sampler name or schedule type that this registry does not know."""


@dataclass(frozen=True)
class Sampler:
    """One A1111 sampler: its function and A1111's options for it."""

    name: str  # A1111's display name
    aliases: tuple[str, ...]
    function: SamplerFn
    paper: str  # where the algorithm comes from (the function's docstring has the citation)
    schedule: str = "Uniform"  # what Automatic means for this sampler (a schedule label)
    eta: Literal["ancestral", "ddim", None] = None  # which eta setting it reads (None: no noise amount)
    uses_ensd: bool = False  # its step noise is seeded with seed + eta_noise_seed_delta (A1111's ENSD)
    brownian_noise: bool = False  # its noise is a Brownian tree per image (the SDE samplers)
    discard_next_to_last_sigma: bool = False  # A1111 drops the next-to-last sigma for it
    second_order: bool = False  # about two model calls per step
    cfg_divisor: float = 1.0  # the CFG scale is divided by it (DDIM CFG++: A1111's 12.5 maps to the paper's 1)


# A1111 1.10's samplers in its order (k-diffusion samplers, then the timestep samplers, LCM last).
# fmt: off
_SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", ("k_dpmpp_2m",), dpm.sample_dpmpp_2m, "Lu et al. 2022", schedule="Karras"),
    Sampler("DPM++ SDE", ("k_dpmpp_sde",), dpm.sample_dpmpp_sde, "Lu et al. 2022", schedule="Karras",
            eta="ancestral", brownian_noise=True, second_order=True),
    Sampler("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), dpm.sample_dpmpp_2m_sde, "Lu et al. 2022", schedule="Exponential",
            eta="ancestral", brownian_noise=True),
    Sampler("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), dpm.sample_dpmpp_2m_sde_heun, "Lu et al. 2022",
            schedule="Exponential", eta="ancestral", brownian_noise=True),
    Sampler("DPM++ 2S a", ("k_dpmpp_2s_a",), dpm.sample_dpmpp_2s_ancestral, "Lu et al. 2022", schedule="Karras",
            eta="ancestral", uses_ensd=True, second_order=True),
    Sampler("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), dpm.sample_dpmpp_3m_sde, "Lu et al. 2022", schedule="Exponential",
            eta="ancestral", brownian_noise=True, discard_next_to_last_sigma=True),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), euler.sample_euler_ancestral, "Karras et al. 2022",
            eta="ancestral", uses_ensd=True),
    Sampler("Euler", ("k_euler",), euler.sample_euler, "Karras et al. 2022"),
    Sampler("LMS", ("k_lms",), euler.sample_lms, "Karras et al. 2022"),
    Sampler("Heun", ("k_heun",), euler.sample_heun, "Karras et al. 2022", second_order=True),
    Sampler("DPM2", ("k_dpm_2",), euler.sample_dpm_2, "Karras et al. 2022", schedule="Karras",
            discard_next_to_last_sigma=True, second_order=True),
    Sampler("DPM2 a", ("k_dpm_2_a",), euler.sample_dpm_2_ancestral, "Karras et al. 2022", schedule="Karras",
            eta="ancestral", uses_ensd=True, discard_next_to_last_sigma=True, second_order=True),
    Sampler("DPM fast", ("k_dpm_fast",), dpm_solver.sample_dpm_fast, "Lu et al. 2022", eta="ancestral",
            uses_ensd=True),
    Sampler("DPM adaptive", ("k_dpm_ad",), dpm_solver.sample_dpm_adaptive, "Lu et al. 2022", eta="ancestral",
            uses_ensd=True),
    Sampler("Restart", ("restart",), euler.sample_restart, "Xu et al. 2023", schedule="Karras", uses_ensd=True,
            second_order=True),
    Sampler("DDIM", ("ddim",), timestep.sample_ddim, "Song et al. 2021", schedule="DDIM", eta="ddim",
            uses_ensd=True),
    Sampler("DDIM CFG++", ("ddim_cfgpp",), timestep.sample_ddim_cfgpp, "Chung et al. 2024", schedule="DDIM",
            eta="ddim", uses_ensd=True, cfg_divisor=12.5),
    Sampler("PLMS", ("plms",), timestep.sample_plms, "Liu et al. 2022", schedule="DDIM"),
    Sampler("UniPC", ("unipc",), unipc.sample_unipc, "Zhao et al. 2023"),
    Sampler("LCM", ("k_lcm", "lcm"), euler.sample_lcm, "Luo et al. 2023", schedule="SGM Uniform", uses_ensd=True),
)
# fmt: on

SAMPLER_NAMES: tuple[str, ...] = tuple(s.name for s in _SAMPLERS)
SCHEDULE_TYPES: tuple[str, ...] = tuple(t.label for t in schedules.SCHEDULES)

# Suffixes of A1111's legacy aliases such as "k_dpmpp_2m_ka".
_LEGACY_ALIAS_SUFFIXES = (("_ka", "Karras"), ("_exp", "Exponential"))


def _normalize(text: str) -> str:
    """Case-folded, with surrounding and repeated whitespace removed."""
    return " ".join(text.split()).casefold()


def _sampler_by_key() -> dict[str, Sampler]:
    """Every accepted spelling of every sampler (name and aliases), normalized."""
    return {_normalize(key): s for s in _SAMPLERS for key in (s.name, *s.aliases)}


def get_sampler(sampler_name: str) -> Sampler:
    """The row of a sampler name or alias (no legacy schedule suffix)."""
    sampler = _sampler_by_key().get(_normalize(sampler_name))
    if sampler is None:
        raise UnknownSamplerError(f"unknown sampler {sampler_name!r}; choose one of: {', '.join(SAMPLER_NAMES)}")
    return sampler


def get_schedule(name: str) -> ScheduleType:
    """The schedule type for an A1111 label, id or alias, in any case."""
    try:
        return schedules.get_schedule(name)
    except KeyError:
        raise UnknownSamplerError(f"unknown schedule type {name!r}; choose one of: {', '.join(SCHEDULE_TYPES)}") from None


def _split_sampler_name(sampler_name: str) -> tuple[Sampler, str | None]:
    """A sampler name, alias or legacy combined name → (sampler, schedule type it implies or None)."""
    key = _normalize(sampler_name)
    table = _sampler_by_key()
    if key in table:
        return table[key], None
    for stype in schedules.SCHEDULES:
        for spelling in (stype.name, stype.label, *stype.aliases):
            prefix = key.removesuffix(" " + _normalize(spelling))
            if stype.label != AUTOMATIC and prefix != key and prefix in table:
                return table[prefix], stype.label
    for suffix, label in _LEGACY_ALIAS_SUFFIXES:
        prefix = key.removesuffix(suffix)
        if prefix != key and prefix in table:
            return table[prefix], label
    legacy = "; legacy names like 'DPM++ 2M Karras' are accepted too"
    raise UnknownSamplerError(f"unknown sampler {sampler_name!r}; choose one of: {', '.join(SAMPLER_NAMES)}{legacy}")


def resolve(sampler_name: str, scheduler: str | None = None) -> tuple[str, str]:
    """Canonical (sampler name, schedule type label) for A1111 input.

    ``sampler_name`` may be a display name, an alias (``k_euler_a``) or a legacy combined name
    (``DPM++ 2M Karras``). ``scheduler`` may be a label (``Karras``) or an id (``karras``); None or
    "" means Automatic. A legacy name whose schedule contradicts an explicit non-Automatic
    ``scheduler`` is a ValueError.
    """
    sampler, implied = _split_sampler_name(sampler_name)
    requested = AUTOMATIC if scheduler is None or not scheduler.strip() else get_schedule(scheduler).label
    if implied is not None and requested not in (AUTOMATIC, implied):
        raise ValueError(
            f"sampler {sampler_name!r} already implies schedule type {implied!r}, which contradicts {scheduler!r}; "
            f"use sampler {sampler.name!r} with scheduler {requested!r}, or leave the scheduler Automatic"
        )
    return sampler.name, implied or requested


def effective_schedule_type(sampler_name: str, scheduler: str | None = None) -> str:
    """The schedule type that runs: Automatic becomes the sampler's own default."""
    name, schedule = resolve(sampler_name, scheduler)
    return get_sampler(name).schedule if schedule == AUTOMATIC else schedule


@dataclass(frozen=True)
class SamplerSettings:
    """A1111's "Sampler parameters" settings (and a request's overrides of them)."""

    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0 = no upper bound, as A1111
    s_noise: float = 1.0
    sigma_min: float = 0.0  # 0 = the model's
    sigma_max: float = 0.0  # 0 = the model's
    rho: float = 0.0  # 0 = the schedule's own
    always_discard_next_to_last_sigma: bool = False
    sgm_noise_multiplier: bool = False
    uni_pc_order: int = 3
    eta_noise_seed_delta: int = 0


@dataclass(frozen=True)
class SamplerRun:
    """A sampler ready to run on one batch: the function, its options, the full schedule for the
    user's steps, and its per-image noise. ``params`` are the infotext keys that say how it ran."""

    sampler: Sampler
    schedule: ScheduleType
    function: SamplerFn
    options: SamplerOptions
    sigmas: torch.Tensor  # steps + 1 levels (the run uses the last ones at strength < 1)
    seeds: tuple[int, ...]  # the batch's image seeds
    noise_seeds: tuple[int, ...]  # the step noise's seeds (ENSD added where the sampler uses it)
    sgm_noise_multiplier: bool = False
    params: dict[str, object] = field(default_factory=dict)

    def initial_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """What the seeded unit noise is multiplied by at the first level (A1111's SGM option:
        sqrt(1 + sigma^2), as SDXL's reference code)."""
        return torch.sqrt(1.0 + sigma**2) if self.sgm_noise_multiplier else sigma

    def noise_source(self, x: torch.Tensor, sigmas: torch.Tensor) -> NoiseSource:
        """The step noise for latents like ``x`` over the levels ``sigmas`` that run."""
        if self.sampler.brownian_noise:
            nonzero = sigmas[sigmas > 0]
            return BrownianTreeNoise(x, float(nonzero.min()), float(nonzero.max()), list(self.noise_seeds))
        generators = []
        for seed in self.noise_seeds:
            generator = torch.Generator("cpu").manual_seed(seed)
            torch.randn(tuple(x.shape[1:]), generator=generator)  # past the initial noise's draw, as A1111's ImageRNG
            generators.append(generator)
        return GeneratorNoise(x, generators)


def prepare(
    sampler_name: str,
    scheduler: str | None,
    model: ModelSigmas,
    steps: int,
    seeds: Sequence[int],
    settings: SamplerSettings = SamplerSettings(),
    *,
    sdxl: bool = False,
) -> SamplerRun:
    """The ``SamplerRun`` for a sampler and schedule type (A1111 names) on a model, for ``steps``
    and the batch's ``seeds``, with A1111's sampler settings."""
    name, requested = resolve(sampler_name, scheduler)
    sampler = get_sampler(name)
    stype = get_schedule(sampler.schedule if requested == AUTOMATIC else requested)
    opts = ScheduleOptions(sigma_min=settings.sigma_min or None, sigma_max=settings.sigma_max or None,
                           rho=settings.rho or None, sdxl=sdxl)
    discard = sampler.discard_next_to_last_sigma or settings.always_discard_next_to_last_sigma
    if discard:
        sigmas = schedules.discard_next_to_last(schedules.make_sigmas(stype, model, steps + 1, opts))
    else:
        sigmas = schedules.make_sigmas(stype, model, steps, opts)
    eta = {"ancestral": settings.eta_ancestral, "ddim": settings.eta_ddim, None: 0.0}[sampler.eta]
    options = SamplerOptions(eta=eta, s_churn=settings.s_churn, s_tmin=settings.s_tmin,
                             s_tmax=settings.s_tmax or math.inf, s_noise=settings.s_noise, order=settings.uni_pc_order)
    ensd = settings.eta_noise_seed_delta if sampler.uses_ensd else 0
    noise_seeds = tuple((seed + ensd) % 2**32 for seed in seeds)
    return SamplerRun(sampler, stype, sampler.function, options, sigmas, tuple(seeds), noise_seeds,
                      settings.sgm_noise_multiplier, infotext_params(name, stype.label, settings))


def infotext_params(sampler_name: str, schedule: str, s: SamplerSettings) -> dict[str, object]:
    """A1111's infotext keys for the sampler settings that changed a run from its defaults."""
    sampler = get_sampler(sampler_name)
    stype = get_schedule(sampler.schedule if schedule == AUTOMATIC else schedule)
    eta = {"ancestral": s.eta_ancestral, "ddim": s.eta_ddim, None: 0.0}[sampler.eta]
    ensd = s.eta_noise_seed_delta if sampler.uses_ensd else 0
    discard = sampler.discard_next_to_last_sigma or s.always_discard_next_to_last_sigma
    params: dict[str, object] = {}
    if sampler.eta == "ancestral" and eta != 1.0:
        params["Eta"] = eta
    if sampler.eta == "ddim" and eta != 0.0:
        params["Eta DDIM"] = eta
    if ensd:
        params["ENSD"] = ensd
    if s.s_churn:
        params.update({"Sigma churn": s.s_churn, "Sigma tmin": s.s_tmin, "Sigma tmax": s.s_tmax})
    if s.s_noise != 1.0:
        params["Sigma noise"] = s.s_noise
    if s.sigma_min:
        params["Schedule min sigma"] = s.sigma_min
    if s.sigma_max:
        params["Schedule max sigma"] = s.sigma_max
    if s.rho and stype.default_rho > 0:
        params["Schedule rho"] = s.rho
    if discard and not sampler.discard_next_to_last_sigma:
        params["Discard penultimate sigma"] = True
    if s.sgm_noise_multiplier:
        params["SGM noise multiplier"] = True
    if sampler.name == "UniPC" and s.uni_pc_order != 3:
        params["UniPC order"] = s.uni_pc_order
    return params


def sampler_list() -> list[dict[str, object]]:
    """The samplers in the shape of A1111's ``GET /sdapi/v1/samplers`` (option values as strings)."""
    items = []
    for s in _SAMPLERS:
        options: dict[str, str] = {}
        if s.schedule != "Uniform":
            options["scheduler"] = get_schedule(s.schedule).name
        for key, on in (("second_order", s.second_order), ("brownian_noise", s.brownian_noise),
                        ("discard_next_to_last_sigma", s.discard_next_to_last_sigma), ("uses_ensd", s.uses_ensd)):
            if on:
                options[key] = "True"
        items.append({"name": s.name, "aliases": list(s.aliases), "options": options})
    return items


def scheduler_list() -> list[dict[str, object]]:
    """The schedule types in the shape of A1111's ``GET /sdapi/v1/schedulers``."""
    return [
        {
            "name": t.name,
            "label": t.label,
            "aliases": list(t.aliases) or None,
            "default_rho": t.default_rho,
            "need_inner_model": t.need_inner_model,
        }
        for t in schedules.SCHEDULES
    ]
