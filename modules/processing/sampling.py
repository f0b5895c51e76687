"""The one sampling core every generation mode runs through.

txt2img, img2img, inpainting, outpainting, the hires fix's second pass, ControlNet and the
training sample images all describe their run as one typed ``SamplingInput`` and call ``sample``:

1. the sampler (a ``samplers.SamplerRun``: function, options, sigma schedule, seeded noise) gives
   the levels; with ``strength`` < 1 only the last ``int(steps * strength)`` steps run
   (diffusers' rule), from the init latents noised to that level; at strength 1 from the noise;
2. the ``ModelDenoiser`` turns the UNet into D(x, sigma), k-diffusion's denoiser: the guided
   prediction (``GuidedModel``: the prompts' embeddings in force at that step (``Conditioning``:
   scheduled prompts, ``AND`` parts with weights), classifier-free guidance as A1111 combines
   it, ControlNet residuals, a 9-channel inpainting UNet's extra channels, SDXL's pooled text
   and size conditioning) turned into a clean-latents estimate for epsilon or v models, and,
   with a ``mask``, the kept area's estimate set to the init latents;
3. the sampler function walks the schedule (``modules.samplers``), with the UNet merging tokens
   for the run when ``token_merging_ratio`` is above 0 (``modules.token_merging``); the kept area
   is put back exactly at the end;
4. ``on_step`` hears of every step (progress, preview, skip and cancel live there); it may raise
   ``StopSampling`` with that step's clean-latents estimate, which ``sample`` then returns (A1111's
   ``launch_sampling`` returns its ``last_latent`` on Interrupt and Skip).

A run can be one part of a schedule (``first_step``, ``end_step``): the SDXL refiner takes over
the latents the base model left at the switch and runs the rest of the same schedule.

The core is sampler-neutral: every sampler is a function of the denoiser, the latents, the
sigmas, its options, a callback and a noise source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from modules import soft_inpainting, token_merging
from modules.hooks import CFGDenoiserParams, HookRegistry
from modules.prompt_schedule import entry_at
from modules.samplers import SamplerRun
from modules.samplers.base import StepInfo
from modules.samplers.schedules import ModelSigmas
from modules.schemas import SoftInpainting


class ControlResiduals(Protocol):
    """ControlNet units (``modules.controlnet.apply.Control``): residuals for one UNet call, or None.
    The first ``uncond_rows`` rows of the batch are the unconditional ones (0: no guidance); ``added``
    is SDXL's pooled text and size conditioning for the same rows (None for SD 1.x/2.x)."""

    def __call__(self, sample: torch.Tensor, t: Any, embeds: torch.Tensor, step: int, total: int,
                 uncond_rows: int, added: dict[str, torch.Tensor] | None = None,
                 ) -> tuple[list[torch.Tensor], torch.Tensor] | None: ...


# on_step(index, steps, denoised): step ``index`` of the full schedule's ``steps`` is done; ``denoised``
# is its estimate of the clean latents (for previews).
StepCallback = Callable[[int, int, torch.Tensor], None]

ALWAYS = 2**31  # the end of a schedule entry that never ends


class StopSampling(Exception):  # noqa: N818 - a signal, not an error
    """Raised by ``on_step`` to end the run after a step (Interrupt, Skip): ``sample`` returns
    ``denoised``, that step's estimate of the clean latents, as A1111 returns its last latent."""

    def __init__(self, denoised: torch.Tensor) -> None:
        super().__init__("sampling stopped early")
        self.denoised = denoised


@dataclass(frozen=True)
class TextEmbedding:
    """One encoded prompt text: (1, tokens, dim), and SDXL's pooled embedding (1, dim)."""

    tokens: torch.Tensor
    pooled: torch.Tensor | None = None


@dataclass(frozen=True)
class PromptSchedule:
    """One prompt over the run: ``(end_at_step, embedding)`` entries in order, A1111's
    ``ScheduledPromptConditioning``; a prompt without edits has a single entry."""

    entries: tuple[tuple[int, TextEmbedding], ...]

    def at(self, step: int) -> TextEmbedding:
        """The embedding in force at ``step`` (from 0 among the steps that run)."""
        return self.entries[entry_at(self.entries, step)][1]


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

    def at(self, step: int) -> tuple[list[tuple[TextEmbedding, float]], TextEmbedding]:
        """The parts' embeddings with their weights, and the negative one, at ``step``."""
        return [(schedule.at(step), weight) for schedule, weight in self.parts], self.uncond.at(step)


@dataclass
class SamplingInput:
    """Everything one run of the core needs; the modes build it, ``sample`` consumes it."""

    unet: Any  # a diffusers UNet2DConditionModel (or anything called like one)
    sampler: SamplerRun  # from ``samplers.prepare``: the function, its options, the schedule, its noise
    model_sigmas: ModelSigmas  # the model's noise levels (sigma <-> timestep)
    device: torch.device  # where the UNet computes (the pipeline's execution device)
    conditioning: Conditioning
    noise: torch.Tensor  # (batch, channels, h, w): the seeded unit noise
    steps: int  # the steps the user asked for (the schedule is ``sampler.sigmas``)
    cfg_scale: float
    prediction_type: str = "epsilon"  # the model's parametrization: "epsilon" or "v_prediction"
    strength: float = 1.0  # 1: from noise alone; less: from ``init_latents``, the last int(steps * strength) steps
    init_latents: torch.Tensor | None = None  # (batch, channels, h, w); None: txt2img
    mask: torch.Tensor | None = None  # (batch, 1, h, w), 1 = repaint: the rest is kept from init_latents
    inpaint_channels: torch.Tensor | None = None  # (batch, 5, h, w): a 9-channel UNet's mask + masked-image latents
    control: ControlResiduals | None = None
    size_condition: tuple[int, int] | None = None  # SDXL: (height, width) in pixels, original and target size
    # SDXL refiner: (positive, negative) aesthetic scores, its time ids' last number for the
    # conditional and the unconditional rows (A1111's defaults 6.0 / 2.5); None: SDXL base's time ids
    aesthetic_score: tuple[float, float] | None = None
    # the part of the run to sample: steps [first_step, end_step) among those that run (None: to the
    # end). From a first step > 0 the run continues from ``resume_latents`` as they are (no noise is
    # added: the latents another model left at that step, e.g. at the refiner's switch); a mask still
    # keeps ``init_latents`` outside it.
    first_step: int = 0
    end_step: int | None = None
    resume_latents: torch.Tensor | None = None
    on_step: StepCallback | None = None
    hooks: HookRegistry | None = None  # extensions' ``cfg_denoiser`` hooks, before each model call
    # A1111's soft inpainting: ``mask`` (soft, not rounded) blends the init latents in by noise level,
    # with no hard blend at the end (``modules.soft_inpainting``); None: the hard blend
    soft_inpainting: SoftInpainting | None = None
    s_min_uncond: float = 0.0  # A1111's NGMS: below this sigma, every other model call runs without the negative rows
    token_merging_ratio: float = 0.0  # A1111's token merging in the UNet (``modules.token_merging``); 0: off
    # a merged batch of several jobs (``modules.job_batching``): each job's conditioning and its number
    # of images, in batch order; all have the same AND parts' weights and token count. Empty:
    # ``conditioning`` for every image.
    segments: tuple[tuple[Conditioning, int], ...] = ()

    @property
    def guided(self) -> bool:
        """Whether the unconditional prediction runs: above CFG 1 (as in diffusers), and always
        for composable prompts (A1111's combination needs it)."""
        return self.cfg_scale > 1.0 or self.conditioning.composable


def steps_that_run(steps: int, strength: float) -> int:
    """How many of ``steps`` a run at ``strength`` takes (0: none, the input is kept)."""
    return min(int(steps * strength), steps)


def sdxl_time_ids(height: int, width: int, dtype: torch.dtype, aesthetic_score: float | None = None) -> torch.Tensor:
    """SDXL's size conditioning with A1111's defaults: original size = target size, crop (0, 0); the
    refiner's ends with the aesthetic score instead of the target size."""
    if aesthetic_score is not None:
        return torch.tensor([[height, width, 0, 0, aesthetic_score]], dtype=dtype)
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype)


class GuidedModel:
    """The UNet with classifier-free guidance: scaled latents and a timestep in, the guided raw
    output (noise or v) out, and the unconditional one.

    One UNet batch per call: the unconditional rows, then each ``AND`` part's rows (unguided:
    the prompt's rows alone). The result is A1111's combination (``combine_denoised``),
    ``uncond + sum(weight * cfg_scale * (cond_i - uncond))``, on the raw model outputs: every
    coefficient set sums to 1, so it is the same combination of the denoised images whether the
    model predicts noise or v.
    """

    def __init__(self, inp: SamplingInput) -> None:
        self.unet = inp.unet
        self.cfg_scale = inp.cfg_scale / inp.sampler.sampler.cfg_divisor
        self.guided = inp.guided
        self.control = inp.control
        self.batch = inp.noise.shape[0]
        self.segments = inp.segments or ((inp.conditioning, self.batch),)
        self.device, self.dtype = inp.device, inp.unet.dtype
        self.size_condition = inp.size_condition
        self.aesthetic_score = inp.aesthetic_score
        self.extra = inp.inpaint_channels.to(self.device, self.dtype) if inp.inpaint_channels is not None else None
        self._rows: tuple[int, ...] = ()  # ids of the embeddings the current batch was built from
        self.embeds = torch.empty(0)
        self.added: dict[str, torch.Tensor] | None = None
        self.weights: list[float] = []

    def _build(self, step: int) -> int:
        """The UNet batch's text conditioning for ``step`` (rebuilt only when the schedule moves); its row count."""
        segments = []  # per job of the batch: (its rows' embeddings, its image count)
        for conditioning, count in self.segments:
            parts, uncond = conditioning.at(step)
            segments.append(([uncond, *(embedding for embedding, _ in parts)] if self.guided else [parts[0][0]], count))
        rows = segments[0][0]
        key = tuple(id(row) for job_rows, _ in segments for row in job_rows)
        if key != self._rows:
            b, device, dtype = self.batch, self.device, self.dtype
            # row r of the UNet batch (negative, then each AND part): every job's embedding, once per image
            self.embeds = torch.cat([job_rows[r].tokens.to(device, dtype).repeat(n, 1, 1)
                                     for r in range(len(rows)) for job_rows, n in segments])
            self.added = None
            if rows[0].pooled is not None:  # SDXL: pooled text and size conditioning
                if self.size_condition is None:
                    raise ValueError("an SDXL conditioning needs size_condition (the image's height and width)")
                pooled = torch.cat([job_rows[r].pooled.to(device, dtype).repeat(n, 1)
                                    for r in range(len(rows)) for job_rows, n in segments])
                if self.aesthetic_score is None:
                    time_ids = sdxl_time_ids(*self.size_condition, dtype).repeat(pooled.shape[0], 1)
                else:  # the refiner: the negative score on the unconditional rows
                    positive, negative = self.aesthetic_score
                    scores = [negative if self.guided and i == 0 else positive for i in range(len(rows))]
                    time_ids = torch.cat([sdxl_time_ids(*self.size_condition, dtype, score).repeat(b, 1)
                                          for score in scores])
                time_ids = time_ids.to(device)
                self.added = {"text_embeds": pooled, "time_ids": time_ids}
            self.weights = [weight for _, weight in self.segments[0][0].parts]
            self._rows = key
        return len(rows)

    def text_rows(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt rows, negative rows or None) of the UNet batch's text conditioning at ``step``."""
        self._build(step)
        if not self.guided:
            return self.embeds, None
        return self.embeds[self.batch:], self.embeds[: self.batch]

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, step: int, total: int,
                 embeds: torch.Tensor | None = None, extra: torch.Tensor | None = None,
                 skip_uncond: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(guided output, unconditional output or None) for ``latents`` (already scaled) at
        timestep ``t``; ``step`` of ``total`` is the place among the steps that run (prompt
        schedules, ControlNet windows). ``embeds`` / ``extra``: this call's text rows and extra
        channels where a hook replaced them (the schedule's otherwise). ``skip_uncond`` (A1111's
        NGMS): the negative rows do not run, the first prompt part's output stands in for them."""
        count = self._build(step)
        embeds = self.embeds if embeds is None else embeds
        extra = self.extra if extra is None else extra
        added = self.added
        skip = skip_uncond and self.guided
        if skip:  # drop the unconditional rows
            count -= 1
            embeds = embeds[self.batch:]
            if added is not None:
                added = {key: value[self.batch:] for key, value in added.items()}
        model_in = torch.cat([latents] * count) if count > 1 else latents
        kwargs: dict[str, Any] = {}
        if self.control is not None:
            uncond_rows = self.batch if self.guided and not skip else 0
            residuals = self.control(model_in, t, embeds, step, total, uncond_rows, added)
            if residuals is not None:
                kwargs["down_block_additional_residuals"], kwargs["mid_block_additional_residual"] = residuals
        if added is not None:
            kwargs["added_cond_kwargs"] = added
        if extra is not None:
            model_in = torch.cat([model_in, torch.cat([extra] * count) if count > 1 else extra], dim=1)
        pred = self.unet(model_in, t, encoder_hidden_states=embeds, **kwargs).sample
        if not self.guided:
            return pred, None
        if skip:
            cond_preds = list(pred.chunk(count))
            uncond_pred = cond_preds[0]
        else:
            uncond_pred, *cond_preds = pred.chunk(count)
        out = uncond_pred
        for cond_pred, weight in zip(cond_preds, self.weights, strict=True):
            out = out + (cond_pred - uncond_pred) * (weight * self.cfg_scale)
        return out, uncond_pred


class ModelDenoiser:
    """``D(x, sigma)`` for the samplers (``samplers.base.Denoiser``): the guided model in
    k-diffusion's terms (Karras et al. 2022, the VP model as a denoiser).

    ``x`` lives at noise level sigma (x = x0 + sigma * n, float32); the UNet sees
    ``x / sqrt(sigma^2 + 1)`` at the timestep whose level is sigma. An epsilon model's output n
    gives ``x - sigma * n``; a v model's gives ``x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)``.
    With a mask (inpainting with an ordinary checkpoint) the kept area's estimate is the init
    latents, as A1111's denoiser does, so every sampler walks it back to the picture; with soft
    inpainting the init latents are blended in by noise level instead (``modules.soft_inpainting``).
    With ``s_min_uncond`` (A1111's NGMS) every other call below that level skips the negative rows,
    counting calls as A1111 does (the 2nd, 4th, ...).
    """

    def __init__(self, model: GuidedModel, inp: SamplingInput, sigmas: torch.Tensor,
                 init: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        self.model, self.model_sigmas, self.prediction = model, inp.model_sigmas, inp.prediction_type
        if self.prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction type {self.prediction!r} is not supported (epsilon or v_prediction)")
        self.levels = sigmas[1:].double()  # the steps' end levels: a sigma's step is how many it lies under
        self.total = len(sigmas) - 1
        self.init, self.mask = init, mask
        self.soft = inp.soft_inpainting if inp.soft_inpainting is not None and inp.soft_inpainting.enabled else None
        self.s_min_uncond = inp.s_min_uncond
        self.calls = 0  # model calls so far (NGMS skips on odd ones)
        self.hooks = inp.hooks if inp.hooks is not None and inp.hooks.has("cfg_denoiser") else None
        self._uncond: torch.Tensor | None = None

    @property
    def uncond(self) -> torch.Tensor | None:
        return self._uncond

    def step_of(self, sigma: torch.Tensor) -> int:
        """The step (from 0 among those that run) a level belongs to: a step's own level and the
        levels inside it map to it; its end level maps to the next one."""
        return min(int((self.levels >= float(sigma) * (1 - 1e-6)).sum()), self.total - 1)

    def _denoised(self, x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        out = out.float()
        if self.prediction == "epsilon":
            d = x - sigma * out
        else:
            d = x / (sigma**2 + 1) - out * sigma / torch.sqrt(sigma**2 + 1)
        if self.mask is not None and self.soft is not None:
            d = soft_inpainting.blend_latents(self.soft, self.init, d, soft_inpainting.step_mask(self.soft, self.mask, sigma))
        elif self.mask is not None:
            d = self.init * (1 - self.mask) + d * self.mask
        return d

    def _hooked(self, x: torch.Tensor, sigma: torch.Tensor,
                step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Extensions' ``cfg_denoiser`` hooks (A1111's ``CFGDenoiserParams``) on this call: the
        latents before the model's input scaling, the text rows and extra channels, as they leave them."""
        cond, uncond = self.model.text_rows(step)
        params = self.hooks.cfg_denoiser(CFGDenoiserParams(
            x=x, image_cond=self.model.extra, sigma=sigma, sampling_step=step, total_sampling_steps=self.total,
            text_cond=cond, text_uncond=uncond, denoiser=self))
        embeds = params.text_cond if params.text_uncond is None else torch.cat([params.text_uncond, params.text_cond])
        return params.x, embeds, params.image_cond

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.float()
        step = self.step_of(sigma)
        embeds = extra = None
        if self.hooks is not None:
            x, embeds, extra = self._hooked(x, sigma, step)
        scaled = (x / torch.sqrt(sigma**2 + 1)).to(self.model.dtype)
        t = self.model_sigmas.sigma_to_t(sigma.cpu()).to(x.device)
        skip_uncond = self.calls % 2 == 1 and 0 < float(sigma) < self.s_min_uncond
        self.calls += 1
        out, uncond = self.model(scaled, t, step, self.total, embeds, extra, skip_uncond)
        self._uncond = self._denoised(x, sigma, uncond) if uncond is not None else None
        return self._denoised(x, sigma, out)


@torch.no_grad()
def sample(inp: SamplingInput) -> torch.Tensor:
    """Run the sampler over the schedule and return the final latents (see the module docstring)."""
    device = inp.device
    # 1. the schedule, and where on it this run starts (its length is the steps asked for, except
    #    where a schedule rounds as A1111's does: DDIM's timestep stride)
    full = inp.sampler.sigmas.to(device)
    length = len(full) - 1
    run = steps_that_run(length, inp.strength)
    start = length - run
    sigmas = full[start:]
    first, end = inp.first_step, run if inp.end_step is None else min(inp.end_step, run)
    if not 0 <= first <= end:
        raise ValueError(f"first_step {first} must lie in 0..end_step ({end})")
    noise = inp.noise.to(device, torch.float32)
    init = inp.init_latents.to(device, torch.float32) if inp.init_latents is not None else None
    if run == 0:
        return init if init is not None else noise
    if first > 0:  # a continuation: the latents another model left at this step
        if inp.resume_latents is None:
            raise ValueError("a run from first_step > 0 continues from resume_latents; none were given")
        x = inp.resume_latents.to(device, torch.float32)
    elif init is None or run == length:
        x = noise * inp.sampler.initial_scale(sigmas[0])
    else:
        x = init + noise * sigmas[0]
    if first == end:
        return x
    mask = inp.mask.to(device, torch.float32) if inp.mask is not None and init is not None else None
    # 2. the model as a denoiser (steps counted among all that run); 3. the sampler walks its part
    denoiser = ModelDenoiser(GuidedModel(inp), inp, sigmas, init, mask)
    part = sigmas[first:end + 1]

    def callback(info: StepInfo) -> None:  # 4. progress, preview, skip, cancel
        if inp.on_step is not None:
            inp.on_step(start + first + info.i, length, info.denoised)

    try:
        with token_merging.merged_tokens(inp.unet, inp.token_merging_ratio):
            x = inp.sampler.function(denoiser, x, part, inp.sampler.options, callback, inp.sampler.noise_source(x, part))
    except StopSampling as stop:  # Interrupt or Skip: where sampling stopped, denoised
        x = stop.denoised.to(device, torch.float32)
    if end < run:  # another model goes on from here: full precision
        return x
    if mask is not None and denoiser.soft is None:  # the kept area exactly as it was
        x = init * (1 - mask) + x * mask
    return x.to(inp.unet.dtype)
