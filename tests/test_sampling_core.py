"""The one sampling core (``modules.processing.sampling``) against diffusers' own pipelines.

Easel's samplers are its own functions over sigmas (``modules.samplers``); where diffusers has the
same algorithm as a k-diffusion-style scheduler (Euler, Euler a, Heun, LMS, DPM2, DPM2 a), the
core on the same tiny UNet, embeddings, noise and sigmas ends at the same latents as diffusers'
pipeline, within float32 rounding. (The VP-form schedulers, DDIM, DPM++ 2M, UniPC, LCM, PLMS, are
compared step by step on the exact Gaussian model in the sampler tests.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from modules import prompts, samplers, seeds
from modules.jobs import ProgressSink
from modules.processing import common, sampling
from modules.samplers.schedules import ModelSigmas
from modules.schemas import Txt2ImgRequest
from tests.tiny_models import tiny_components, tiny_sdxl_pipeline

PROMPT, NEGATIVE, SEED, STEPS = "a (red:1.2) circle", "blurry", 11, 4

DIFFUSERS_TWINS = {"Euler": "EulerDiscreteScheduler", "Euler a": "EulerAncestralDiscreteScheduler",
                   "Heun": "HeunDiscreteScheduler", "LMS": "LMSDiscreteScheduler", "DPM2": "KDPM2DiscreteScheduler",
                   "DPM2 a": "KDPM2AncestralDiscreteScheduler"}
TOLERANCE = 1e-4  # largest latent difference, relative to the latents' largest magnitude (float32 rounding)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def twin_scheduler(pipe, sampler: str):
    import diffusers

    cls = getattr(diffusers, DIFFUSERS_TWINS[sampler])
    scheduler = cls.from_config(pipe.scheduler.config, timestep_spacing="linspace")  # starts at sigma_max, not sqrt(1+s^2)
    scheduler.set_timesteps(STEPS)
    return scheduler


def advanced_generators(seed_list: list[int], shape: tuple[int, ...]) -> list[torch.Generator]:
    """Generators past each image's initial noise draw, where Easel's step noise starts (A1111's ImageRNG)."""
    out = []
    for s in seed_list:
        g = torch.Generator("cpu").manual_seed(s)
        torch.randn(shape, generator=g)
        out.append(g)
    return out


def core_latents(pipe, sampler: str, cond, noise, seed_list, cfg: float, *, sdxl: bool = False, size: int = 0):
    """The core's latents with the twin scheduler's own sigmas (same schedule as diffusers)."""
    model_sigmas = ModelSigmas.from_config(pipe.scheduler.config)
    run = samplers.prepare(sampler, "Uniform", model_sigmas, STEPS, seed_list)
    sigmas = twin_scheduler(pipe, sampler).sigmas.float()
    if sampler in ("DPM2", "DPM2 a"):  # diffusers repeats each level in .sigmas (its midpoints are apart)
        sigmas = torch.unique_consecutive(sigmas)
    run = dataclasses.replace(run, sigmas=sigmas)
    return sampling.sample(sampling.SamplingInput(
        unet=pipe.unet, sampler=run, model_sigmas=model_sigmas, device=torch.device("cpu"), conditioning=cond,
        noise=noise, steps=STEPS, cfg_scale=cfg, size_condition=(size, size) if sdxl else None))


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    scale = float(want.abs().max())
    difference = float((got.float() - want.float()).abs().max())
    assert difference <= TOLERANCE * scale, f"{what}: largest difference {difference:.2e} of {scale:.2f}"


@pytest.fixture(scope="module")
def sd_pipe():
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from modules.model_loading import make_tokenizer
    from tests.tiny_models import SCHEDULER

    unet, vae, text_encoder = tiny_components(0)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=make_tokenizer(),
                                   scheduler=EulerDiscreteScheduler.from_config(SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("sampler", DIFFUSERS_TWINS)
@pytest.mark.parametrize("cfg, batch", [(7.0, 1), (1.0, 2)])
def test_the_core_matches_the_diffusers_pipeline_with_the_same_algorithm(sd_pipe, sampler, cfg, batch):
    pipe, seed_list, size = sd_pipe, [SEED + i for i in range(batch)], 32
    f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    shape = (4, size // f, size // f)
    cond, uncond = prompts.encode_prompt_pair(pipe.tokenizer, pipe.text_encoder, PROMPT, NEGATIVE)
    noise = seeds.create_noise(shape, seed_list)
    got = core_latents(pipe, sampler, sampling.Conditioning.fixed(cond, uncond), noise, seed_list, cfg)
    from diffusers import StableDiffusionPipeline

    bare = StableDiffusionPipeline(**{**pipe.components, "scheduler": twin_scheduler(pipe, sampler)},
                                   requires_safety_checker=False)
    bare.set_progress_bar_config(disable=True)
    want = bare(prompt_embeds=cond, negative_prompt_embeds=uncond, num_images_per_prompt=batch, latents=noise,
                generator=advanced_generators(seed_list, shape), num_inference_steps=STEPS, guidance_scale=cfg,
                width=size, height=size, output_type="latent").images
    assert_close(got, want, sampler)


@pytest.mark.parametrize("sampler", ["Euler a", "Heun"])
def test_sdxl_conditioning_reaches_the_unet_as_the_sdxl_pipeline_sends_it(sampler):
    """SDXL's pooled text and size conditioning reach the UNet exactly as the SDXL pipeline sends them."""
    from modules.checkpoints import CheckpointInfo
    from modules.config import Settings
    from modules.model_loading import LoadedModel
    from modules.processing import conditioning
    from modules.processing.context import RunContext

    pipe = tiny_sdxl_pipeline()
    size, seed_list = 32, [5, 6]
    model = LoadedModel(CheckpointInfo("tiny-xl.safetensors", None, "single", None), "sdxl", pipe, "0000")
    ctx = RunContext(model, Settings(), None)
    prompt = "a red circle"  # unweighted: the SDXL pipeline has no A1111 weighting (tests/test_sdxl.py checks Easel's)
    cond = conditioning.encode(ctx, prompt, NEGATIVE, 1, STEPS)
    shape = (4, size // 2, size // 2)
    noise = seeds.create_noise(shape, seed_list)
    got = core_latents(pipe, sampler, cond, noise, seed_list, 6.0, sdxl=True, size=size)
    pipe.scheduler = twin_scheduler(pipe, sampler)
    want = pipe(prompt, negative_prompt=NEGATIVE, num_images_per_prompt=2, latents=noise, num_inference_steps=STEPS,
                guidance_scale=6.0, width=size, height=size, output_type="latent",
                generator=advanced_generators(seed_list, shape)).images
    assert_close(got, want, sampler)
    assert common.decode_latents(pipe, got, upcast=True)[0].size == (size, size)


def test_the_core_needs_the_size_for_an_sdxl_conditioning():
    pipe = tiny_sdxl_pipeline()
    cond = sampling.Conditioning.fixed(torch.zeros(1, 77, 64), torch.zeros(1, 77, 64), torch.zeros(1, 32),
                                       torch.zeros(1, 32))
    model_sigmas = ModelSigmas.from_config(pipe.scheduler.config)
    inp = sampling.SamplingInput(unet=pipe.unet, sampler=samplers.prepare("Euler", None, model_sigmas, 1, [0]),
                                 model_sigmas=model_sigmas, device=torch.device("cpu"), conditioning=cond,
                                 noise=torch.zeros(1, 4, 4, 4), steps=1, cfg_scale=7.0)
    with pytest.raises(ValueError, match="size_condition"):
        sampling.sample(inp)


def test_steps_that_run():
    assert sampling.steps_that_run(20, 1.0) == 20
    assert sampling.steps_that_run(20, 0.75) == 15
    assert sampling.steps_that_run(20, 0.04) == 0


def test_sdxl_takes_scheduled_and_composable_prompts():
    """Each SDXL text has its own pooled embedding; they travel with the rows of the batch."""
    from modules.checkpoints import CheckpointInfo
    from modules.config import Settings
    from modules.model_loading import LoadedModel
    from modules.processing import conditioning
    from modules.processing.context import RunContext

    pipe = tiny_sdxl_pipeline()
    model = LoadedModel(CheckpointInfo("tiny-xl.safetensors", None, "single", None), "sdxl", pipe, "0000")
    ctx = RunContext(model, Settings(), None)
    cond = conditioning.encode(ctx, "a [red|blue] cat AND a dog :0.5", "[ugly:blurry:1]", 1, STEPS)
    assert len(cond.parts) == 2 and cond.parts[0][0].at(0).pooled.shape == (1, 32)
    model_sigmas = ModelSigmas.from_config(pipe.scheduler.config)
    inp = sampling.SamplingInput(
        unet=pipe.unet, sampler=samplers.prepare("Euler", None, model_sigmas, STEPS, [1]), model_sigmas=model_sigmas,
        device=torch.device("cpu"), conditioning=cond, noise=seeds.create_noise((4, 8, 8), [1]), steps=STEPS,
        cfg_scale=5.0, size_condition=(16, 16))
    latents = sampling.sample(inp)
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()


class RecordingProgress(ProgressSink):
    """A progress sink that keeps every update (no preview watch: previews always wanted)."""

    def __init__(self) -> None:
        super().__init__()
        self.updates: list[tuple[int, int, object]] = []

    def update(self, step: int, total: int, preview=None, textinfo: str | None = None) -> None:
        self.updates.append((step, total, preview))


def test_progress_previews_and_skip_through_the_core(services):
    """Progress counts user steps (the sampler reports each step once, Heun's two calls included),
    a preview comes every n steps, and Skip ends the iteration it is pressed in (its partial image kept)."""
    from modules.processing import txt2img
    from modules.processing.context import RunContext

    settings = services.settings.model_copy(update={"show_progress_every_n_steps": 2})
    with services.models.use(services.selected_checkpoint) as model:
        progress = RecordingProgress()
        ctx = RunContext(model, settings, None, progress=progress)
        result = txt2img.run(Txt2ImgRequest(prompt="x", seed=1, steps=4, sampler_name="Heun", save_images=False), ctx)
        steps = [s for s, _, _ in progress.updates]
        assert steps == sorted(steps) and progress.updates[-1][:2] == (4, 4) and len(result.images) == 1
        previews = [p for _, _, p in progress.updates if p is not None]
        assert previews and all(p.size == (32, 32) for p in previews)

        class SkipFirst(RecordingProgress):
            def update(self, step, total, preview=None, textinfo=None):
                super().update(step, total, preview, textinfo)
                if step == 1 and not ctx.token.skipped and len(self.updates) < 3:
                    ctx.token.skip()

        ctx = RunContext(model, settings, None, progress=SkipFirst())
        result = txt2img.run(Txt2ImgRequest(prompt="x", seed=1, steps=4, n_iter=2, save_images=False), ctx)
        assert result.skipped == 1 and result.seeds == [1, 2]  # the skipped image is kept as it was (A1111)


def test_cfg_denoiser_hooks_see_each_call_and_may_change_it(services):
    """Extensions' ``cfg_denoiser`` hooks run before every model call with the step and the text
    rows; a hook that changes the prompt rows changes the image; a hook that raises is recorded
    and the job goes on."""
    request = Txt2ImgRequest(prompt="x", seed=1, steps=3, sampler_name="Euler", save_images=False)
    plain = services.submit("txt2img", request).wait(timeout=120)
    seen: list[tuple[int, int, tuple[int, ...]]] = []

    def look(params) -> None:
        seen.append((params.sampling_step, params.total_sampling_steps, tuple(params.text_uncond.shape)))
        params.text_cond = params.text_uncond  # guide toward the negative prompt: a different image

    services.hooks.add("cfg_denoiser", look, owner="looker")
    services.hooks.add("cfg_denoiser", lambda params: 1 / 0, owner="broken")
    hooked = services.submit("txt2img", request).wait(timeout=120)
    assert [(step, total) for step, total, _ in seen] == [(0, 3), (1, 3), (2, 3)]
    assert seen[0][2][0] == 1  # one negative row per image
    assert np.abs(pixels(hooked.images[0]) - pixels(plain.images[0])).max() > 0
    assert [(e.owner, e.point) for e in services.hooks.errors] == [("broken", "cfg_denoiser")] * 3
