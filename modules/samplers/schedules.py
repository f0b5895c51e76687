"""Sigma schedules: the decreasing noise levels a sampler walks, one small pure function per
A1111 (1.10) schedule type.

A model trained on 1000 discrete timesteps has 1000 noise levels, ``ModelSigmas``. A schedule
picks ``steps + 1`` levels from (or between) them, from high to low, and ends at 0 so that the
last step lands on clean latents. Every schedule function has one signature::

    fn(ms: ModelSigmas, steps: int, opts: ScheduleOptions) -> torch.Tensor   # float32, on the CPU

``SCHEDULES`` is A1111's table of schedule types (same order, ids, labels, aliases, default rho
and need_inner_model), ``get_schedule`` looks one up by any spelling and ``make_sigmas`` checks
the input and runs it. The functions follow A1111's ``modules/sd_schedulers.py`` and
k-diffusion's ``sampling.py`` and ``external.py`` (to float32 rounding), so an A1111 infotext
gives the same sigmas here. Where A1111 does something other than "steps + 1 levels
ending at 0", the function's docstring says so:

* KL Optimal ends at sigma_min, not 0 (A1111 appends no 0): the last step leaves that much noise.
* DDIM can return more levels than asked: it steps by ``1000 // steps`` timesteps from t=1, so
  e.g. 30 steps give 31 levels. Count steps as ``len(sigmas) - 1``.
* Align Your Steps reproduces its 10-step table verbatim at ``steps=11`` (A1111 compares the
  step count with the table's length, 11) and interpolates it for every other count, 10 included.
  One deliberate deviation: at ``steps=1`` A1111 gives [0.029, 0] (a blank image); this gives
  [14.615, 0].
* Simple repeats levels above 1000 steps (A1111 too).

Automatic is not a function: it means the sampler's own default schedule (Karras for DPM++ 2M,
Exponential for DPM++ 2M SDE, ...), and Uniform where the sampler names none (A1111 then calls
the model's ``get_sigmas``, which is ``uniform``). The sampler registry resolves it before calling
``make_sigmas``.

Samplers that A1111 marks ``discard_next_to_last_sigma`` (DPM2, DPM2 a), or every sampler when
the "always discard next-to-last sigma" setting is on, run one step more and drop the
second-to-last level::

    sigmas = discard_next_to_last(make_sigmas(schedule, ms, steps + 1, opts))   # steps + 1 levels
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# A1111 (modules/sd_models.py rescale_zero_terminal_snr_abar) pins the last alphas_cumprod of a
# zero-terminal-SNR schedule here instead of 0, so that sigma_max stays finite (about 4519).
ZERO_SNR_LAST_ALPHAS_CUMPROD = 4.8973451890853435e-08

KARRAS_RHO = 7.0  # Karras et al. 2022, section 3
POLYEXPONENTIAL_RHO = 1.0  # k-diffusion's default: plain exponential
BETA_ALPHA = 0.6  # A1111's beta_dist_alpha / beta_dist_beta defaults (Lee et al. 2024)
BETA_BETA = 0.6

# Align Your Steps, 10 steps (Sabour et al. 2024, NVIDIA's "how to" page, as in A1111 1.10).
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)

# diffusers' defaults for keys a scheduler config leaves out (DDPMScheduler / EulerDiscreteScheduler).
_CONFIG_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "rescale_betas_zero_snr": False,
}
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# --- the model's noise levels -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ModelSigmas:
    """The model's noise level at each training timestep: ``sigmas[t]``, ascending, float32, CPU.

    ``sigma_to_t`` and ``t_to_sigma`` convert between levels and continuous timesteps the way
    k-diffusion's ``DiscreteSchedule`` does (linear in log sigma between integer timesteps).
    """

    sigmas: torch.Tensor
    log_sigmas: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        sigmas = torch.as_tensor(self.sigmas).detach().to("cpu", torch.float32).contiguous()
        if sigmas.ndim != 1 or len(sigmas) < 2:
            raise ValueError(f"model sigmas must be a 1-D tensor of at least 2 levels, got shape {tuple(sigmas.shape)}")
        if not bool(torch.isfinite(sigmas).all()) or not bool((sigmas > 0).all()):
            raise ValueError("model sigmas must be finite and positive")
        if not bool((sigmas[1:] > sigmas[:-1]).all()):
            raise ValueError("model sigmas must increase strictly with the timestep")
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "log_sigmas", sigmas.log())

    @classmethod
    def from_config(cls, scheduler_config: Mapping[str, Any]) -> ModelSigmas:
        """The levels of a diffusers scheduler config (``pipe.scheduler.config`` or its JSON).

        Uses ``trained_betas``, ``beta_schedule`` (linear, scaled_linear, squaredcos_cap_v2),
        ``beta_start``, ``beta_end``, ``num_train_timesteps`` and ``rescale_betas_zero_snr``;
        missing keys take diffusers' defaults. alphas_cumprod is accumulated in float64 and stored
        as float32, as the LDM code A1111 runs does. Zero terminal SNR follows A1111: rescale
        sqrt(alphas_cumprod) to end at 0, then pin the last value to
        ``ZERO_SNR_LAST_ALPHAS_CUMPROD`` (diffusers' Euler uses 2**-24 instead).
        """
        config = {**_CONFIG_DEFAULTS, **{k: v for k, v in scheduler_config.items() if v is not None}}
        alphas_cumprod = np.cumprod(1.0 - _betas(config))
        if config["rescale_betas_zero_snr"]:
            alphas_cumprod = _rescale_zero_terminal_snr(alphas_cumprod)
        ac = torch.from_numpy(alphas_cumprod).to(torch.float32)
        return cls(((1 - ac) / ac) ** 0.5)

    @property
    def num_timesteps(self) -> int:
        """How many training timesteps (levels) the model has, usually 1000."""
        return len(self.sigmas)

    @property
    def sigma_min(self) -> float:
        """The lowest level (timestep 0)."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """The highest level (the last timestep)."""
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The continuous timestep of each sigma (any shape), interpolated in log sigma and
        clamped to [0, num_timesteps - 1]; float32 on the input's device."""
        sigma = torch.as_tensor(sigma)
        device = sigma.device
        log_sigma = sigma.detach().to("cpu", torch.float32).log()
        low = (torch.searchsorted(self.log_sigmas, log_sigma.reshape(-1), right=True) - 1).clamp(0, self.num_timesteps - 2)
        low_log, high_log = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((low_log - log_sigma.reshape(-1)) / (low_log - high_log)).clamp(0, 1)
        return (low + w).reshape(sigma.shape).to(device)

    def t_to_sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """The level at each continuous timestep (any shape), interpolated in log sigma between
        the neighbouring integer timesteps; t is clamped to the table. float32 on t's device."""
        t = torch.as_tensor(t)
        device = t.device
        t = t.detach().to("cpu", torch.float32).clamp(0, self.num_timesteps - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t - low
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp().to(device)


def _betas(config: Mapping[str, Any]) -> np.ndarray:
    """float64 betas of a diffusers config."""
    n = int(config["num_train_timesteps"])
    if config["trained_betas"] is not None:
        return np.asarray(config["trained_betas"], dtype=np.float64)
    schedule = config["beta_schedule"]
    start, end = float(config["beta_start"]), float(config["beta_end"])
    if schedule == "linear":
        return np.linspace(start, end, n, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    if schedule == "squaredcos_cap_v2":
        return _cosine_betas(n)
    raise ValueError(f"unknown beta_schedule {schedule!r}; expected one of {', '.join(_BETA_SCHEDULES)} or trained_betas")


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021 cosine schedule (diffusers' squaredcos_cap_v2)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)])


def _rescale_zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", with
    A1111's finite last value."""
    root = np.sqrt(alphas_cumprod)
    first, last = root[0], root[-1]
    rescaled = ((root - last) * first / (first - last)) ** 2
    rescaled[-1] = ZERO_SNR_LAST_ALPHAS_CUMPROD
    return rescaled


# --- options and helpers ------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleOptions:
    """A1111's schedule settings. None means the model's levels or the schedule's own default.

    ``sigma_min``/``sigma_max`` reach the schedules built from a range (Karras, Exponential,
    Polyexponential, SGM Uniform, KL Optimal, Normal, Beta); Uniform, Simple, DDIM and Align Your
    Steps use the model's levels or their table, as in A1111. ``rho`` reaches Karras and
    Polyexponential. ``sdxl`` picks Align Your Steps' SDXL table.
    """

    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None
    sdxl: bool = False
    beta_alpha: float = BETA_ALPHA
    beta_beta: float = BETA_BETA

    def __post_init__(self) -> None:
        for name in ("sigma_min", "sigma_max", "rho", "beta_alpha", "beta_beta"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"schedule option {name} must be a finite number > 0 (or None for the default), got {value!r}")


def _sigma_range(ms: ModelSigmas, opts: ScheduleOptions) -> tuple[float, float]:
    """(sigma_min, sigma_max): the overrides, else the model's."""
    lo = ms.sigma_min if opts.sigma_min is None else opts.sigma_min
    hi = ms.sigma_max if opts.sigma_max is None else opts.sigma_max
    return lo, hi


def _append_zero(sigmas: torch.Tensor | list[float] | np.ndarray) -> torch.Tensor:
    """The levels as a float32 CPU tensor with a final 0."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def discard_next_to_last(sigmas: torch.Tensor) -> torch.Tensor:
    """A1111's "discard next-to-last sigma": drop the second-to-last level. Build the schedule
    with ``steps + 1`` and pass it here to get ``steps + 1`` levels back."""
    if len(sigmas) < 3:
        raise ValueError(f"discarding the next-to-last sigma needs at least 3 levels, got {len(sigmas)}")
    return torch.cat([sigmas[:-2], sigmas[-1:]])


# --- the schedules ------------------------------------------------------------------------------


def uniform(ms: ModelSigmas, steps: int, opts: ScheduleOptions) -> torch.Tensor:
    """Timesteps evenly spaced from the last to 0 (k-diffusion DiscreteSchedule.get_sigmas)."""
    t = torch.linspace(ms.num_timesteps - 1, 0, steps)
    return _append_zero(ms.t_to_sigma(t))


def karras(ms: ModelSigmas, steps: int, opts: ScheduleOptions) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: levels evenly spaced in sigma ** (1 / rho)."""
    lo, hi = _sigma_range(ms, opts)
    rho = KARRAS_RHO if opts.rho is None else opts.rho
    ramp = torch.linspace(0, 1, steps)
    hi_inv, lo_inv = hi ** (1 / rho), lo ** (1 / rho)
    return _append_zero((hi_inv + ramp * (lo_inv - hi_inv)) ** rho)


def exponential(ms: ModelSigmas, steps: int, opts: ScheduleOptions) -> torch.Tensor:
    """Levels evenly spaced in log sigma (k-diffusion get_sigmas_exponential)."""
    lo, hi = _sigma_range(ms, opts)
    return _append_zero(torch.linspace(math.log(hi), math.log(lo), steps).exp())


def polyexponential(ms: ModelSigmas, steps: int, opts: ScheduleOptions) -> torch.Tensor:
    """log sigma follows ramp ** rho from log sigma_max to log sigma_min (k-diffusion
    get_sigmas_polyexponential; rho 1 is Exponential)."""
    lo, hi = _sigma_range(ms, opts)
    rho = POLYEXPONENTIAL_RHO if opts.rho is None else opts.rho
    ramp = torch.linspace(1, 0, steps) ** rho
    return _append_zero(torch.exp(ramp * (math.log(hi) - math.log(lo)) + math.log(lo)))


def sgm_uniform(ms: ModelSigmas, steps: int, opts: ScheduleOptions) -> torch.Tensor:
    """Timesteps evenly spaced from t(sigma_max) towards t(sigma_min), the last one left out
    ("trailing" spacing, as Stability's sgm code; A1111 sgm_uniform)."""
    t = _t_range(ms, opts, steps + 1)[:-1]
    return _append_zero(ms.t_to_sigma(t))


def kl_optimal(ms: ModelSigmas, steps: int, opts: ScheduleOptions) -> torch.Tensor:
    """Sabour et al. 2024 (AYS, KL-optimal schedule): levels evenly spaced in arctan(sigma).

    As in A1111 the schedule ends at sigma_min, not 0: steps + 1 levels, no 0 appended.
    """
    lo, hi = _sigma_range(ms, opts)
    frac = torch.arange(steps + 1, dtype=torch.float64) / steps  # float64: tan is steep near sigma_max
    angle = frac * math.atan(lo) + (1.0 - frac) * math.atan(hi)
    return torch.tan(angle).to(torch.float32)


def align_your_steps(ms: ModelSigmas, steps: int, opts: ScheduleOptions) -> torch.Tensor:
    """Sabour et al. 2024, "Align Your Steps": NVIDIA's 10-step SD1.5 / SDXL tables,
    interpolated log-linearly to the step count.

    As in A1111 the 11-level table is used verbatim when ``steps == 11`` (A1111 compares the step
    count with the table's length) and interpolated to ``steps`` levels otherwise, 10 included;
    sigma overrides are ignored. One deviation: at ``steps == 1`` A1111 returns [0.029, 0]
    (numpy's one-point linspace picks the table's low end); this starts at the table's top.
    """
    table = AYS_SDXL if opts.sdxl else AYS_SD15
    if steps == len(table):
        return _append_zero(list(table))
    if steps == 1:
        return _append_zero([table[0]])
    rising_logs = np.log(np.array(table[::-1]))
    logs = np.interp(np.linspace(0, 1, steps), np.linspace(0, 1, len(table)), rising_logs)
    return _append_zero(np.exp(logs)[::-1].copy())


def simple(ms: ModelSigmas, steps: int, opts: ScheduleOptions) -> torch.Tensor:
    """Every (num_timesteps / steps)-th model level from the top, index rounded down (A1111 /
    ComfyUI simple). Above num_timesteps steps levels repeat, as in A1111."""
    stride = ms.num_timesteps / steps
    picks = [float(ms.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return _append_zero(picks)


def normal(ms: ModelSigmas, steps: int, opts: ScheduleOptions) -> torch.Tensor:
    """Timesteps evenly spaced from t(sigma_max) to t(sigma_min), both included (A1111 normal;
    with the model's range it equals Uniform)."""
    return _append_zero(ms.t_to_sigma(_t_range(ms, opts, steps)))


def ddim(ms: ModelSigmas, steps: int, opts: ScheduleOptions) -> torch.Tensor:
    """The model levels at t = 1, 1 + k, 1 + 2k, ... below num_timesteps, k = num_timesteps // steps,
    from the top ("leading" spacing with offset 1, as DDIM in A1111).

    As in A1111 this yields ceil((num_timesteps - 1) / k) levels, which is more than ``steps``
    when k does not divide evenly (30 steps give 31), and starts below sigma_max.
    """
    stride = max(ms.num_timesteps // steps, 1)
    return _append_zero(ms.sigmas[1::stride].flip(0))


def beta(ms: ModelSigmas, steps: int, opts: ScheduleOptions) -> torch.Tensor:
    """Lee et al. 2024, "Beta Sampling is All You Need": sigma_min + (sigma_max - sigma_min) times
    the Beta(alpha, beta) quantiles of evenly spaced points from 1 to 0 (A1111 and diffusers;
    linear in sigma, so inner levels fall between model levels)."""
    from scipy import stats  # only this schedule needs scipy

    lo, hi = _sigma_range(ms, opts)
    quantiles = stats.beta.ppf(1 - np.linspace(0, 1, steps), opts.beta_alpha, opts.beta_beta)
    return _append_zero(lo + quantiles * (hi - lo))


def _t_range(ms: ModelSigmas, opts: ScheduleOptions, count: int) -> torch.Tensor:
    """``count`` timesteps evenly spaced from t(sigma_max) to t(sigma_min)."""
    lo, hi = _sigma_range(ms, opts)
    return torch.linspace(float(ms.sigma_to_t(hi)), float(ms.sigma_to_t(lo)), count)


# --- the table ----------------------------------------------------------------------------------

ScheduleFn = Callable[[ModelSigmas, int, ScheduleOptions], torch.Tensor]


@dataclass(frozen=True)
class ScheduleType:
    """One row of A1111's schedule table (``/sdapi/v1/schedulers`` shows these fields)."""

    name: str  # A1111's id, e.g. "karras"
    label: str  # A1111's display name, e.g. "Karras"
    function: ScheduleFn | None  # None for Automatic
    aliases: tuple[str, ...] = ()
    default_rho: float = -1.0  # -1: the schedule takes no rho (A1111's convention)
    need_inner_model: bool = False  # it reads the model's levels, not just their range


# A1111 1.10 modules/sd_schedulers.py, in its order.
SCHEDULES: tuple[ScheduleType, ...] = (
    ScheduleType("automatic", "Automatic", None),
    ScheduleType("uniform", "Uniform", uniform, need_inner_model=True),
    ScheduleType("karras", "Karras", karras, default_rho=KARRAS_RHO),
    ScheduleType("exponential", "Exponential", exponential),
    ScheduleType("polyexponential", "Polyexponential", polyexponential, default_rho=POLYEXPONENTIAL_RHO),
    ScheduleType("sgm_uniform", "SGM Uniform", sgm_uniform, aliases=("SGMUniform",), need_inner_model=True),
    ScheduleType("kl_optimal", "KL Optimal", kl_optimal),
    ScheduleType("align_your_steps", "Align Your Steps", align_your_steps),
    ScheduleType("simple", "Simple", simple, need_inner_model=True),
    ScheduleType("normal", "Normal", normal, need_inner_model=True),
    ScheduleType("ddim", "DDIM", ddim, need_inner_model=True),
    ScheduleType("beta", "Beta", beta, need_inner_model=True),
)


def _key(text: str) -> str:
    """Case-folded with all whitespace removed ("SGM Uniform" and "sgmuniform" match)."""
    return "".join(text.split()).casefold()


_BY_KEY: dict[str, ScheduleType] = {
    _key(spelling): schedule for schedule in SCHEDULES for spelling in (schedule.name, schedule.label, *schedule.aliases)
}


def get_schedule(name: str) -> ScheduleType:
    """The schedule type for an A1111 id, label or alias, ignoring case and whitespace."""
    schedule = _BY_KEY.get(_key(name))
    if schedule is None:
        raise KeyError(f"unknown schedule type {name!r}; choose one of: {', '.join(s.label for s in SCHEDULES)}")
    return schedule


def make_sigmas(schedule: ScheduleType, ms: ModelSigmas, steps: int, opts: ScheduleOptions | None = None) -> torch.Tensor:
    """The schedule's levels for ``steps`` steps with the options' overrides applied: a float32
    CPU tensor, decreasing (see the module docstring for the schedules that end or count
    otherwise). Automatic must be resolved to a concrete schedule first."""
    opts = ScheduleOptions() if opts is None else opts
    if schedule.function is None:
        raise ValueError(
            f"schedule type {schedule.label!r} has no sigmas of its own; resolve it to the sampler's default schedule first"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    lo, hi = _sigma_range(ms, opts)
    if lo >= hi:
        raise ValueError(f"sigma_min ({lo}) must be below sigma_max ({hi})")
    return schedule.function(ms, steps, opts)
