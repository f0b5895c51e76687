"""Euler-family and timestep samplers (modules/samplers/euler.py, timestep.py) measured against exact
Gaussian solutions (tests/gaussian_exact.py) and against the diffusers schedulers with the same algorithm.

With x0 ~ N(mu, s^2) the ideal denoiser is linear, so every deterministic sampler maps x - mu to
A_n (x - mu) and its error is (A_n - A_exact)(x - mu): the error ratios below do not depend on the
seed of the start latents, only on the sampler and the schedule.
"""

from __future__ import annotations

import math

import diffusers
import numpy as np
import pytest
import torch

from modules.samplers import euler, timestep
from modules.samplers.base import SamplerOptions, StepInfo
from tests.gaussian_exact import GaussianDenoiser

SIGMA_MAX, SIGMA_MIN = 14.6, 0.03
ELEMENTS = 4096
DETERMINISTIC = SamplerOptions(eta=0.0)  # eta only matters to DDIM here; A1111 passes eta_ddim 0


def karras(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 (eq. 5): sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    for i = 0..n-1, then 0: ``steps`` steps in all."""
    i = torch.arange(steps, dtype=torch.float64)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return torch.cat([(hi + i / (steps - 1) * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


class SeededNoise:
    """One generator for the whole batch (fast for 20000 scalars); records the levels of every call."""

    def __init__(self, like: torch.Tensor, seed: int) -> None:
        self.shape, self.dtype = like.shape, like.dtype
        self.generator = torch.Generator().manual_seed(seed)
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        self.calls.append((float(sigma), float(sigma_next)))
        return torch.randn(self.shape, generator=self.generator, dtype=self.dtype)


def no_noise(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    raise AssertionError("a deterministic sampler drew noise")


def start_latents(n: int, denoiser: GaussianDenoiser, sigma: float, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """x(sigma) for Gaussian data: mu + sqrt(s^2 + sigma^2) * n."""
    g = torch.Generator().manual_seed(seed)
    return (denoiser.mu + math.sqrt(denoiser.s**2 + sigma**2) * torch.randn(n, generator=g, dtype=torch.float64)).to(dtype)


# --- exact solutions: orders of convergence ------------------------------------------------------

# name, function, theoretical order on the Karras grid (PLMS: see test_plms_order_four_on_an_even_grid)
ORDERS = [
    ("Euler", euler.sample_euler, 1),
    ("Heun", euler.sample_heun, 2),
    ("DPM2", euler.sample_dpm_2, 2),
    ("LMS", euler.sample_lms, 4),
    ("DDIM eta 0", timestep.sample_ddim, 1),
    ("PLMS", timestep.sample_plms, 2),
]
ORDER_SLACK = 0.7  # the 20 -> 40 step error ratio must reach 0.7 * 2^order


def ode_error(fn, steps: int, through_zero: bool = False) -> float:
    """Max error against the exact ODE solution after a Karras run of ``steps`` steps; by default
    measured at the last nonzero sigma (the run stops there)."""
    den = GaussianDenoiser()
    x = start_latents(ELEMENTS, den, SIGMA_MAX)
    sigmas = karras(steps) if through_zero else karras(steps)[:-1]
    out = fn(den, x, sigmas, DETERMINISTIC, None, no_noise)
    return (out - den.exact(x, SIGMA_MAX, float(sigmas[-1]))).abs().max().item()


@pytest.mark.parametrize(("name", "fn", "order"), ORDERS, ids=[o[0] for o in ORDERS])
def test_deterministic_samplers_converge_at_their_order(name, fn, order):
    """Errors are measured at sigma_min = 0.03, before the last step into 0: that step is an Euler
    step (the derivative at 0 is undefined) from the same sigma_min whatever the step count, so its
    error, about sigma_min^2 / (2 s^2) of |x - mu|, stays the same with more steps and would hide
    the order of second- and higher-order samplers (Heun at 40 steps: 8.2e-3 at sigma_min)."""
    errors = [ode_error(fn, steps) for steps in (10, 20, 40)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] / errors[2] >= ORDER_SLACK * 2**order, f"{name}: errors {errors}"


def test_plms_order_four_on_an_even_grid():
    """PLMS uses PNDM's even-grid Adams-Bashforth coefficients, so on Karras' uneven grid its order
    is 2; on an even sigma grid (here 8 -> 2, away from the data scale s) it is order 4."""
    den = GaussianDenoiser()
    x = start_latents(ELEMENTS, den, 8.0)
    errors = []
    for steps in (20, 40, 80):
        sigmas = torch.linspace(8.0, 2.0, steps + 1, dtype=torch.float64)
        out = timestep.sample_plms(den, x, sigmas, DETERMINISTIC, None, no_noise)
        errors.append((out - den.exact(x, 8.0, 2.0)).abs().max().item())
    assert errors[1] / errors[2] >= ORDER_SLACK * 2**4, errors


@pytest.mark.parametrize(("name", "fn", "order"), ORDERS, ids=[o[0] for o in ORDERS])
def test_full_runs_end_near_the_exact_sample(name, fn, order):
    """The whole run down to 0 (40 steps) ends within 0.12 of the exact x(0) (|x - mu| reaches ~10 at
    the start; Euler's first-order error is the largest)."""
    assert ode_error(fn, 40, through_zero=True) < 0.12


# --- stochastic samplers: the distribution of the result -----------------------------------------

BATCH = 20000
MEAN_TOLERANCE = 0.03  # ~5 standard errors (s / sqrt(BATCH) = 0.0057)
VARIANCE_TOLERANCE = 0.06  # on var / s^2: 0.04 statistical (4 standard errors of sqrt(2 / BATCH)) + <= 0.02 bias

# First-order samplers get 800 steps: their variance is biased by about 7/steps (Euler a: 0.966
# at 200 steps, 0.982 at 400, 0.99 at 800 by the exact variance recursion); second-order ones 40.
STOCHASTIC = [
    ("Euler a", euler.sample_euler_ancestral, SamplerOptions(), 800),
    ("DDIM eta 1", timestep.sample_ddim, SamplerOptions(eta=1.0), 800),
    ("Euler churn", euler.sample_euler, SamplerOptions(s_churn=10.0), 800),
    ("DPM2 a", euler.sample_dpm_2_ancestral, SamplerOptions(), 40),
    ("Restart", euler.sample_restart, SamplerOptions(), 40),
]


@pytest.mark.parametrize(("name", "fn", "options", "steps"), STOCHASTIC, ids=[s[0] for s in STOCHASTIC])
def test_stochastic_samplers_end_at_the_data_distribution(name, fn, options, steps):
    den = GaussianDenoiser()
    x = start_latents(BATCH, den, SIGMA_MAX, seed=1)
    noise = SeededNoise(x, seed=2)
    out = fn(den, x, karras(steps), options, None, noise)
    assert noise.calls, f"{name} drew no noise"
    assert abs(out.mean().item() - den.mu) < MEAN_TOLERANCE
    assert abs(out.var().item() / den.s**2 - 1) < VARIANCE_TOLERANCE, out.var().item() / den.s**2


def test_lcm_follows_its_variance_recursion():
    """LCM expects a consistency model (D returns a sample); with the ideal MMSE denoiser each step
    shrinks the variance: x_k ~ N(mu, v_k), D = mu + c_k (x_k - mu) with c_k = s^2 / (s^2 + sigma_k^2),
    so v_{k+1} = c_k^2 v_k + sigma_{k+1}^2 and the result has c_{n-1}^2 v_{n-1}. 4 LCM-like steps."""
    den = GaussianDenoiser()
    sigmas = torch.tensor([SIGMA_MAX, 3.0, 0.9, 0.2, 0.0], dtype=torch.float64)
    x = start_latents(BATCH, den, SIGMA_MAX, seed=3)
    noise = SeededNoise(x, seed=4)
    out = euler.sample_lcm(den, x, sigmas, SamplerOptions(), None, noise)
    variance = den.s**2 + SIGMA_MAX**2
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        variance = (den.s**2 / (den.s**2 + sigma**2)) ** 2 * variance + sigma_next**2
    assert len(noise.calls) == 3
    assert abs(out.mean().item() - den.mu) < MEAN_TOLERANCE
    assert abs(out.var().item() / variance - 1) < 0.04, (out.var().item(), variance)  # 4 standard errors
    assert variance / den.s**2 < 0.9  # the recursion is far enough from s^2 to tell them apart


def test_restart_plan_is_a1111s():
    """Fewer than 20 steps: plain Heun on the given sigmas. 20 to 35: a Karras schedule of steps - 9
    steps plus 9 restart steps once; 36 and more: steps // 4 restart steps twice; each restart jumps
    from the level nearest 0.1 up to the level nearest 2."""
    short = karras(10).tolist()
    assert euler.restart_plan(short) == list(zip(short[:-1], short[1:], strict=True))
    for steps, restarts in ((20, 1), (35, 1), (36, 2), (40, 2)):
        plan = euler.restart_plan(karras(steps).tolist())
        assert len(plan) == steps
        jumps = [(low, high) for (_, low), (high, _) in zip(plan[:-1], plan[1:], strict=True) if high > low]
        assert len(jumps) == restarts
        for low, high in jumps:
            assert 0.07 < low < 0.14 and 1.5 < high < 2.7, (low, high)
        assert plan[0][0] == pytest.approx(SIGMA_MAX) and plan[-1] == (pytest.approx(SIGMA_MIN), 0.0)


def test_restart_draws_one_noise_per_restart_from_top_to_bottom():
    den = GaussianDenoiser()
    x = start_latents(16, den, SIGMA_MAX)
    noise = SeededNoise(x, seed=0)
    euler.sample_restart(den, x, karras(40), SamplerOptions(), None, noise)
    assert len(noise.calls) == 2 and all(top > bottom for top, bottom in noise.calls)
    assert den.calls == 2 * 40 - 1  # Heun: two calls a step, one for the Euler step into 0


# --- against diffusers ---------------------------------------------------------------------------

SD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
}
DIFFUSERS_STEPS = 20
DIFFUSERS_TOLERANCE = 1e-5  # max |ours - diffusers| / max |diffusers|, both in float32


class EpsModel:
    """A UNet stand-in: eps(x_vp, t) from the Gaussian denoiser, where x_vp = x / sqrt(1 + sigma^2)
    and sigma(t) = sqrt((1 - a_t) / a_t), interpolated for fractional t as the scheduler does: linearly
    in sigma (its sigmas of timesteps), or in log sigma (KDPM2's timesteps of its midpoint sigmas)."""

    def __init__(self, scheduler, log_sigma: bool = False) -> None:
        alphas = scheduler.alphas_cumprod.double().numpy()
        self.train_sigmas = ((1 - alphas) / alphas) ** 0.5
        self.log_sigma = log_sigma
        self.denoiser = GaussianDenoiser()

    def sigma(self, t) -> float:
        steps = np.arange(len(self.train_sigmas))
        if self.log_sigma:
            return float(np.exp(np.interp(float(t), steps, np.log(self.train_sigmas))))
        return float(np.interp(float(t), steps, self.train_sigmas))

    def __call__(self, x_vp: torch.Tensor, t) -> torch.Tensor:
        sigma = self.sigma(t)
        x = x_vp * math.sqrt(1 + sigma**2)
        return (x - self.denoiser(x, torch.tensor(sigma, dtype=torch.float64))) / sigma


def run_k_scheduler(
    scheduler, model: EpsModel, x: torch.Tensor, generator: torch.Generator | None, **step_kwargs
) -> torch.Tensor:
    """A diffusers k-style scheduler (latents x = x0 + sigma * n, scale_model_input before the model)."""
    if generator is not None:
        step_kwargs["generator"] = generator
    sample = x.clone()
    for t in scheduler.timesteps:
        eps = model(scheduler.scale_model_input(sample, t), t)
        sample = scheduler.step(eps, t, sample, **step_kwargs).prev_sample
    return sample


def run_vp_scheduler(scheduler, x_vp: torch.Tensor, generator: torch.Generator | None, **step_kwargs) -> torch.Tensor:
    """A diffusers VP scheduler (DDIM, PNDM, LCM: latents x_vp = x / sqrt(1 + sigma^2), no input scaling)."""
    model = EpsModel(scheduler)
    if generator is not None:
        step_kwargs["generator"] = generator
    sample = x_vp.clone()
    for t in scheduler.timesteps:
        sample = scheduler.step(model(sample, t), t, sample, **step_kwargs).prev_sample
    return sample


def vp_sigma(alpha_cumprod) -> float:
    """sigma = sqrt((1 - a) / a): the noise level of a VP timestep."""
    a = float(alpha_cumprod)
    return math.sqrt((1 - a) / a)


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


# name, function, diffusers class, its step() arguments, ancestral (same noise fed), KDPM2's log-sigma timesteps
K_TWINS = [
    ("Euler", euler.sample_euler, "EulerDiscreteScheduler", {}, False, False),
    ("Euler a", euler.sample_euler_ancestral, "EulerAncestralDiscreteScheduler", {}, True, False),
    ("Heun", euler.sample_heun, "HeunDiscreteScheduler", {}, False, False),
    ("LMS", euler.sample_lms, "LMSDiscreteScheduler", {"order": 4}, False, False),
    ("DPM2", euler.sample_dpm_2, "KDPM2DiscreteScheduler", {}, False, True),
    ("DPM2 a", euler.sample_dpm_2_ancestral, "KDPM2AncestralDiscreteScheduler", {}, True, True),
]


@pytest.mark.parametrize(("name", "fn", "cls", "step_kwargs", "ancestral", "log_sigma"), K_TWINS, ids=[k[0] for k in K_TWINS])
def test_matches_diffusers_k_schedulers(name, fn, cls, step_kwargs, ancestral, log_sigma):
    """Our function on the scheduler's own sigmas (without the repeats of Heun's and KDPM2's inner
    levels). SD's "leading" spacing keeps the main timesteps whole, where both interpolations agree."""
    scheduler = getattr(diffusers, cls).from_config({**SD_SCHEDULER_CONFIG, "timestep_spacing": "leading"})
    scheduler.set_timesteps(DIFFUSERS_STEPS)
    sigmas = torch.unique_consecutive(scheduler.sigmas)
    assert len(sigmas) == DIFFUSERS_STEPS + 1 and sigmas[-1] == 0
    den = GaussianDenoiser()
    x = start_latents(ELEMENTS, den, float(sigmas[0]), dtype=torch.float32)
    generator = torch.Generator().manual_seed(5) if ancestral else None
    theirs = run_k_scheduler(scheduler, EpsModel(scheduler, log_sigma), x, generator, **step_kwargs)
    noise = SeededNoise(x, seed=5)  # the same stream: diffusers draws randn(shape, generator) once a step
    ours = fn(den, x, sigmas, SamplerOptions(), None, noise)
    assert bool(noise.calls) == ancestral
    assert relative_difference(ours, theirs) < DIFFUSERS_TOLERANCE


def ddim_like_sigmas(scheduler, timesteps) -> torch.Tensor:
    """Sigmas of DDIM/PNDM timesteps, then of the final alpha (alphas_cumprod[0]: SD's set_alpha_to_one False)."""
    levels = [vp_sigma(scheduler.alphas_cumprod[int(t)]) for t in timesteps]
    return torch.tensor([*levels, vp_sigma(scheduler.final_alpha_cumprod)], dtype=torch.float64)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(eta):
    """eta 0 is A1111's DDIM; eta 1 checks that DDIM's noise is the ancestral step's sigma_up (diffusers
    also adds noise in its last step, to the nonzero final level)."""
    scheduler = diffusers.DDIMScheduler.from_config(SD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(DIFFUSERS_STEPS)
    sigmas = ddim_like_sigmas(scheduler, scheduler.timesteps)
    den = GaussianDenoiser()
    x = start_latents(ELEMENTS, den, float(sigmas[0]), dtype=torch.float32)
    theirs = run_vp_scheduler(scheduler, x / math.sqrt(1 + float(sigmas[0]) ** 2), torch.Generator().manual_seed(6), eta=eta)
    noise = SeededNoise(x, seed=6)
    ours = timestep.sample_ddim(den, x, sigmas, SamplerOptions(eta=eta), None, noise)
    assert len(noise.calls) == (DIFFUSERS_STEPS if eta else 0)
    assert relative_difference(ours / math.sqrt(1 + float(sigmas[-1]) ** 2), theirs) < DIFFUSERS_TOLERANCE


def test_plms_matches_diffusers_pndm_skip_prk_steps():
    scheduler = diffusers.PNDMScheduler.from_config({**SD_SCHEDULER_CONFIG, "skip_prk_steps": True})
    scheduler.set_timesteps(DIFFUSERS_STEPS)
    assert len(scheduler.timesteps) == DIFFUSERS_STEPS + 1  # the second timestep twice: the bootstrap
    sigmas = ddim_like_sigmas(scheduler, torch.unique_consecutive(scheduler.timesteps))
    den = GaussianDenoiser()
    x = start_latents(ELEMENTS, den, float(sigmas[0]), dtype=torch.float32)
    theirs = run_vp_scheduler(scheduler, x / math.sqrt(1 + float(sigmas[0]) ** 2), None)  # PNDM takes no generator
    ours = timestep.sample_plms(den, x, sigmas, SamplerOptions(), None, no_noise)
    assert den.calls == DIFFUSERS_STEPS + 1
    assert relative_difference(ours / math.sqrt(1 + float(sigmas[-1]) ** 2), theirs) < DIFFUSERS_TOLERANCE


def test_lcm_matches_diffusers():
    """diffusers' LCM adds c_skip * x to its x0 (boundary condition, ~1e-8 at these timesteps) and
    returns the denoised latents in its last step: our sigmas end in 0."""
    scheduler = diffusers.LCMScheduler.from_config(SD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(4)
    sigmas = torch.tensor([*(vp_sigma(scheduler.alphas_cumprod[int(t)]) for t in scheduler.timesteps), 0.0])
    den = GaussianDenoiser()
    x = start_latents(ELEMENTS, den, float(sigmas[0]), dtype=torch.float32)
    theirs = run_vp_scheduler(scheduler, x / math.sqrt(1 + float(sigmas[0]) ** 2), torch.Generator().manual_seed(7))
    noise = SeededNoise(x, seed=7)
    ours = euler.sample_lcm(den, x, sigmas, SamplerOptions(), None, noise)
    assert len(noise.calls) == 3
    assert relative_difference(ours, theirs) < DIFFUSERS_TOLERANCE


# --- DDIM CFG++ ----------------------------------------------------------------------------------


class GuidedGaussian:
    """CFG over two Gaussian denoisers: guided = U + scale (C - U); ``uncond`` is U of the last call."""

    def __init__(self, scale: float, uncond_mu: float = -0.3) -> None:
        self.cond, self.unguided = GaussianDenoiser(mu=0.5), GaussianDenoiser(mu=uncond_mu)
        self.scale = scale
        self.uncond: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c, u = self.cond(x, sigma), self.unguided(x, sigma)
        self.uncond = u
        return u + self.scale * (c - u)


def test_ddim_cfgpp_is_ddim_when_uncond_is_the_guided_estimate():
    x = start_latents(ELEMENTS, GaussianDenoiser(), SIGMA_MAX)
    sigmas = karras(20)
    for den in (GuidedGaussian(scale=1.0, uncond_mu=0.5), GaussianDenoiser()):  # uncond == guided output
        plain = timestep.sample_ddim(den, x, sigmas, DETERMINISTIC, None, no_noise)
        cfgpp = timestep.sample_ddim_cfgpp(den, x, sigmas, DETERMINISTIC, None, no_noise)
        assert torch.equal(plain, cfgpp)


def test_ddim_cfgpp_renoises_with_the_unconditional_eps():
    x = start_latents(ELEMENTS, GaussianDenoiser(), SIGMA_MAX)
    sigmas = karras(20)
    plain = timestep.sample_ddim(GuidedGaussian(scale=3.0), x, sigmas, DETERMINISTIC, None, no_noise)
    cfgpp = timestep.sample_ddim_cfgpp(GuidedGaussian(scale=3.0), x, sigmas, DETERMINISTIC, None, no_noise)
    assert (plain - cfgpp).abs().max() > 0.1
    # one step by hand: x' = D_guided + sigma' (x - D_uncond) / sigma
    den = GuidedGaussian(scale=3.0)
    step = timestep.sample_ddim_cfgpp(den, x, sigmas[:2], DETERMINISTIC, None, no_noise)
    guided = GuidedGaussian(scale=3.0)(x, sigmas[0])
    expected = guided + float(sigmas[1]) * (x - den.uncond) / float(sigmas[0])
    torch.testing.assert_close(step, expected)


# --- the interface: callbacks and noise ----------------------------------------------------------

ALL = [
    ("Euler", euler.sample_euler, SamplerOptions(), 0),
    ("Euler churn", euler.sample_euler, SamplerOptions(s_churn=1.0), 12),  # churn in every step
    ("Euler a", euler.sample_euler_ancestral, SamplerOptions(), 11),  # none into sigma 0
    ("Heun", euler.sample_heun, SamplerOptions(), 0),
    ("DPM2", euler.sample_dpm_2, SamplerOptions(), 0),
    ("DPM2 a", euler.sample_dpm_2_ancestral, SamplerOptions(), 11),
    ("LMS", euler.sample_lms, SamplerOptions(), 0),
    ("Restart", euler.sample_restart, SamplerOptions(), 0),  # fewer than 20 steps: Heun, no restart
    ("LCM", euler.sample_lcm, SamplerOptions(), 11),
    ("DDIM", timestep.sample_ddim, DETERMINISTIC, 0),
    ("DDIM eta 1", timestep.sample_ddim, SamplerOptions(eta=1.0), 11),
    ("DDIM CFG++", timestep.sample_ddim_cfgpp, DETERMINISTIC, 0),
    ("PLMS", timestep.sample_plms, SamplerOptions(), 0),
]


@pytest.mark.parametrize(("name", "fn", "options", "draws"), ALL, ids=[a[0] for a in ALL])
def test_callback_once_per_step_and_noise_only_from_the_source(name, fn, options, draws):
    steps = 12
    sigmas = karras(steps)
    den = GaussianDenoiser()
    x = start_latents(64, den, SIGMA_MAX)
    infos: list[StepInfo] = []
    noise = SeededNoise(x, seed=0)
    global_rng = torch.random.get_rng_state()
    out = fn(den, x, sigmas, options, infos.append, noise)
    assert torch.equal(torch.random.get_rng_state(), global_rng), f"{name} drew from torch's global generator"
    assert [info.i for info in infos] == list(range(steps))
    assert [float(info.sigma) for info in infos] == pytest.approx(sigmas[:-1].tolist())
    assert infos[-1].x is out and all(info.denoised.shape == x.shape for info in infos)
    assert len(noise.calls) == draws
    assert all(sigma > sigma_next for sigma, sigma_next in noise.calls)
    assert out.dtype == x.dtype and torch.isfinite(out).all()


def test_callback_is_optional_and_the_latents_dtype_is_kept():
    den = GaussianDenoiser()
    x = start_latents(64, den, SIGMA_MAX, dtype=torch.float32)
    for _, fn, options, _ in ALL:
        out = fn(den, x, karras(8).float(), options, None, SeededNoise(x, seed=0))
        assert out.dtype == torch.float32


def test_a_bad_schedule_is_named():
    den = GaussianDenoiser()
    with pytest.raises(ValueError, match="1-D schedule"):
        euler.sample_euler(den, torch.zeros(4), torch.tensor([[1.0, 0.0]]), SamplerOptions(), None, no_noise)


def test_lms_coefficients_are_exact_integrals():
    """Against scipy.integrate.quad of the Lagrange basis, as k-diffusion and diffusers compute them."""
    integrate = pytest.importorskip("scipy.integrate")
    sig = karras(10).tolist()
    i, order = 5, 4
    for j in range(order):

        def basis(tau, j=j):
            return math.prod((tau - sig[i - k]) / (sig[i - j] - sig[i - k]) for k in range(order) if k != j)

        assert euler.lms_coefficient(sig, i, j, order) == pytest.approx(integrate.quad(basis, sig[i], sig[i + 1])[0], rel=1e-10)
