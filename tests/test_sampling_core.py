"""The one sampling core (``modules.processing.sampling``) against diffusers' own pipelines.

Plain txt2img used to run through ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``;
now it runs through Easel's core like every other mode. These tests pin that nothing moved: for
every sampler the core's image is bit-identical to the pipeline's for the same embeddings,
seeded noise, scheduler and generators, computed here on the same tiny model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules import prompts, samplers, seeds
from modules.processing import sampling
from modules.schemas import Txt2ImgRequest
from tests.tiny_models import tiny_sdxl_pipeline

PROMPT, NEGATIVE, SEED, STEPS = "a (red:1.2) circle", "blurry", 11, 4


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def pipeline_images(pipe, cond, uncond, sampler: str, schedule: str, cfg: float, seed_list: list[int], size: int):
    """What the old plain-txt2img path computed: the diffusers pipeline on Easel's embeddings and noise."""
    from diffusers import StableDiffusionPipeline

    scheduler = samplers.make_scheduler(pipe.scheduler.config, sampler, schedule, seed=seed_list[0])
    bare = StableDiffusionPipeline(**{**pipe.components, "scheduler": scheduler}, requires_safety_checker=False)
    bare.set_progress_bar_config(disable=True)
    f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    noise = seeds.create_noise((4, size // f, size // f), seed_list)
    return bare(prompt_embeds=cond, negative_prompt_embeds=uncond, num_images_per_prompt=len(seed_list), latents=noise,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seed_list], num_inference_steps=STEPS,
                guidance_scale=cfg, width=size, height=size, output_type="pil").images


CASES = [(name, samplers.AUTOMATIC, 7.0, 1) for name in samplers.SAMPLER_NAMES] + [
    ("Euler", "Karras", 7.0, 1), ("DPM++ 2M", "Exponential", 7.0, 1), ("Euler a", "SGM Uniform", 7.0, 1),
    ("UniPC", "Uniform", 7.0, 1), ("Euler a", samplers.AUTOMATIC, 1.0, 1), ("DPM++ 2M SDE", samplers.AUTOMATIC, 5.0, 2),
    ("DPM++ SDE", "Karras", 7.0, 2),
]


@pytest.mark.parametrize("sampler, schedule, cfg, batch", CASES)
def test_plain_txt2img_is_bit_identical_to_the_diffusers_pipeline(services, sampler, schedule, cfg, batch):
    result = services.submit("txt2img", Txt2ImgRequest(
        prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, steps=STEPS, sampler_name=sampler, scheduler=schedule,
        cfg_scale=cfg, batch_size=batch, save_images=False)).wait(timeout=120)
    with services.models.use(services.selected_checkpoint) as model:
        pipe = model.pipe
        cond, uncond = prompts.encode_prompt_pair(pipe.tokenizer, pipe.text_encoder, PROMPT, NEGATIVE)
        expected = pipeline_images(pipe, cond, uncond, sampler, schedule, cfg, result.seeds, result.width)
    for got, want in zip(result.images, expected, strict=True):
        assert np.array_equal(pixels(got), pixels(want)), f"{sampler} / {schedule}: max difference " \
            f"{np.abs(pixels(got) - pixels(want)).max()}"


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "Heun"])
def test_sdxl_txt2img_is_bit_identical_to_the_sdxl_pipeline(sampler):
    """SDXL's pooled text and size conditioning reach the UNet exactly as the SDXL pipeline sends them."""
    from modules.checkpoints import CheckpointInfo
    from modules.config import Settings
    from modules.model_loading import LoadedModel
    from modules.processing import common, conditioning
    from modules.processing.context import RunContext

    pipe = tiny_sdxl_pipeline()
    size, seed_list = 32, [5, 6]
    model = LoadedModel(CheckpointInfo("tiny-xl.safetensors", None, "single", None), "sdxl", pipe, "0000")
    ctx = RunContext(model, Settings(), None)
    cond = conditioning.encode(ctx, PROMPT, NEGATIVE, 1, STEPS)
    noise = seeds.create_noise((4, size // 2, size // 2), seed_list)
    latents = sampling.sample(sampling.SamplingInput(
        unet=pipe.unet, scheduler=samplers.make_scheduler(pipe.scheduler.config, sampler), device=torch.device("cpu"),
        conditioning=cond, noise=noise, steps=STEPS, cfg_scale=6.0, size_condition=(size, size),
        generators=[torch.Generator("cpu").manual_seed(s) for s in seed_list]))
    got = common.decode_latents(pipe, latents, upcast=True)
    pipe.scheduler = samplers.make_scheduler(pipe.scheduler.config, sampler)
    want = pipe(PROMPT, negative_prompt=NEGATIVE, num_images_per_prompt=2, latents=noise, num_inference_steps=STEPS,
                guidance_scale=6.0, width=size, height=size, output_type="pil",
                generator=[torch.Generator("cpu").manual_seed(s) for s in seed_list]).images
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(pixels(a), pixels(b))


def test_the_core_needs_the_size_for_an_sdxl_conditioning():
    pipe = tiny_sdxl_pipeline()
    cond = sampling.Conditioning.fixed(torch.zeros(1, 77, 64), torch.zeros(1, 77, 64), torch.zeros(1, 32),
                                       torch.zeros(1, 32))
    inp = sampling.SamplingInput(unet=pipe.unet, scheduler=samplers.make_scheduler(pipe.scheduler.config, "Euler"),
                                 device=torch.device("cpu"), conditioning=cond, noise=torch.zeros(1, 4, 4, 4), steps=1,
                                 cfg_scale=7.0)
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
    inp = sampling.SamplingInput(
        unet=pipe.unet, scheduler=samplers.make_scheduler(pipe.scheduler.config, "Euler"), device=torch.device("cpu"),
        conditioning=cond, noise=seeds.create_noise((4, 8, 8), [1]), steps=STEPS, cfg_scale=5.0, size_condition=(16, 16))
    latents = sampling.sample(inp)
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()


class RecordingProgress:
    """A progress sink that keeps every update."""

    def __init__(self) -> None:
        self.updates: list[tuple[int, int, object]] = []

    def update(self, step: int, total: int, preview=None, textinfo: str | None = None) -> None:
        self.updates.append((step, total, preview))


def test_progress_previews_and_skip_through_the_core(services):
    """Progress counts user steps (Heun's two calls per step scaled down), a preview comes every
    n calls, and Skip abandons the iteration it is pressed in."""
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
        assert result.skipped == 1 and result.seeds == [2]
