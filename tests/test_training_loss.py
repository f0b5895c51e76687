"""The training options of ``modules.training.loop``: Min-SNR-gamma weights, offset noise, caption
dropout (of every image, or of the class images only) and the EMA of the trained weights.

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
from modules.training.loop import (
    LatentSet,
    LoopData,
    LoopState,
    Precision,
    TrainingMethod,
    averaged_weights,
    make_ema,
    min_snr_weights,
    training_step,
)


class ZeroUNet(torch.nn.Module):
    """Predicts ``w`` (0) everywhere and keeps the last (noisy latents, timesteps) it saw."""

    def __init__(self, w: float = 0.0) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))
        self.seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> SimpleNamespace:
        self.seen = (noisy.detach().clone(), timesteps.detach().clone())
        return SimpleNamespace(sample=torch.zeros_like(noisy) + self.w)


class ZeroMethod(TrainingMethod):
    def __init__(self, w: float = 0.0) -> None:
        self.unet = ZeroUNet(w)
        self.prompts: list[list[str]] = []

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.unet.w]

    def encode(self, prompts: list[str]) -> torch.Tensor:
        self.prompts.append(list(prompts))
        return torch.zeros(len(prompts), 77, 8)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {"w": self.unet.w.detach().clone()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.unet.w.copy_(state["w"])


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
    return TrainOptions(**{"instance_prompt": "a zwx shape", "output_name": "zwx", "batch_size": 8, "seed": 3, **fields})


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


def test_caption_dropout_trains_some_images_on_the_empty_prompt():
    zeros = torch.zeros(3, 4, 8, 8)
    for rate, low, high in ((0.0, 0, 0), (0.5, 30, 70)):
        method = ZeroMethod()
        data = LoopData(LatentSet(zeros, zeros.clone()), ["a", "b", "c"])
        optimizer = torch.optim.SGD(method.parameters(), lr=0.0)
        state = LoopState(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))
        for _ in range(25):
            training_step(method, data, scheduler(), options(caption_dropout=rate, batch_size=4), state,
                          Precision("cpu", None, None), method.parameters())
        drawn = [p for batch in method.prompts for p in batch]
        assert len(drawn) == 100 and set(drawn) <= {"", "a", "b", "c"}
        assert low <= drawn.count("") <= high


def test_class_caption_dropout_drops_only_the_class_images_prompts():
    zeros = torch.zeros(3, 4, 8, 8)
    method = ZeroMethod()
    data = LoopData(LatentSet(zeros, zeros.clone()), ["a", "b", "c"], LatentSet(zeros, zeros.clone()), ["x", "y", "z"])
    optimizer = torch.optim.SGD(method.parameters(), lr=0.0)
    state = LoopState(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))
    request = options(class_caption_dropout=0.5, with_prior_preservation=True, class_prompt="x", batch_size=4)
    for _ in range(25):
        training_step(method, data, scheduler(), request, state, Precision("cpu", None, None), method.parameters())
    instance = [p for batch in method.prompts for p in batch[:4]]
    classes = [p for batch in method.prompts for p in batch[4:]]
    assert len(instance) == len(classes) == 100
    assert set(instance) == {"a", "b", "c"}  # the instance images always keep their prompt
    assert set(classes) <= {"", "x", "y", "z"} and 30 <= classes.count("") <= 70


def test_class_caption_dropout_needs_prior_preservation():
    with pytest.raises(ValueError, match="class_caption_dropout: only with prior preservation"):
        options(class_caption_dropout=0.1)
    assert options(class_caption_dropout=0.1, with_prior_preservation=True, class_prompt="a shape").class_caption_dropout


def test_the_ema_lags_the_trained_weights_and_they_come_back_after():
    zeros = torch.zeros(3, 4, 8, 8)
    method = ZeroMethod(w=1.0)  # predicts 1 everywhere: the loss pulls w towards the noise's mean, about 0
    params = method.parameters()
    data = LoopData(LatentSet(zeros, zeros.clone()), ["a", "b", "c"])
    optimizer = torch.optim.SGD(params, lr=0.2)
    state = LoopState(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), ema=make_ema(params, 0.9))
    assert make_ema(params, 0.0) is None
    for _ in range(8):
        training_step(method, data, scheduler(), options(ema_decay=0.9), state, Precision("cpu", None, None), params)
    last = float(method.unet.w.detach())
    assert last < 0.2
    with averaged_weights(state, params):
        averaged = float(method.unet.w.detach())
    assert last < averaged < 1.0
    assert float(method.unet.w.detach()) == last
    saved = state.to_dict(method, Precision("cpu", None, None), "fp")
    fresh_optimizer = torch.optim.SGD(params, lr=0.2)
    again = LoopState(fresh_optimizer, torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda _: 1.0),
                      ema=make_ema(params, 0.9))
    with torch.no_grad():
        method.unet.w.fill_(5.0)
    again.restore(saved, method, Precision("cpu", None, None))  # the weight and its EMA come back
    assert float(method.unet.w.detach()) == last
    with averaged_weights(again, params):
        assert float(method.unet.w.detach()) == pytest.approx(averaged)
