"""Scheduled prompts in the sampling core: per-call conditioning, composable AND, each text encoded once.

The denoiser tests use a stand-in UNet that reports which embedding it was given, so the
schedule and A1111's combination can be read off exactly; the end-to-end ones run the tiny
checkpoints through the job queue.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from modules import samplers
from modules.processing import conditioning, sampling
from modules.processing.context import RunContext
from modules.samplers.schedules import ModelSigmas
from modules.schemas import Img2ImgRequest, Txt2ImgRequest
from tests.tiny_models import noise_image

# ---------------------------------------------------------------------------------------------
# the denoiser, on a stand-in UNet


class TagUNet(torch.nn.Module):
    """Predicts, for every row, the first number of its text embedding (its "tag"); records the tags per call."""

    dtype = torch.float32

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[float]] = []

    def forward(self, x, t, encoder_hidden_states, **kwargs):
        tags = encoder_hidden_states[:, 0, 0]
        self.calls.append(tags.tolist())
        return SimpleNamespace(sample=torch.ones_like(x[:, :4]) * tags[:, None, None, None])


def tagged(tag: float) -> sampling.TextEmbedding:
    return sampling.TextEmbedding(torch.full((1, 2, 3), tag))


def schedule(*entries: tuple[int, float]) -> sampling.PromptSchedule:
    return sampling.PromptSchedule(tuple((end, tagged(tag)) for end, tag in entries))


CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def core_input(unet, cond, steps: int, cfg: float, sampler: str = "Euler", batch: int = 1) -> sampling.SamplingInput:
    model_sigmas = ModelSigmas.from_config(CONFIG)
    return sampling.SamplingInput(
        unet=unet, sampler=samplers.prepare(sampler, None, model_sigmas, steps, list(range(batch))),
        model_sigmas=model_sigmas, device=torch.device("cpu"), conditioning=cond,
        noise=torch.zeros(batch, 4, 2, 2), steps=steps, cfg_scale=cfg)


def run_core(cond: sampling.Conditioning, steps: int = 4, cfg: float = 7.0, sampler: str = "Euler", batch: int = 1):
    unet = TagUNet()
    sampling.sample(core_input(unet, cond, steps, cfg, sampler, batch))
    return unet.calls


def test_an_edit_switches_the_embedding_after_its_step():
    cond = sampling.Conditioning(((schedule((2, 1.0), (4, 2.0)), 1.0),), schedule((4, -1.0)))
    calls = run_core(cond)
    assert calls == [[-1.0, 1.0]] * 3 + [[-1.0, 2.0]]  # A1111: calls 0..2 at or before step 2


def test_the_negative_prompt_is_scheduled_too():
    cond = sampling.Conditioning(((schedule((4, 1.0)), 1.0),), schedule((1, -1.0), (4, -2.0)))
    assert [c[0] for c in run_core(cond)] == [-1.0, -1.0, -2.0, -2.0]


def test_and_parts_are_combined_as_a1111():
    """uncond + sum(weight * cfg * (cond_i - uncond)): the stand-in predicts each row's tag."""
    unet = TagUNet()
    cond = sampling.Conditioning(((schedule((4, 1.0)), 1.0), (schedule((4, 3.0)), 0.5)), schedule((4, -1.0)))
    out, _ = sampling.GuidedModel(core_input(unet, cond, 1, 7.0, batch=2))(torch.zeros(2, 4, 2, 2), torch.tensor(1), 0, 1)
    assert unet.calls == [[-1.0, -1.0, 1.0, 1.0, 3.0, 3.0]]  # uncond rows, then each part's rows
    expected = -1.0 + 1.0 * 7.0 * (1.0 + 1.0) + 0.5 * 7.0 * (3.0 + 1.0)
    assert torch.allclose(out, torch.full_like(out, expected))


def test_a_weighted_prompt_is_guided_even_at_cfg_1():
    cond = sampling.Conditioning(((schedule((4, 2.0)), 2.0),), schedule((4, -1.0)))
    inp = core_input(TagUNet(), cond, 1, 1.0)
    assert inp.guided
    out, _ = sampling.GuidedModel(inp)(torch.zeros(1, 4, 2, 2), torch.tensor(1), 0, 1)
    assert torch.allclose(out, torch.full_like(out, -1.0 + 2.0 * (2.0 + 1.0)))
    plain = sampling.Conditioning(((schedule((4, 2.0)), 1.0),), schedule((4, -1.0)))
    assert run_core(plain, steps=2, cfg=1.0) == [[2.0], [2.0]]  # plain, CFG 1: the prompt alone, as diffusers


def test_second_order_samplers_schedule_over_their_steps():
    """Heun calls the model about twice per step; each call takes the prompt of the step its noise
    level belongs to (its second call, at the step's end level, the next step's). A1111 instead
    counts model calls (2 x steps for second-order samplers): the switch lands at the same fraction
    of the run for a fractional ``when``, and at the step asked for with a step number."""
    cond = sampling.Conditioning(((schedule((2, 1.0), (4, 2.0)), 1.0),), schedule((4, -1.0)))
    calls = run_core(cond, sampler="Heun")
    assert len(calls) == 7  # 4 steps, the last one to sigma 0 a single Euler call
    assert [c[1] for c in calls] == [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0]  # steps 0, 1, 2 (and 2's start), then 3


# ---------------------------------------------------------------------------------------------
# encoding: each distinct text once


def counting_encoder(pipe):
    texts: list[list[int]] = []
    handle = pipe.text_encoder.register_forward_hook(lambda m, args, kwargs, out: texts.append(1), with_kwargs=True)
    return texts, handle


def test_each_distinct_text_is_encoded_once(ctx):
    encoded, handle = counting_encoder(ctx.model.pipe)
    try:
        cond = conditioning.encode(ctx, "a [red|blue] circle AND a square :0.5", "[a red circle:dark:0.5]", 1, 20)
    finally:
        handle.remove()
    assert len(encoded) == 4  # "a red circle" (prompt and negative), "a blue circle", " a square", "dark"
    assert [w for _, w in cond.parts] == [1.0, 0.5]
    red, blue = cond.parts[0][0].at(0), cond.parts[0][0].at(2)  # A1111's alternation: calls 0-1 "red", 2 "blue"
    assert red is not blue and cond.uncond.at(0) is red  # one encoding for the text in both prompts
    assert {e.tokens.shape for e in (red, blue, cond.uncond.at(0), cond.uncond.at(19))} == {red.tokens.shape}


def test_a_plain_prompt_encodes_as_the_pair(ctx):
    from modules import prompts

    pipe = ctx.model.pipe
    cond = conditioning.encode(ctx, "a (red:1.3) circle", "blurry", 1, 20)
    want, want_neg = prompts.encode_prompt_pair(pipe.tokenizer, pipe.text_encoder, "a (red:1.3) circle", "blurry")
    assert len(cond.parts) == 1 and not cond.composable
    assert torch.equal(cond.parts[0][0].at(0).tokens, want) and torch.equal(cond.uncond.at(0).tokens, want_neg)


# ---------------------------------------------------------------------------------------------
# end to end on the tiny checkpoints


def run(services, mode: str = "txt2img", **fields):
    cls = Txt2ImgRequest if mode == "txt2img" else Img2ImgRequest
    base = {"seed": 5, "steps": 6, "sampler_name": "Euler", "save_images": False}
    return services.submit(mode, cls(**{**base, **fields})).wait(timeout=120)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_edits_at_the_ends_are_the_plain_prompts(services):
    red, blue = pixels(run(services, prompt="a red circle")), pixels(run(services, prompt="a blue circle"))
    assert np.array_equal(pixels(run(services, prompt="a [red:blue:0] circle")), blue)
    assert np.array_equal(pixels(run(services, prompt="a [red:blue:6] circle")), red)
    halfway = pixels(run(services, prompt="a [red:blue:0.5] circle"))
    assert not np.array_equal(halfway, red) and not np.array_equal(halfway, blue)
    result = run(services, prompt="a [red:blue:0.5] circle")
    assert result.infotexts[0].startswith("a [red:blue:0.5] circle\n")  # the infotext keeps the syntax
    assert np.array_equal(pixels(result), halfway)


def test_and_changes_the_image_and_reproduces(services):
    plain = pixels(run(services, prompt="a red circle"))
    composed = run(services, prompt="a red circle AND a blue square :0.7")
    assert not np.array_equal(pixels(composed), plain)
    assert np.array_equal(pixels(run(services, prompt="a red circle AND a blue square :0.7")), pixels(composed))


@pytest.mark.parametrize("prompt", [
    "a [red:blue:", "a [red:blue:-5] circle", "a [red:blue:1e9] circle", "a [[red] circle", "a ((red) circle]",
    "a red circle AND", "AND AND", "a AND b :x", "a AND b :1e400", "a | b", "[a|b", "[|]", "a [red:blue:0.5:0.2] circle",
])
def test_malformed_prompts_still_generate(services, prompt):
    result = run(services, prompt=prompt, negative_prompt=prompt, steps=3)
    assert result.images and result.infotexts[0].startswith(prompt)


def test_img2img_and_hires_take_scheduled_prompts(services):
    i2i = run(services, "img2img", prompt="a [red:blue:0.5] circle", init_images=[noise_image(32, 32)],
              denoising_strength=0.7)
    assert i2i.images[0].size == (32, 32)
    hires = run(services, prompt="a [red:blue:0.5] circle", enable_hr=True, hr_scale=1.5, hr_upscaler="Latent",
                denoising_strength=0.5, hr_prompt="a [green|white] square")
    assert hires.images[0].size == (48, 48)


def test_a_hires_pass_keeps_the_first_pass_conditioning_for_a_plain_prompt(ctx):
    from modules.processing import hires

    req = Txt2ImgRequest(prompt="a red circle", steps=6, enable_hr=True, hr_upscaler="Latent")
    hp = hires.HiresPlan(48, 48, None, 6, "Euler", "Automatic")
    first = conditioning.encode(ctx, req.prompt, req.negative_prompt, 1, 6)
    assert hires.conditioning(req, ctx, first, 6, hp) is first
    edited = req.model_copy(update={"prompt": "a [red:blue:0.5] circle"})
    first = conditioning.encode(ctx, edited.prompt, "", 1, 6)
    second = hires.conditioning(edited, ctx, first, 6, hp)
    assert len(second.parts[0][0].entries) == 1  # "0.5" is in the first pass: the hires pass is all "blue"
    blue = conditioning.encode(ctx, "a blue circle", "", 1, 6)
    assert torch.equal(second.parts[0][0].at(0).tokens, blue.parts[0][0].at(0).tokens)


def test_the_context_fixture_is_a_run_context(ctx):
    assert isinstance(ctx, RunContext)
