"""UniPC, DPM fast and DPM adaptive against the exact Gaussian solution and diffusers' UniPC.

Errors are measured on ``GaussianDenoiser`` data in float64. Every sampler here ends with x =
D(x, sigma_min) on a schedule closing at 0, and for Gaussian data that posterior mean is not the
probability-flow ODE's value at 0 (it shrinks x - mu by s^2 / (s^2 + sigma_min^2) rather than
s / sqrt(s^2 + sigma_min^2)): a floor of about 1.7e-3 here that no step count removes. So the reference is
the exact ODE solution at the last nonzero sigma passed through the same final step; the measured
error is then the solver's error at sigma_min times s^2 / (s^2 + sigma_min^2) (0.9987).

Measured max absolute error (the problem is linear, so the error is one scalar times x - mu and
the ratios do not depend on the seed) on a Karras schedule (0.0292 .. 14.6146, rho 7) plus the closing 0:

    steps            10        20        40       ratios
    UniPC order 1    2.28e-1   5.78e-2   1.41e-2   3.9, 4.1   (UniC makes order p into p + 1)
    UniPC order 2    1.34e-1   1.42e-2   1.59e-3   9.5, 8.9
    UniPC order 3    5.88e-2   3.26e-3   1.99e-4   18.0, 16.4 (5 -> 10 .. 80 steps: 13.9, 18.0, 16.4, 20.3)
    DPM fast         3.77e-3   4.59e-3   1.53e-4   0.82, 30  (last step order 1, 2, 1: see below)

DPM adaptive (10-step schedule, ignored but for its ends): 9 tries, 7 accepted, 27 + 1 calls, final
error 3.9 % of |x - mu| (rtol 5 %).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import UniPCMultistepScheduler

from modules.samplers.base import SamplerOptions, StepInfo
from modules.samplers.dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from modules.samplers.noise import GeneratorNoise
from modules.samplers.unipc import sample_unipc
from tests.gaussian_exact import GaussianDenoiser

SIGMA_MIN, SIGMA_MAX = 0.0292, 14.6146  # SD 1.x's range
DETERMINISTIC = SamplerOptions(eta=0.0)


def karras(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 (eq. 5): sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, then 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def start(sigma: float, shape: tuple[int, ...] = (2, 4, 3, 3), seed: int = 0) -> torch.Tensor:
    """x at ``sigma`` for the Gaussian data: N(mu, s^2 + sigma^2)."""
    den = GaussianDenoiser()
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return den.mu + noise * math.sqrt(den.s**2 + sigma**2)


def final_error(sampler, steps: int, options: SamplerOptions = DETERMINISTIC) -> float:
    """Max |sampler - reference|, the reference being D(exact ODE solution at sigma_min, sigma_min)."""
    sigmas = karras(steps)
    x = start(sigmas[0].item())
    den = GaussianDenoiser()
    out = sampler(den, x, sigmas, options, None, None)
    sigma_min = sigmas[-2]
    reference = den(den.exact(x, sigmas[0].item(), sigma_min.item()), sigma_min)
    return (out - reference).abs().max().item()


class CountingNoise:
    """Standard-normal noise that records its calls."""

    def __init__(self, like: torch.Tensor) -> None:
        self.inner = GeneratorNoise(like, [torch.Generator().manual_seed(7 + i) for i in range(like.shape[0])])
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        self.calls.append((float(sigma), float(sigma_next)))
        return self.inner(sigma, sigma_next)


# --- UniPC -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("order", "min_ratio"), [(1, 3.2), (2, 6.4), (3, 12.0)])
def test_unipc_converges_at_order_plus_one(order: int, min_ratio: float) -> None:
    """UniP of order p with UniC is order p + 1: halving the step divides the error by about
    2^(p+1) (measured 3.9/4.1, 9.5/8.9 and 18.0/16.4 for 10 -> 20 -> 40 steps; the asserts leave
    a 20 % margin and, for order 3, ask for at least third order)."""
    options = SamplerOptions(eta=0.0, order=order)
    errors = [final_error(sample_unipc, steps, options) for steps in (10, 20, 40)]
    assert errors[0] / errors[1] >= min_ratio, errors
    assert errors[1] / errors[2] >= min_ratio, errors
    assert errors[2] < (2e-2, 2e-3, 3e-4)[order - 1], errors


def test_unipc_default_order_3_is_accurate_at_a1111_step_counts() -> None:
    """A1111's default (order 3): 20 steps land within 4e-3 of the exact solution (measured 3.3e-3),
    80 within 2e-5 (9.8e-6)."""
    assert SamplerOptions().order == 3
    assert final_error(sample_unipc, 20, SamplerOptions()) < 4e-3
    assert final_error(sample_unipc, 80, SamplerOptions()) < 2e-5


def test_unipc_one_model_call_per_step_and_callbacks_in_order() -> None:
    sigmas = karras(12)
    x = start(sigmas[0].item())
    den, noise, infos = GaussianDenoiser(), CountingNoise(x), []
    out = sample_unipc(den, x, sigmas, SamplerOptions(), infos.append, noise)
    assert den.calls == 12
    assert [info.i for info in infos] == list(range(12))
    assert [float(info.sigma) for info in infos] == sigmas[:-1].tolist()
    assert all(isinstance(info, StepInfo) and info.x.shape == x.shape for info in infos)
    assert torch.equal(infos[-1].x, out)
    assert torch.equal(out, infos[-1].denoised)  # the step to sigma 0 is x = denoised
    assert noise.calls == []  # UniPC is deterministic: it never draws noise, whatever eta says


def test_unipc_keeps_float32_and_rejects_bad_input() -> None:
    sigmas = karras(8).float()
    x = start(sigmas[0].item()).float()
    assert sample_unipc(GaussianDenoiser(), x, sigmas, SamplerOptions(), None, None).dtype == torch.float32
    with pytest.raises(ValueError, match="order"):
        sample_unipc(GaussianDenoiser(), x, sigmas, SamplerOptions(order=0), None, None)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_unipc(GaussianDenoiser(), x, torch.tensor([5.0, 5.0, 1.0, 0.0]), SamplerOptions(), None, None)


def _diffusers_unipc(order: int, prediction_type: str, steps: int) -> UniPCMultistepScheduler:
    """diffusers' UniPC as A1111's UniPC row asks for it (bh2, predict_x0), on Karras sigmas and
    SD's betas."""
    scheduler = UniPCMultistepScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        solver_order=order,
        solver_type="bh2",
        predict_x0=True,
        use_karras_sigmas=True,
        prediction_type=prediction_type,
    )
    scheduler.set_timesteps(steps)
    scheduler.set_begin_index(0)  # Karras timesteps may repeat; the index must not be looked up
    return scheduler


def _run_diffusers(scheduler: UniPCMultistepScheduler, x: torch.Tensor) -> torch.Tensor:
    """The Gaussian model through diffusers' loop, in its VP latents x_vp = x / sqrt(1 + sigma^2);
    the final x_vp, at sigma 0, is x."""
    sigmas = scheduler.sigmas.double()
    den = GaussianDenoiser()
    x_vp = x / torch.sqrt(1 + sigmas[0] ** 2)
    for i, timestep in enumerate(scheduler.timesteps):
        x_ve = x_vp * torch.sqrt(1 + sigmas[i] ** 2)
        denoised = den(x_ve, sigmas[i])
        # the eps of VP latents, (x_vp - alpha x0) / (alpha sigma), is (x - x0) / sigma
        output = denoised if scheduler.config.prediction_type == "sample" else (x_ve - denoised) / sigmas[i]
        x_vp = scheduler.step(output, timestep, x_vp).prev_sample
    return x_vp


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 25])
def test_unipc_matches_diffusers(steps: int, order: int, prediction_type: str) -> None:
    """Same final x as diffusers' UniPCMultistepScheduler (lower_order_final, corrector on, final
    sigma 0) on its own sigmas: to 1e-12 when its sigmas are float64 (measured < 2e-14). diffusers
    keeps sigmas in float32 and does its lambda arithmetic in them; that alone moves the result by
    up to 2e-6 (tested below 1e-5)."""
    scheduler32 = _diffusers_unipc(order, prediction_type, steps)
    sigmas = scheduler32.sigmas.double()
    x = start(sigmas[0].item())
    ours = sample_unipc(GaussianDenoiser(), x, sigmas, SamplerOptions(order=order), None, None)
    scheduler64 = _diffusers_unipc(order, prediction_type, steps)
    scheduler64.sigmas = scheduler64.sigmas.double()
    assert (ours - _run_diffusers(scheduler64, x)).abs().max().item() < 1e-12
    assert (ours - _run_diffusers(scheduler32, x)).abs().max().item() < 1e-5


class NonlinearDenoiser:
    """A nonlinear D(x, sigma): tanh of x with a sigma-dependent gain, plus a term that mixes
    neighbouring elements. An affine denoiser (``GaussianDenoiser``) cannot tell apart mistakes
    that only move where, or on which x, the model is evaluated within an affine family; this one can."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = float(sigma)
        gain = 1.0 + 0.3 * math.sin(s)
        return torch.tanh(x * gain / (1.0 + 0.05 * s)) * (0.8 + 0.5 / (1.0 + s * s)) + 0.1 * x.roll(1, -1) / (1.0 + s)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [2, 3, 5, 20])
def test_unipc_matches_diffusers_step_by_step_on_a_nonlinear_denoiser(steps: int, order: int) -> None:
    """Every step's x (the predictor's, before the next model call) equals diffusers' UniPC
    (bh2, predict_x0, epsilon, lower_order_final) on SD's betas with ``timestep_spacing="linspace"``
    (uneven steps in lambda), driven with the same nonlinear model on the same float64 sigmas:
    measured < 1e-14; asserted 1e-12. Also checks the model is called at the same points."""
    scheduler = UniPCMultistepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, solver_order=order,
        solver_type="bh2", predict_x0=True, timestep_spacing="linspace", prediction_type="epsilon",
    )
    scheduler.set_timesteps(steps)
    scheduler.sigmas = scheduler.sigmas.double()
    sigmas = scheduler.sigmas
    den = NonlinearDenoiser()
    x = torch.randn((2, 4, 3, 3), generator=torch.Generator().manual_seed(3), dtype=torch.float64) * sigmas[0]
    ours_calls, ours_steps = [], []

    def recording(x_in: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        ours_calls.append(x_in.clone())
        return den(x_in, sigma)

    ours = sample_unipc(recording, x, sigmas, SamplerOptions(order=order), lambda info: ours_steps.append(info.x), None)
    x_vp = x / torch.sqrt(1 + sigmas[0] ** 2)
    for i, timestep in enumerate(scheduler.timesteps):
        x_ve = x_vp * torch.sqrt(1 + sigmas[i] ** 2)
        assert (x_ve - ours_calls[i]).abs().max().item() < 1e-12, i  # the model sees the same x
        x_vp = scheduler.step((x_ve - den(x_ve, sigmas[i])) / sigmas[i], timestep, x_vp).prev_sample
        x_next = x_vp * torch.sqrt(1 + sigmas[i + 1] ** 2)
        assert (x_next - ours_steps[i]).abs().max().item() < 1e-12, i
    assert (ours - x_vp).abs().max().item() < 1e-12


# --- DPM fast ---------------------------------------------------------------------------------


def test_dpm_fast_converges() -> None:
    """DPM-Solver-fast spends N calls as order-3 steps and one last step of order N mod 3 (2 + 1
    when 3 divides N), then one more call for the step to 0. 10, 20 and 40 calls end with an
    order-1, order-2 and order-1 step, and their errors (3.8e-3, 4.6e-3, 1.5e-4) are not monotone:
    the last step's error has the opposite sign of the order-3 steps' and cancels more of it at
    order 1. So 10 -> 40 is asserted (ratio 24.6), and the 20-call error only against a bound.
    Within one family of last orders (9, 18, 36 calls: 1.7e-1, 5.2e-3, 4.9e-5) the error falls by
    more than 4 per doubling."""
    e10, e20, e40 = (final_error(sample_dpm_fast, n) for n in (10, 20, 40))
    assert e10 < 5e-3 and e20 < 6e-3 and e40 < 2e-4, (e10, e20, e40)
    assert e10 / e40 >= 16 and e20 / e40 >= 16, (e10, e20, e40)
    e9, e18, e36 = (final_error(sample_dpm_fast, n) for n in (9, 18, 36))
    assert e9 / e18 >= 4 and e18 / e36 >= 4, (e9, e18, e36)


@pytest.mark.parametrize(("steps", "orders"), [(1, []), (2, [2]), (3, [2, 1]), (10, [3, 3, 3, 1]), (20, [3] * 6 + [2])])
def test_dpm_fast_calls_callbacks_and_no_noise_at_eta_0(steps: int, orders: list[int]) -> None:
    """N = len(sigmas) - 1 calls for the solver's steps (the paper's split into orders), one more
    for the closing step to 0; a callback after each solver step and after that last step. One
    nonzero sigma leaves nothing to solve: only the step to 0."""
    sigmas = karras(steps)
    x = start(sigmas[0].item())
    den, noise, infos = GaussianDenoiser(), CountingNoise(x), []
    out = sample_dpm_fast(den, x, sigmas, DETERMINISTIC, infos.append, noise)
    assert den.calls == sum(orders) + 1
    assert [info.i for info in infos] == list(range(len(orders) + 1))
    assert float(infos[0].sigma) == sigmas[0].item() and float(infos[-1].sigma) == sigmas[-2].item()  # not rounded
    assert torch.equal(infos[-1].x, out) and torch.equal(out, infos[-1].denoised)
    assert noise.calls == []


def test_dpm_fast_without_closing_zero_ends_at_sigma_min() -> None:
    sigmas = karras(10)[:-1]  # 9 calls, ends at sigma_min
    x = start(sigmas[0].item())
    den = GaussianDenoiser()
    out = sample_dpm_fast(den, x, sigmas, DETERMINISTIC, None, None)
    assert den.calls == 9
    assert (out - den.exact(x, sigmas[0].item(), SIGMA_MIN)).abs().max().item() < 0.2


def test_dpm_fast_eta_draws_noise_once_per_step_and_samples_the_data() -> None:
    """eta = 1 (A1111's default): ancestral steps, one draw per solver step between its levels but
    the last (it lands on sigma_min, as k-diffusion clamps it, with no noise to add) and none for
    the step to 0; 20000 samples end at N(mu, s^2) (measured mean 0.495, std 0.801)."""
    sigmas = karras(20)
    x = start(sigmas[0].item(), shape=(4, 50, 100), seed=1)
    den, noise = GaussianDenoiser(), CountingNoise(x)
    out = sample_dpm_fast(den, x, sigmas, SamplerOptions(eta=1.0), None, noise)
    assert len(noise.calls) == 6  # 7 solver steps
    assert noise.calls[0][0] == pytest.approx(SIGMA_MAX) and noise.calls[-1][1] > SIGMA_MIN
    assert abs(out.mean().item() - den.mu) < 0.01
    assert abs(out.std().item() - den.s) < 0.02 * den.s


# --- DPM adaptive -----------------------------------------------------------------------------


def test_dpm_adaptive_final_error_below_its_tolerance() -> None:
    """The error control is local (each step's order-2 vs order-3 difference within atol + rtol |x|,
    |x| the larger of this and the last level's), so the final error is not bounded by it; measured,
    the final error is 3.9 % of |x - mu| (one scalar for every element), below rtol = 5 %. The step
    count is the solver's own: 7 accepted of 9 tries (27 calls), whatever the schedule's length."""
    for steps in (10, 40):
        sigmas = karras(steps)
        x = start(sigmas[0].item())
        den, infos = GaussianDenoiser(), []
        out = sample_dpm_adaptive(den, x, sigmas, DETERMINISTIC, infos.append, None)
        assert den.calls == 28 and len(infos) == 8
        reference = den(den.exact(x, sigmas[0].item(), SIGMA_MIN), torch.tensor(SIGMA_MIN))
        relative = ((out - den.mu) / (reference - den.mu) - 1).abs()
        assert relative.max().item() < 0.05
        assert relative.max().item() > 0.01  # the solver's own tolerance, not a much finer one


def test_dpm_adaptive_callbacks_per_accepted_step_and_order_2() -> None:
    sigmas = karras(10)
    x = start(sigmas[0].item())
    for order in (2, 3):
        den, noise, infos = GaussianDenoiser(), CountingNoise(x), []
        out = sample_dpm_adaptive(den, x, sigmas, DETERMINISTIC, infos.append, noise, order=order)
        assert [info.i for info in infos] == list(range(len(infos)))
        levels = [float(info.sigma) for info in infos]
        assert levels[0] == pytest.approx(SIGMA_MAX) and levels == sorted(levels, reverse=True)
        assert levels[-1] == pytest.approx(SIGMA_MIN)  # the closing step from sigma_min to 0
        assert torch.equal(out, infos[-1].denoised)
        assert noise.calls == []
    with pytest.raises(ValueError, match="order"):
        sample_dpm_adaptive(GaussianDenoiser(), x, sigmas, DETERMINISTIC, None, None, order=4)


def test_dpm_adaptive_eta_samples_the_data() -> None:
    """eta = 1: noise once per accepted step but the last (which lands on sigma_min); 20000 samples
    end at N(mu, s^2) (measured 0.499, 0.796)."""
    sigmas = karras(20)
    x = start(sigmas[0].item(), shape=(4, 50, 100), seed=1)
    den, noise, infos = GaussianDenoiser(), CountingNoise(x), []
    out = sample_dpm_adaptive(den, x, sigmas, SamplerOptions(eta=1.0), infos.append, noise)
    assert len(noise.calls) == len(infos) - 2  # the callbacks: the accepted steps and the step to 0
    assert abs(out.mean().item() - den.mu) < 0.01
    assert abs(out.std().item() - den.s) < 0.02 * den.s


def test_dpm_solvers_reject_increasing_sigmas() -> None:
    x = start(1.0)
    for sampler in (sample_dpm_fast, sample_dpm_adaptive):
        with pytest.raises(ValueError, match="decreasing"):
            sampler(GaussianDenoiser(), x, torch.tensor([1.0, 2.0, 0.0]), DETERMINISTIC, None, None)
