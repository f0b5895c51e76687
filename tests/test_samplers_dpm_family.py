"""The DPM++ samplers (modules/samplers/dpm.py) and Brownian-tree noise (modules/samplers/noise.py).

Measured against the exact solution for Gaussian data (tests/gaussian_exact.py), against diffusers
where it runs the same algorithm, and for their noise: its moments, where it comes from, and the
Brownian path's own properties. Tiny tensors; float64 where convergence is measured.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, DPMSolverSDEScheduler

from modules.samplers import dpm
from modules.samplers.base import SamplerOptions, StepInfo
from modules.samplers.noise import BrownianTreeNoise, GeneratorNoise
from tests.gaussian_exact import GaussianDenoiser

SIGMA_MIN, SIGMA_MAX = 0.0292, 14.6146  # SD 1.x's noise levels

ALL = {
    "2S a": dpm.sample_dpmpp_2s_ancestral,
    "2M": dpm.sample_dpmpp_2m,
    "SDE": dpm.sample_dpmpp_sde,
    "2M SDE": dpm.sample_dpmpp_2m_sde,
    "2M SDE Heun": dpm.sample_dpmpp_2m_sde_heun,
    "3M SDE": dpm.sample_dpmpp_3m_sde,
}
STOCHASTIC = {name: fn for name, fn in ALL.items() if name != "2M"}

DIFFUSERS_SD = {  # SD 1.x's training betas
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}


def karras(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 (eq. 5): n levels evenly spaced in sigma^(1/rho), then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    levels = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([levels, levels.new_zeros(1)])


def exponential(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    """n levels evenly spaced in log(sigma), then 0 (A1111's default for the multistep SDE samplers)."""
    levels = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    return torch.cat([levels, levels.new_zeros(1)])


def no_noise(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    raise AssertionError(f"noise drawn ({float(sigma)} to {float(sigma_next)}) by a sampler that should draw none")


def ode_error(fn, schedule, steps: int, eta: float = 0.0) -> float:
    """Largest error at the last nonzero sigma vs the exact probability-flow ODE, over starts spread
    across +-3 standard deviations of x(sigma_max) ~ N(mu, s^2 + sigma_max^2)."""
    den = GaussianDenoiser()
    sigmas = schedule(steps)[:-1]  # stop at sigma_min (why: see test_dpmpp_2m_second_order)
    x = den.mu + math.sqrt(den.s**2 + SIGMA_MAX**2) * torch.linspace(-3, 3, 13, dtype=torch.float64)[None]
    out = fn(den, x.clone(), sigmas, SamplerOptions(eta=eta), None, no_noise)
    return (out - den.exact(x, float(sigmas[0]), float(sigmas[-1]))).abs().max().item()


# --- Exact solutions: order of convergence -------------------------------------------------------


def test_dpmpp_2m_second_order():
    """DPM++ 2M on a Karras schedule: doubling the steps cuts the error about 4x (order 2); measured
    133e-3, 31.5e-3, 7.1e-3 at 10/20/40 steps (ratios 4.22, 4.45). Tolerance: ratio >= 3.5.

    Measured at the last nonzero sigma: the final step to 0 is a plain denoised step
    (x = D(x, sigma_min)), whose error |x - mu| * O(sigma_min^2 / s^2) does not shrink with more
    steps and would hide the order (with it the 40-step error is 5.5e-3 vs 7.1e-3 by cancellation,
    and 8e-5 at 80 steps)."""
    errors = [ode_error(dpm.sample_dpmpp_2m, karras, n) for n in (10, 20, 40)]
    assert errors[0] / errors[1] >= 3.5 and errors[1] / errors[2] >= 3.5, errors
    assert errors[2] < 1e-2, errors


@pytest.mark.parametrize(
    ("name", "schedule", "measured"),
    [
        ("2S a", karras, (4.11, 4.08)),  # eta 0: DPM-Solver++(2S), singlestep order 2
        ("SDE", karras, (4.11, 4.08)),  # eta 0: the same two-stage solver (r = 1/2)
        ("2M SDE", karras, (4.22, 4.45)),  # eta 0: exactly DPM++ 2M
        ("2M SDE Heun", karras, (4.87, 4.63)),
        ("3M SDE", exponential, (7.42, 5.02)),  # its A1111 default schedule; see test_dpmpp_3m_sde_eta_0
    ],
)
def test_sde_samplers_with_eta_0_are_second_order_or_better(name, schedule, measured):
    """With eta = 0 every SDE / ancestral sampler is a deterministic ODE solver of order >= 2:
    error ratio per doubling of 10/20/40 steps >= 3.5 (measured ratios in the parameters)."""
    errors = [ode_error(ALL[name], schedule, n) for n in (10, 20, 40)]
    assert errors[0] / errors[1] >= 3.5 and errors[1] / errors[2] >= 3.5, (name, errors, measured)


def test_dpmpp_2m_sde_with_eta_0_is_dpmpp_2m():
    den = GaussianDenoiser()
    x = torch.linspace(-40, 40, 9, dtype=torch.float64)[None]
    sigmas = karras(12)
    a = dpm.sample_dpmpp_2m(den, x.clone(), sigmas, SamplerOptions(eta=0.0), None, no_noise)
    b = dpm.sample_dpmpp_2m_sde(den, x.clone(), sigmas, SamplerOptions(eta=0.0), None, no_noise)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_dpmpp_3m_sde_eta_0():
    """DPM++ 3M SDE at eta = 0 is k-diffusion's third-order multistep formula, and beats DPM++ 2M at
    every step count (exponential schedule; measured 3M 48e-3/6.4e-3/1.3e-3 vs 2M 53e-3/15e-3/3.7e-3).

    Its measured order is 2, not 3 (ratios 7.4, 5.0, 4.3, 3.9 from 10 to 160 steps; on a Karras
    schedule irregular: 16.1, 2.67, 3.50), and not only because of its lower-order first two steps
    (with those made tiny it is still order 2): k-diffusion's (and diffusers') second-derivative
    term -phi_3 * d2 is half the Taylor term (about h/6 * d2 for h/3 * d2). With that term doubled
    the ratios are 13-18; Easel keeps k-diffusion's formula so that a seed gives A1111's image."""
    for steps in (10, 20, 40):
        three = ode_error(dpm.sample_dpmpp_3m_sde, exponential, steps)
        two = ode_error(dpm.sample_dpmpp_2m, exponential, steps)
        assert three < two, (steps, three, two)


def test_final_step_to_zero_is_the_denoised_estimate():
    den = GaussianDenoiser()
    x = 10 * torch.linspace(-1, 1, 5, dtype=torch.float64)[None]
    sigmas = karras(6)
    for name, fn in ALL.items():
        steps: list[StepInfo] = []
        gens = [torch.Generator().manual_seed(0)]
        out = fn(den, x.clone(), sigmas, SamplerOptions(), steps.append, GeneratorNoise(x, gens))
        last = steps[-1]
        assert float(last.sigma) == float(sigmas[-2])
        torch.testing.assert_close(out, last.denoised, rtol=0, atol=0, msg=name)


# --- Stochastic samplers: the right distribution -------------------------------------------------

# 20000 scalars (2 images x 10000) from x(sigma_max) ~ N(mu, s^2 + sigma_max^2), 40 Exponential steps.
# Sampling error: sd of the mean 0.8 / sqrt(20000) = 0.0057, of the variance 0.64 * sqrt(2 / 20000)
# = 0.0064. Measured discretisation bias at 40 steps: mean within 0.005, variance within
# -0.006 (2S a) .. +0.015 (2M SDE Heun). Tolerances: mean 0.02, variance 0.035 (5.5% of s^2).
MEAN_TOL, VAR_TOL = 0.02, 0.035


def _moments(fn, noise_kind: str) -> tuple[float, float]:
    den = GaussianDenoiser()
    sigmas = exponential(40).float()
    start = torch.randn(2, 10_000, generator=torch.Generator().manual_seed(1))
    start = den.mu + math.sqrt(den.s**2 + float(sigmas[0]) ** 2) * start
    if noise_kind == "generator":
        noise = GeneratorNoise(start, [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)])
    else:
        noise = BrownianTreeNoise.for_sigmas(start, sigmas, [7, 8])
    out = fn(den, start, sigmas, SamplerOptions(), None, noise)
    return out.mean().item() - den.mu, out.var().item() - den.s**2


@pytest.mark.parametrize("noise_kind", ["generator", "brownian"])
@pytest.mark.parametrize("name", [n for n in STOCHASTIC if n != "SDE"])
def test_stochastic_samplers_end_at_the_data_distribution(name, noise_kind):
    mean_error, var_error = _moments(STOCHASTIC[name], noise_kind)
    assert abs(mean_error) < MEAN_TOL and abs(var_error) < VAR_TOL, (mean_error, var_error)


def test_dpmpp_sde_needs_brownian_noise():
    """DPM++ SDE's two stages draw noise over [sigma, sigma_mid] and [sigma, sigma_next]; its update
    relies on these being increments of one Brownian path (correlated). With Brownian-tree noise
    it ends at N(mu, s^2) (measured variance error +0.0004); with independent draws its variance
    comes out low (measured -0.073 at 40 steps, -0.15 at 20), which is why A1111 always gives it
    a Brownian tree. The mean is right either way."""
    mean_error, var_error = _moments(dpm.sample_dpmpp_sde, "brownian")
    assert abs(mean_error) < MEAN_TOL and abs(var_error) < VAR_TOL, (mean_error, var_error)
    mean_error, var_error = _moments(dpm.sample_dpmpp_sde, "generator")
    assert abs(mean_error) < MEAN_TOL and var_error < -0.04, (mean_error, var_error)


# --- Against diffusers -----------------------------------------------------------------------------

# diffusers' multistep solver works in VP latents x_vp = x / sqrt(1 + sigma^2) with an eps model;
# from the Gaussian denoiser, eps(x_vp, sigma) = (x - D(x, sigma)) / sigma with x = x_vp * sqrt(1 + sigma^2).
# diffusers computes in float32: measured differences 2e-7 .. 1e-6 on values up to 5. Tolerance 1e-5.
DIFFUSERS_TOL = 1e-5


def _run_diffusers_multistep(scheduler, x: torch.Tensor, noises: list[torch.Tensor] | None) -> torch.Tensor:
    den = GaussianDenoiser()
    sigmas = scheduler.sigmas.to(torch.float64)
    x_vp = x / torch.sqrt(1 + sigmas[0] ** 2)
    for i, timestep in enumerate(scheduler.timesteps):
        x_ve = x_vp * torch.sqrt(1 + sigmas[i] ** 2)
        eps = (x_ve - den(x_ve, sigmas[i])) / sigmas[i]
        variance_noise = None
        if noises is not None:  # the last step (to 0) scales its noise by 0, and Easel draws none there
            variance_noise = noises[i] if i < len(noises) else torch.zeros_like(x)
        x_vp = scheduler.step(eps, timestep, x_vp, variance_noise=variance_noise).prev_sample
    return x_vp  # sigma = 0: VP and VE latents agree


def _start(sigmas: torch.Tensor) -> torch.Tensor:
    den = GaussianDenoiser()
    draw = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return den.mu + math.sqrt(den.s**2 + float(sigmas[0]) ** 2) * draw


@pytest.mark.parametrize("use_karras_sigmas", [False, True])
def test_dpmpp_2m_matches_diffusers(use_karras_sigmas):
    scheduler = DPMSolverMultistepScheduler(
        **DIFFUSERS_SD, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        use_karras_sigmas=use_karras_sigmas,
    )  # fmt: skip
    scheduler.set_timesteps(12)
    sigmas = scheduler.sigmas.to(torch.float64)  # its own sigmas, ending in 0
    x = _start(sigmas)
    ours = dpm.sample_dpmpp_2m(GaussianDenoiser(), x.clone(), sigmas, SamplerOptions(), None, no_noise)
    theirs = _run_diffusers_multistep(scheduler, x, None)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=DIFFUSERS_TOL)


@pytest.mark.parametrize(("name", "solver_type"), [("2M SDE", "midpoint"), ("2M SDE Heun", "heun")])
@pytest.mark.parametrize("use_karras_sigmas", [False, True])
def test_dpmpp_2m_sde_matches_diffusers_with_the_same_noise(name, solver_type, use_karras_sigmas):
    scheduler = DPMSolverMultistepScheduler(
        **DIFFUSERS_SD, algorithm_type="sde-dpmsolver++", solver_order=2, solver_type=solver_type,
        use_karras_sigmas=use_karras_sigmas,
    )  # fmt: skip
    scheduler.set_timesteps(12)
    sigmas = scheduler.sigmas.to(torch.float64)
    x = _start(sigmas)
    draws: list[torch.Tensor] = []
    generator = torch.Generator().manual_seed(5)

    def recorded(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        draws.append(torch.randn(x.shape, generator=generator, dtype=torch.float64))
        return draws[-1]

    ours = ALL[name](GaussianDenoiser(), x.clone(), sigmas, SamplerOptions(), None, recorded)
    assert len(draws) == 11  # one per step but the last
    theirs = _run_diffusers_multistep(scheduler, x, draws)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=DIFFUSERS_TOL)


def test_dpmpp_3m_sde_with_eta_0_matches_diffusers_third_order():
    """At eta = 0 DPM++ 3M SDE is diffusers' dpmsolver++ order 3 with solver_type "heun" (its second
    step uses phi_2, as k-diffusion's). 16 steps: diffusers lowers the order of the next-to-last
    step below 15. (diffusers' sde-dpmsolver++ order 3 is not this algorithm at eta = 1: its
    second-derivative term differs, by 0.07 after the first third-order step in our measurement.)"""
    scheduler = DPMSolverMultistepScheduler(
        **DIFFUSERS_SD, algorithm_type="dpmsolver++", solver_order=3, solver_type="heun", use_exponential_sigmas=True
    )
    scheduler.set_timesteps(16)
    sigmas = scheduler.sigmas.to(torch.float64)
    x = _start(sigmas)
    ours = dpm.sample_dpmpp_3m_sde(GaussianDenoiser(), x.clone(), sigmas, SamplerOptions(eta=0.0), None, no_noise)
    theirs = _run_diffusers_multistep(scheduler, x, None)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=DIFFUSERS_TOL)


@pytest.mark.filterwarnings("ignore:Should have ta>=t0:UserWarning")  # diffusers' own tree, queried at its end
@pytest.mark.parametrize("use_karras_sigmas", [False, True])
def test_dpmpp_sde_with_brownian_noise_matches_diffusers_dpm_sde(use_karras_sigmas):
    """diffusers' DPMSolverSDEScheduler is k-diffusion's DPM++ SDE with k-diffusion's Brownian-tree
    noise seeded by noise_sampler_seed: the same seed through BrownianTreeNoise gives the same
    result (one image; float32, measured difference 1.2e-6, tolerance 1e-5). So the tree, its
    time variable and the sampler all agree with k-diffusion's."""
    scheduler = DPMSolverSDEScheduler(**DIFFUSERS_SD, use_karras_sigmas=use_karras_sigmas, noise_sampler_seed=1234)
    scheduler.set_timesteps(10)
    sigmas = torch.unique_consecutive(scheduler.sigmas)  # it stores each inner sigma twice
    den = GaussianDenoiser()
    x = _start(sigmas)[:1].float()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our tree is never queried outside its range
        noise = BrownianTreeNoise.for_sigmas(x, sigmas, [1234])
        ours = dpm.sample_dpmpp_sde(den, x.clone(), sigmas, SamplerOptions(), None, noise)
    theirs = x.clone()
    for timestep in scheduler.timesteps:
        if scheduler.state_in_first_order:
            sigma = scheduler.sigmas[scheduler.step_index or 0]
        else:
            sigma = scheduler.mid_point_sigma  # the second stage's model call is at the midpoint
        eps = (theirs - den(theirs, sigma)) / sigma
        theirs = scheduler.step(eps, timestep, theirs).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=0, atol=DIFFUSERS_TOL)


# --- Brownian-tree noise --------------------------------------------------------------------------


def _tree(seeds: list[int], like: torch.Tensor | None = None) -> BrownianTreeNoise:
    like = torch.zeros(len(seeds), 3, 8, 8) if like is None else like
    return BrownianTreeNoise(like, SIGMA_MIN, SIGMA_MAX, seeds)


def _t(value: float) -> torch.Tensor:
    return torch.tensor(value)


def test_brownian_same_seeds_same_draws_and_other_seeds_others():
    queries = [(14.6146, 9.0), (9.0, 3.5), (3.5, 0.0292), (14.6146, 0.0292)]
    a = [_tree([3, 4])(_t(s), _t(n)) for s, n in queries]
    b = [_tree([3, 4])(_t(s), _t(n)) for s, n in reversed(queries)][::-1]  # any query order
    c = [_tree([5, 6])(_t(s), _t(n)) for s, n in queries]
    for x, y, z in zip(a, b, c, strict=True):
        assert x.shape == (2, 3, 8, 8)
        torch.testing.assert_close(x, y, rtol=0, atol=0)
        assert (x - z).abs().max() > 0.5


def test_brownian_noise_of_an_image_depends_only_on_its_seed():
    pair = _tree([11, 12])(_t(5.0), _t(2.0))
    other_partner = _tree([11, 99])(_t(5.0), _t(2.0))
    alone = _tree([11])(_t(5.0), _t(2.0))
    torch.testing.assert_close(pair[0], other_partner[0], rtol=0, atol=0)
    torch.testing.assert_close(pair[0], alone[0], rtol=0, atol=0)
    assert (pair[1] - other_partner[1]).abs().max() > 0.5


def test_brownian_increments_add_up():
    """(W(b) - W(a)) + (W(c) - W(b)) = W(c) - W(a): the normalised draws times sqrt(|interval|)."""
    noise = _tree([21, 22])
    a, b, c = 12.0, 4.25, 0.5
    whole = noise(_t(a), _t(c)) * math.sqrt(a - c)
    halves = noise(_t(a), _t(b)) * math.sqrt(a - b) + noise(_t(b), _t(c)) * math.sqrt(b - c)
    torch.testing.assert_close(halves, whole, rtol=0, atol=1e-5)
    # the reversed interval is the negated increment
    torch.testing.assert_close(noise(_t(c), _t(a)), -noise(_t(a), _t(c)), rtol=0, atol=0)


def test_brownian_draws_are_standard_normal_and_correlated_as_a_path():
    """40000 scalars per interval: mean within 0.02 and variance within 0.03 of N(0, 1) (sd 0.005
    and 0.007); disjoint intervals uncorrelated (|r| < 0.03), an interval and its first half
    correlated sqrt(1/2) = 0.707 (within 0.03)."""
    noise = BrownianTreeNoise(torch.zeros(4, 10_000), SIGMA_MIN, SIGMA_MAX, [1, 2, 3, 4])
    draws = {k: noise(_t(s), _t(n)).flatten() for k, (s, n) in {"hi": (14.0, 6.0), "lo": (6.0, 0.1), "mid": (14.0, 10.0)}.items()}
    for draw in draws.values():
        assert abs(draw.mean().item()) < 0.02 and abs(draw.var().item() - 1) < 0.03
    assert abs(torch.corrcoef(torch.stack([draws["hi"], draws["lo"]]))[0, 1].item()) < 0.03
    assert abs(torch.corrcoef(torch.stack([draws["hi"], draws["mid"]]))[0, 1].item() - math.sqrt(0.5)) < 0.03


def test_brownian_noise_has_the_latents_dtype_and_device():
    like = torch.zeros(2, 4, dtype=torch.float64)
    draw = BrownianTreeNoise(like, SIGMA_MIN, SIGMA_MAX, [0, 1])(_t(3.0), _t(2.0))
    assert draw.dtype == torch.float64 and draw.device == like.device and draw.shape == like.shape


def test_brownian_tree_spans_the_schedule_and_refuses_outside_it():
    sigmas = karras(8).float()
    noise = BrownianTreeNoise.for_sigmas(torch.zeros(1, 4), sigmas, [0])
    assert noise.sigma_min == float(sigmas[-2]) and noise.sigma_max == float(sigmas[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        noise(sigmas[0], sigmas[-2])  # the schedule's own (float32) ends are inside
    with pytest.raises(ValueError, match="outside the tree"):
        noise(sigmas[0], _t(0.0))
    with pytest.raises(ValueError, match="seeds for a batch"):
        BrownianTreeNoise(torch.zeros(2, 4), SIGMA_MIN, SIGMA_MAX, [0])
    with pytest.raises(ValueError, match="sigma_min"):
        BrownianTreeNoise(torch.zeros(1, 4), 0.0, SIGMA_MAX, [0])


# --- Callback and the source of randomness --------------------------------------------------------


class CountingNoise:
    """Counts draws and records their intervals; standard normal from its own generator."""

    def __init__(self, like: torch.Tensor) -> None:
        self.inner = GeneratorNoise(like, [torch.Generator().manual_seed(i) for i in range(like.shape[0])])
        self.intervals: list[tuple[float, float]] = []

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        self.intervals.append((float(sigma), float(sigma_next)))
        return self.inner(sigma, sigma_next)


DRAWS_PER_STEP = {"2S a": 1, "2M": 0, "SDE": 2, "2M SDE": 1, "2M SDE Heun": 1, "3M SDE": 1}


@pytest.mark.parametrize("name", list(ALL))
def test_callback_once_per_step_and_all_randomness_from_the_noise_source(name):
    den = GaussianDenoiser()
    sigmas = karras(7)
    x = 14 * torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3)
    steps: list[StepInfo] = []
    noise = CountingNoise(x)
    rng_before = torch.get_rng_state()
    out = ALL[name](den, x.clone(), sigmas, SamplerOptions(), steps.append, noise)
    assert torch.equal(torch.get_rng_state(), rng_before), "drew from torch's global generator"
    assert [s.i for s in steps] == list(range(len(sigmas) - 1))
    assert [float(s.sigma) for s in steps] == sigmas[:-1].tolist()
    assert steps[-1].x is out
    # noise for every step but the last (to 0), each interval inside the step it belongs to
    assert len(noise.intervals) == DRAWS_PER_STEP[name] * (len(sigmas) - 2)
    for sigma, sigma_next in noise.intervals:
        assert sigma in sigmas.tolist() and 0 < sigma_next < sigma
    # the same noise gives the same result: nothing else is random
    again = ALL[name](GaussianDenoiser(), x.clone(), sigmas, SamplerOptions(), None, CountingNoise(x))
    torch.testing.assert_close(again, out, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_eta_0_draws_no_noise(name):
    x = torch.linspace(-10, 10, 4, dtype=torch.float64)[None]
    STOCHASTIC[name](GaussianDenoiser(), x, karras(5), SamplerOptions(eta=0.0), None, no_noise)


def test_s_noise_scales_the_added_noise():
    """Ancestral noise is scaled by s_noise: with s_noise 0 the noisy sampler's draws have no effect."""
    den = GaussianDenoiser()
    x = torch.linspace(-10, 10, 4, dtype=torch.float64)[None]
    sigmas = karras(6)
    for fn in STOCHASTIC.values():
        quiet = SamplerOptions(s_noise=0.0)
        a = fn(den, x.clone(), sigmas, quiet, None, CountingNoise(x))
        b = fn(den, x.clone(), sigmas, quiet, None, lambda s, n: 100 * torch.ones_like(x))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
