"""The one sampling core every generation mode runs through.

txt2img, img2img, inpainting, outpainting, the hires fix's second pass, ControlNet and the
training sample images all describe their run as one typed ``SamplingInput`` and call ``sample``:

1. the sampler (a fresh diffusers scheduler from ``modules.samplers``) sets its timesteps; with
   ``strength`` < 1 only the last ``int(steps * strength)`` steps run (diffusers' and A1111's
   rule), from the init latents noised to that level; at strength 1 from the noise alone;
2. at every step the ``Denoiser`` turns the latents into the model's guided prediction:
   classifier-free guidance, ControlNet residuals, a 9-channel inpainting UNet's extra channels,
   SDXL's pooled text and size conditioning;
3. the sampler steps; with a ``mask`` the area outside it is put back to the init latents,
   noised to the level of the next step (inpainting with an ordinary checkpoint);
4. ``on_step`` hears of every model call (progress, preview, skip and cancel live there).

The core is sampler-neutral: it asks the scheduler only for ``set_timesteps``, ``timesteps``,
``order``, ``init_noise_sigma``, ``scale_model_input``, ``add_noise`` and ``step``. The model's
parametrization (epsilon or v-prediction) is in the scheduler's config, which ``make_scheduler``
takes from the model, so the denoiser hands the scheduler the UNet's raw (guided) output.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


class ControlResiduals(Protocol):
    """ControlNet units (``modules.controlnet.apply.Control``): residuals for one UNet call, or None."""

    def __call__(self, sample: torch.Tensor, t: Any, embeds: torch.Tensor, step: int, total: int,
                 guided: bool) -> tuple[list[torch.Tensor], torch.Tensor] | None: ...


# on_step(index, calls, latents): the model call ``index`` of the full schedule's ``calls`` is done.
StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass(frozen=True)
class Conditioning:
    """Encoded prompts for classifier-free guidance.

    ``cond`` and ``uncond`` are (1, tokens, dim) and of equal length. SDXL adds the second text
    encoder's pooled outputs ((1, dim) each), which the UNet takes with the size conditioning.
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    pooled: torch.Tensor | None = None
    uncond_pooled: torch.Tensor | None = None


@dataclass
class SamplingInput:
    """Everything one run of the core needs; the modes build it, ``sample`` consumes it."""

    unet: Any  # a diffusers UNet2DConditionModel (or anything called like one)
    scheduler: Any  # a fresh scheduler from ``samplers.make_scheduler``; the run sets its timesteps
    device: torch.device  # where the UNet computes (the pipeline's execution device)
    conditioning: Conditioning
    noise: torch.Tensor  # (batch, channels, h, w): the seeded noise
    steps: int  # the schedule's length, as the user asked
    cfg_scale: float
    strength: float = 1.0  # 1: from noise alone; less: from ``init_latents``, the last int(steps * strength) steps
    init_latents: torch.Tensor | None = None  # (batch, channels, h, w); None: txt2img
    mask: torch.Tensor | None = None  # (batch, 1, h, w), 1 = repaint: the rest is kept from init_latents
    inpaint_channels: torch.Tensor | None = None  # (batch, 5, h, w): a 9-channel UNet's mask + masked-image latents
    control: ControlResiduals | None = None
    size_condition: tuple[int, int] | None = None  # SDXL: (height, width) in pixels, original and target size
    generators: list[torch.Generator] = field(default_factory=list)  # per image, for samplers that draw noise
    on_step: StepCallback | None = None

    @property
    def guided(self) -> bool:
        """Classifier-free guidance runs above CFG 1 (as in diffusers)."""
        return self.cfg_scale > 1.0


def steps_that_run(steps: int, strength: float) -> int:
    """How many of ``steps`` a run at ``strength`` takes (0: none, the input is kept)."""
    return min(int(steps * strength), steps)


def sdxl_time_ids(height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's size conditioning with A1111's defaults: original size = target size, crop (0, 0)."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype)


class Denoiser:
    """The model as the sampler sees it: scaled latents and a timestep in, guided prediction out."""

    def __init__(self, inp: SamplingInput) -> None:
        self.unet = inp.unet
        self.cfg_scale = inp.cfg_scale
        self.guided = inp.guided
        self.control = inp.control
        batch = inp.noise.shape[0]
        device, dtype = inp.device, inp.unet.dtype
        c = inp.conditioning
        cond = c.cond.to(device, dtype).repeat(batch, 1, 1)
        self.embeds = torch.cat([c.uncond.to(device, dtype).repeat(batch, 1, 1), cond]) if self.guided else cond
        self.extra = None
        if inp.inpaint_channels is not None:
            extra = inp.inpaint_channels.to(device, dtype)
            self.extra = torch.cat([extra] * 2) if self.guided else extra
        self.added = None
        if c.pooled is not None:  # SDXL: pooled text and size conditioning
            if inp.size_condition is None:
                raise ValueError("an SDXL conditioning needs size_condition (the image's height and width)")
            pooled = c.pooled.to(device, dtype).repeat(batch, 1)
            if self.guided:
                pooled = torch.cat([c.uncond_pooled.to(device, dtype).repeat(batch, 1), pooled])
            time_ids = sdxl_time_ids(*inp.size_condition, dtype).to(device).repeat(pooled.shape[0], 1)
            self.added = {"text_embeds": pooled, "time_ids": time_ids}

    def __call__(self, latents: torch.Tensor, t: Any, step: int, total: int) -> torch.Tensor:
        """The guided prediction for ``latents`` (already scaled by the sampler) at timestep ``t``;
        ``step`` of ``total`` is the call's place among the calls that run (ControlNet windows)."""
        model_in = torch.cat([latents] * 2) if self.guided else latents
        kwargs: dict[str, Any] = {}
        if self.control is not None:
            residuals = self.control(model_in, t, self.embeds, step, total, self.guided)
            if residuals is not None:
                kwargs["down_block_additional_residuals"], kwargs["mid_block_additional_residual"] = residuals
        if self.added is not None:
            kwargs["added_cond_kwargs"] = self.added
        if self.extra is not None:
            model_in = torch.cat([model_in, self.extra], dim=1)
        pred = self.unet(model_in, t, encoder_hidden_states=self.embeds, **kwargs).sample
        if not self.guided:
            return pred
        uncond_pred, cond_pred = pred.chunk(2)
        return uncond_pred + self.cfg_scale * (cond_pred - uncond_pred)


def _step_kwargs(scheduler: Any, generators: list[torch.Generator]) -> dict[str, Any]:
    """The per-image generators, for schedulers whose ``step`` draws noise."""
    accepted = inspect.signature(scheduler.step).parameters
    return {"generator": generators} if "generator" in accepted and generators else {}


@torch.no_grad()
def sample(inp: SamplingInput) -> torch.Tensor:
    """Run the sampler over the schedule and return the final latents (see the module docstring)."""
    scheduler = inp.scheduler
    device, dtype = inp.device, inp.unet.dtype
    # 1. the schedule, and where on it this run starts
    scheduler.set_timesteps(inp.steps, device=device)
    run = steps_that_run(inp.steps, inp.strength)
    start = (inp.steps - run) * scheduler.order
    timesteps = scheduler.timesteps[start:]
    calls = len(scheduler.timesteps)
    if start and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    noise = inp.noise.to(device, dtype)
    batch = noise.shape[0]
    init = inp.init_latents.to(device, dtype) if inp.init_latents is not None else None
    if init is None or run == inp.steps:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(batch))
    mask = inp.mask.to(device, dtype) if inp.mask is not None and init is not None else None
    denoiser = Denoiser(inp)
    extra = _step_kwargs(scheduler, inp.generators)
    for i, t in enumerate(timesteps):
        # 2. the guided prediction, 3. the sampler's step (and the kept area put back)
        pred = denoiser(scheduler.scale_model_input(latents, t), t, i, len(timesteps))
        latents = scheduler.step(pred, t, latents, **extra).prev_sample
        if mask is not None:
            keep = scheduler.add_noise(init, noise, timesteps[i + 1 : i + 2].repeat(batch)) if i + 1 < len(timesteps) else init
            latents = mask * latents + (1 - mask) * keep
        # 4. progress, preview, skip, cancel
        if inp.on_step is not None:
            inp.on_step(start + i, calls, latents)
    return latents
