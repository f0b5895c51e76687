"""The one sampling core every generation mode runs through.

txt2img, img2img, inpainting, outpainting, the hires fix's second pass, ControlNet and the
training sample images all describe their run as one typed ``SamplingInput`` and call ``sample``:

1. the sampler (a fresh diffusers scheduler from ``modules.samplers``) sets its timesteps; with
   ``strength`` < 1 only the last ``int(steps * strength)`` steps run (diffusers' and A1111's
   rule), from the init latents noised to that level; at strength 1 from the noise alone;
2. at every step the ``Denoiser`` turns the latents into the model's guided prediction: the
   prompts' embeddings in force at that call (``Conditioning``: scheduled prompts, ``AND`` parts
   with weights), classifier-free guidance as A1111 combines it, ControlNet residuals, a
   9-channel inpainting UNet's extra channels, SDXL's pooled text and size conditioning;
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

from modules.prompt_schedule import entry_at


class ControlResiduals(Protocol):
    """ControlNet units (``modules.controlnet.apply.Control``): residuals for one UNet call, or None.
    The first ``uncond_rows`` rows of the batch are the unconditional ones (0: no guidance)."""

    def __call__(self, sample: torch.Tensor, t: Any, embeds: torch.Tensor, step: int, total: int,
                 uncond_rows: int) -> tuple[list[torch.Tensor], torch.Tensor] | None: ...


# on_step(index, calls, latents): the model call ``index`` of the full schedule's ``calls`` is done.
StepCallback = Callable[[int, int, torch.Tensor], None]

ALWAYS = 2**31  # the end of a schedule entry that never ends


@dataclass(frozen=True)
class TextEmbedding:
    """One encoded prompt text: (1, tokens, dim), and SDXL's pooled embedding (1, dim)."""

    tokens: torch.Tensor
    pooled: torch.Tensor | None = None


@dataclass(frozen=True)
class PromptSchedule:
    """One prompt over the run: ``(end_at_call, embedding)`` entries in order, A1111's
    ``ScheduledPromptConditioning``; a prompt without edits has a single entry."""

    entries: tuple[tuple[int, TextEmbedding], ...]

    def at(self, call: int) -> TextEmbedding:
        """The embedding in force at denoiser call ``call`` (from 0 among the calls that run)."""
        return self.entries[entry_at(self.entries, call)][1]


@dataclass(frozen=True)
class Conditioning:
    """Encoded prompts for classifier-free guidance: the positive prompt's ``AND`` parts, each a
    schedule with its weight, and the negative prompt's schedule. All embeddings have the same
    number of tokens (``processing.conditioning`` pads them)."""

    parts: tuple[tuple[PromptSchedule, float], ...]
    uncond: PromptSchedule

    @classmethod
    def fixed(cls, cond: torch.Tensor, uncond: torch.Tensor, pooled: torch.Tensor | None = None,
              uncond_pooled: torch.Tensor | None = None) -> Conditioning:
        """One prompt and one negative prompt, the same at every step."""
        return cls(((PromptSchedule(((ALWAYS, TextEmbedding(cond, pooled)),)), 1.0),),
                   PromptSchedule(((ALWAYS, TextEmbedding(uncond, uncond_pooled)),)))

    @property
    def composable(self) -> bool:
        """Several ``AND`` parts, or one weighted: the unconditional prediction is needed at any CFG scale."""
        return len(self.parts) != 1 or self.parts[0][1] != 1.0

    def at(self, call: int) -> tuple[list[tuple[TextEmbedding, float]], TextEmbedding]:
        """The parts' embeddings with their weights, and the negative one, at denoiser call ``call``."""
        return [(schedule.at(call), weight) for schedule, weight in self.parts], self.uncond.at(call)


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
        """Whether the unconditional prediction runs: above CFG 1 (as in diffusers), and always
        for composable prompts (A1111's combination needs it)."""
        return self.cfg_scale > 1.0 or self.conditioning.composable


def steps_that_run(steps: int, strength: float) -> int:
    """How many of ``steps`` a run at ``strength`` takes (0: none, the input is kept)."""
    return min(int(steps * strength), steps)


def sdxl_time_ids(height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's size conditioning with A1111's defaults: original size = target size, crop (0, 0)."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype)


class Denoiser:
    """The model as the sampler sees it: scaled latents and a timestep in, guided prediction out.

    One UNet batch per call: the unconditional rows, then each ``AND`` part's rows (unguided:
    the prompt's rows alone). The result is A1111's combination (``combine_denoised``),
    ``uncond + sum(weight * cfg_scale * (cond_i - uncond))``, on the raw model outputs: every
    coefficient set sums to 1, so it is the same combination of the denoised images whether the
    model predicts noise or v.
    """

    def __init__(self, inp: SamplingInput) -> None:
        self.unet = inp.unet
        self.cfg_scale = inp.cfg_scale
        self.guided = inp.guided
        self.control = inp.control
        self.conditioning = inp.conditioning
        self.batch = inp.noise.shape[0]
        self.device, self.dtype = inp.device, inp.unet.dtype
        self.size_condition = inp.size_condition
        self.extra = inp.inpaint_channels.to(self.device, self.dtype) if inp.inpaint_channels is not None else None
        self._rows: tuple[int, ...] = ()  # ids of the embeddings the current batch was built from
        self.embeds = torch.empty(0)
        self.added: dict[str, torch.Tensor] | None = None
        self.weights: list[float] = []

    def _build(self, call: int) -> int:
        """The UNet batch's text conditioning for ``call`` (rebuilt only when the schedule moves); its row count."""
        parts, uncond = self.conditioning.at(call)
        rows = [uncond, *(embedding for embedding, _ in parts)] if self.guided else [parts[0][0]]
        key = tuple(id(row) for row in rows)
        if key != self._rows:
            b, device, dtype = self.batch, self.device, self.dtype
            self.embeds = torch.cat([row.tokens.to(device, dtype).repeat(b, 1, 1) for row in rows])
            self.added = None
            if rows[0].pooled is not None:  # SDXL: pooled text and size conditioning
                if self.size_condition is None:
                    raise ValueError("an SDXL conditioning needs size_condition (the image's height and width)")
                pooled = torch.cat([row.pooled.to(device, dtype).repeat(b, 1) for row in rows])
                time_ids = sdxl_time_ids(*self.size_condition, dtype).to(device).repeat(pooled.shape[0], 1)
                self.added = {"text_embeds": pooled, "time_ids": time_ids}
            self.weights = [weight for _, weight in parts]
            self._rows = key
        return len(rows)

    def __call__(self, latents: torch.Tensor, t: Any, step: int, total: int) -> torch.Tensor:
        """The guided prediction for ``latents`` (already scaled by the sampler) at timestep ``t``;
        ``step`` of ``total`` is the call's place among the calls that run (prompt schedules,
        ControlNet windows)."""
        count = self._build(step)
        model_in = torch.cat([latents] * count) if count > 1 else latents
        kwargs: dict[str, Any] = {}
        if self.control is not None:
            uncond_rows = self.batch if self.guided else 0
            residuals = self.control(model_in, t, self.embeds, step, total, uncond_rows)
            if residuals is not None:
                kwargs["down_block_additional_residuals"], kwargs["mid_block_additional_residual"] = residuals
        if self.added is not None:
            kwargs["added_cond_kwargs"] = self.added
        if self.extra is not None:
            model_in = torch.cat([model_in, torch.cat([self.extra] * count) if count > 1 else self.extra], dim=1)
        pred = self.unet(model_in, t, encoder_hidden_states=self.embeds, **kwargs).sample
        if not self.guided:
            return pred
        uncond_pred, *cond_preds = pred.chunk(count)
        out = uncond_pred
        for cond_pred, weight in zip(cond_preds, self.weights, strict=True):
            out = out + (cond_pred - uncond_pred) * (weight * self.cfg_scale)
        return out


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
