"""The timestep samplers (DDIM, DDIM CFG++, PLMS), rewritten in sigma space.

A1111 runs these on the model's discrete timesteps with VP latents x_vp = sqrt(a) x0 + sqrt(1 - a) eps.
With sigma^2 = (1 - a) / a and x = x_vp / sqrt(a) (= x0 + sigma * eps) every update below is the
same update divided by sqrt(a_prev), so they run on any sigma schedule the caller gives; on the
sigmas of A1111's timesteps they are A1111's samplers. The noise estimate is eps = (x - D) / sigma.
"""

from __future__ import annotations

import torch

from modules.samplers.base import Denoiser, NoiseSource, SamplerOptions, StepCallback, ancestral_step, report
from modules.samplers.euler import levels, to_d

# Adams-Bashforth coefficients on an even grid, newest eps first (PNDM's pseudo linear multistep)
_ADAMS_BASHFORTH = {
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def _ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
    cfgpp: bool,
) -> torch.Tensor:
    """DDIM steps; with ``cfgpp`` the direction back to the next level is the unconditional eps."""
    sig = levels(sigmas)
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sigmas[i])
        direction = denoised
        if cfgpp and denoiser.uncond is not None:  # None: no guidance ran, the estimate is unguided
            direction = denoiser.uncond
        sigma_down, sigma_up = ancestral_step(sig[i], sig[i + 1], options.eta)
        x = denoised + to_d(x, sig[i], direction) * sigma_down
        if sigma_up > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
        report(callback, i, x, sigmas[i], denoised)
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models"), eta from options (A1111's DDIM default is 0).

    DDIM's step from a to a_prev is x_vp' = sqrt(a_prev) x0 + sqrt(1 - a_prev - s_t^2) eps + s_t z with
    s_t^2 = eta^2 (1 - a_prev) / (1 - a) (1 - a / a_prev). Dividing by sqrt(a_prev) and writing
    sigma^2 = (1 - a) / a, sigma'^2 = (1 - a_prev) / a_prev:
    s_t^2 / a_prev = eta^2 sigma'^2 (sigma^2 - sigma'^2) / sigma^2 = sigma_up^2 and
    (1 - a_prev - s_t^2) / a_prev = sigma'^2 - sigma_up^2 = sigma_down^2, so
    x' = x0 + sigma_down eps + sigma_up z = x + (sigma_down - sigma) eps + sigma_up z:
    exactly an ancestral Euler step with eta (no s_noise); eta 0 is a plain Euler step.
    """
    return _ddim(denoiser, x, sigmas, options, callback, noise, cfgpp=False)


@torch.no_grad()
def sample_ddim_cfgpp(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """DDIM CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance").

    x' = D_guided + sigma_down eps_uncond + sigma_up z with eps_uncond = (x - D_uncond) / sigma.
    Needs ``denoiser.uncond`` after each call; when it is None (no guidance ran) this is DDIM.
    A1111 runs it with the CFG scale divided by 12.5; that scaling belongs to the guidance, not here.
    """
    return _ddim(denoiser, x, sigmas, options, callback, noise, cfgpp=True)


@torch.no_grad()
def sample_plms(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """PLMS (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"): DDIM steps with Adams-Bashforth eps.

    The first step is PNDM's pseudo improved Euler (as diffusers' PNDM with skip_prk_steps and
    CompVis' PLMS): a DDIM step, eps at its end, and the DDIM step again with the mean of the two
    eps (one extra model call). Then Adams-Bashforth of order 2, 3, 4 on the history of eps, with
    the even-grid coefficients PNDM uses whatever the spacing of the sigmas. The eps at the end of
    the first step is not kept. A first step into sigma 0 is a plain DDIM step.
    """
    sig = levels(sigmas)
    history: list[torch.Tensor] = []  # eps at each step's start, newest last
    for i in range(len(sig) - 1):
        sigma, sigma_next = sig[i], sig[i + 1]
        eps = to_d(x, sigma, denoiser(x, sigmas[i]))
        if history:
            coefficients = _ADAMS_BASHFORTH[min(len(history) + 1, 4)]
            newest_first = [eps, *reversed(history)]
            eps_step = sum(c * e for c, e in zip(coefficients, newest_first, strict=True))
        elif sigma_next > 0:
            x_next = x + eps * (sigma_next - sigma)
            eps_step = (eps + to_d(x_next, sigma_next, denoiser(x_next, sigmas[i + 1]))) / 2
        else:
            eps_step = eps
        history = [*history[-2:], eps]
        x_old = x
        x = x + eps_step * (sigma_next - sigma)
        report(callback, i, x, sigmas[i], x_old - eps_step * sigma)
    return x
