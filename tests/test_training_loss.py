"""The training loss options of ``modules.training.loop``: Min-SNR-gamma weights and offset noise.

A stand-in UNet predicts zero for every pixel and records what it is given. The latents are all
zero, so the noisy input is ``sqrt(1 - alpha_t) * noise`` and the noise (the epsilon target) can
be read back from what the UNet saw; the loss the step returns is then checked against a sum
done here by hand.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from modules.training.config import TrainOptions
from modules.training.loop import LatentSet, LoopData, LoopState, Precision, TrainingMethod, min_snr_weights, training_step


class ZeroUNet(torch.nn.Module):
    """Predicts ``w`` (0) everywhere and keeps the last (noisy latents, timesteps) it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> SimpleNamespace:
        self.seen = (noisy.detach().clone(), timesteps.detach().clone())
        return SimpleNamespace(sample=torch.zeros_like(noisy) + self.w)


class ZeroMethod(TrainingMethod):
    def __init__(self) -> None:
        self.unet = ZeroUNet()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.unet.w]

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return torch.zeros(len(prompts), 77, 8)


def scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=prediction_type)


def snr_by_hand(sched: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    alpha = sched.alphas_cumprod[timesteps].double()
    return alpha / (1 - alpha)


def one_step(options: TrainOptions, prior: bool = False, prior_weight: float = 1.0):
    """Run one training step on zero latents; returns (loss, the epsilon target per image, timesteps)."""
    zeros = torch.zeros(3, 4, 16, 16)
    data = LoopData(LatentSet(zeros, zeros.clone()), ["a", "b", "c"])
    if prior:
        data = LoopData(LatentSet(zeros, zeros.clone()), ["a", "b", "c"], LatentSet(zeros, zeros.clone()),
                        ["x", "y", "z"], prior_weight)
    method = ZeroMethod()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.0)
    state = LoopState(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))
    sched = scheduler()
    loss = training_step(method, data, sched, options, state, Precision("cpu", None, None), method.parameters())
    noisy, timesteps = method.unet.seen
    noise = noisy / (1 - sched.alphas_cumprod[timesteps]).sqrt().view(-1, 1, 1, 1)
    return loss, noise, timesteps


def options(**fields) -> TrainOptions:
    return TrainOptions(instance_prompt="a zwx shape", output_name="zwx", batch_size=8, seed=3, **fields)


def test_min_snr_weights_follow_the_formula_for_both_targets():
    t = torch.tensor([0, 10, 100, 400, 700, 999])
    snr = snr_by_hand(scheduler(), t)
    eps = min_snr_weights(scheduler("epsilon"), t, 5.0).double()
    v = min_snr_weights(scheduler("v_prediction"), t, 5.0).double()
    assert torch.allclose(eps, torch.clamp(snr, max=5.0) / snr, rtol=1e-4)
    assert torch.allclose(v, torch.clamp(snr, max=5.0) / (snr + 1), rtol=1e-4)
    assert eps[-1] == pytest.approx(1.0) and eps[0] < 0.01  # noisy steps keep full weight, nearly clean ones little


def test_the_plain_loss_is_the_mean_squared_error():
    loss, noise, _ = one_step(options())
    assert loss == pytest.approx(float(noise.square().mean()), rel=1e-4)


def test_snr_gamma_weights_each_image_by_its_timestep():
    loss, noise, timesteps = one_step(options(snr_gamma=5.0))
    snr = snr_by_hand(scheduler(), timesteps)
    weights = torch.clamp(snr, max=5.0) / snr
    expected = float((weights * noise.square().mean(dim=(1, 2, 3)).double()).mean())
    assert loss == pytest.approx(expected, rel=1e-4)
    plain = float(noise.square().mean())
    assert loss != pytest.approx(plain, rel=1e-3)  # the timesteps drawn include nearly clean ones


def test_with_prior_preservation_the_class_half_is_weighted_apart():
    loss, noise, timesteps = one_step(options(snr_gamma=5.0), prior=True, prior_weight=3.0)
    snr = snr_by_hand(scheduler(), timesteps)
    per_image = (torch.clamp(snr, max=5.0) / snr) * noise.square().mean(dim=(1, 2, 3)).double()
    instance, prior = per_image.chunk(2)
    assert noise.shape[0] == 16
    assert loss == pytest.approx(float(instance.mean() + 3.0 * prior.mean()), rel=1e-4)


def test_noise_offset_shifts_each_channel_of_the_noise_by_a_constant():
    _, plain, _ = one_step(options())
    _, offset, _ = one_step(options(noise_offset=1.0))
    plain_means = plain.mean(dim=(2, 3)).abs().mean()  # about 1/16 for 16x16 Gaussian noise
    offset_means = offset.mean(dim=(2, 3)).abs().mean()  # about 0.8: the constant's |N(0, 1)|
    assert plain_means < 0.15 and offset_means > 0.4
    assert torch.allclose(offset - offset.mean(dim=(2, 3), keepdim=True), plain - plain.mean(dim=(2, 3), keepdim=True),
                          atol=1e-4)  # the same noise underneath, only shifted per channel


@pytest.mark.parametrize("fields, message", [
    ({"snr_gamma": 0}, "snr_gamma"), ({"noise_offset": -0.1}, "noise_offset"), ({"noise_offset": 2}, "noise_offset")])
def test_bad_loss_options_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        options(**fields)
