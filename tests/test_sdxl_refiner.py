"""The refiner (issue #20, item 3) on a tiny random SDXL base and refiner: the switch at A1111's step,
the refiner's own conditioning (bigG alone, aesthetic scores), the core running part of a schedule,
reproduction from the infotext, detection from keys, and bad refiner input as 4xx naming the field."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from modules import infotext, samplers, seeds
from modules.checkpoints import SDXL_KEY, SDXL_REFINER_KEY, UNET_IN_KEY, CheckpointInfo, detect_architecture
from modules.config import Settings
from modules.model_loading import LoadedModel
from modules.processing import img2img, refiner, sampling, txt2img
from modules.processing.context import RunContext
from modules.samplers.schedules import ModelSigmas
from modules.schemas import Img2ImgRequest, RequestError, Txt2ImgRequest
from tests.test_api import T2I, client, shared  # noqa: F401 - fixtures
from tests.tiny_models import noise_image, tiny_sdxl_pipeline, tiny_sdxl_refiner_pipeline

BASE = dict(prompt="a (red:1.2) circle", negative_prompt="blurry", steps=4, seed=3, cfg_scale=5.0, sampler_name="Euler",
            save_images=False, width=32, height=32)
REFINER = "tiny-xl-refiner.safetensors"


class Refiners:
    """The tiny refiner, handed out as ``Services.use_refiner`` does (by name or title)."""

    def __init__(self, model: LoadedModel) -> None:
        self.model, self.used = model, []

    @contextmanager
    def use_refiner(self, name):
        self.used.append(name)
        yield self.model

    def to_device(self, model):
        self.used.append(model.arch)

    def refiner_title(self, name):
        if name.split(" [")[0] != REFINER:
            from modules.checkpoints import CheckpointError

            raise CheckpointError(f"checkpoint {name!r} not found")
        return f"{REFINER} [abcdef0123]"


@pytest.fixture(scope="module")
def base() -> LoadedModel:
    return LoadedModel(CheckpointInfo("tiny-xl.safetensors", None, "single", None), "sdxl", tiny_sdxl_pipeline(), "0000")


@pytest.fixture(scope="module")
def refiner_model() -> LoadedModel:
    return LoadedModel(CheckpointInfo(REFINER, None, "single", None), "sdxl-refiner", tiny_sdxl_refiner_pipeline(),
                       "abcdef0123")


@pytest.fixture
def ctx(base, refiner_model, tmp_path) -> RunContext:
    return RunContext(base, Settings(data_dir=tmp_path), None, refiners=Refiners(refiner_model))


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def from_infotext(text: str, cls, **extra):
    fields = infotext.infotext_to_fields(infotext.parse_infotext(text))
    return cls(**{**{k: v for k, v in fields.items() if k in cls.model_fields}, "save_images": False, **extra})


@contextmanager
def unet_calls(unet):
    """Every call of ``unet``: its batch's time ids (SDXL's added conditioning)."""
    calls = []
    handle = unet.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(kwargs["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def test_switch_step_is_a1111s(base):
    """A1111 1.10 switches by noise level: at the first step whose timestep t has (999 - t) / 1000 >= switch_at."""
    model_sigmas = ModelSigmas.from_config(base.pipe.scheduler.config)
    levels = torch.cat([model_sigmas.sigmas[torch.tensor([999, 666, 333, 0])], torch.zeros(1)])
    assert [refiner.switch_step(levels, model_sigmas, at) for at in (0.0001, 0.333, 0.5, 0.667, 0.999, 0.9995)] == \
        [1, 1, 2, 3, 3, 4]


def test_txt2img_switches_to_the_refiner_and_reproduces(ctx, base, refiner_model):
    req = Txt2ImgRequest(**BASE, refiner_checkpoint=REFINER, refiner_switch_at=0.5)
    with unet_calls(base.pipe.unet) as base_calls, unet_calls(refiner_model.pipe.unet) as refiner_calls:
        result = txt2img.run(req, ctx)
    assert result.images[0].size == (32, 32)
    # Euler, 4 steps at timesteps 999, 666, 333, 0: (999 - 333) / 1000 >= 0.5, so the refiner runs from step 2
    assert len(base_calls) == 2 and len(refiner_calls) == 2
    assert base_calls[0].tolist() == [[32, 32, 0, 0, 32, 32]] * 2
    assert refiner_calls[0].tolist() == [[32, 32, 0, 0, 2.5], [32, 32, 0, 0, 6.0]]  # negative, then prompt
    text = result.infotexts[0]
    assert f"Refiner: {REFINER} [abcdef0123]" in text and "Refiner switch at: 0.5" in text
    again = from_infotext(text, Txt2ImgRequest)
    assert (again.refiner_checkpoint, again.refiner_switch_at) == (f"{REFINER} [abcdef0123]", 0.5)
    second = txt2img.run(again, ctx)
    assert second.infotexts == result.infotexts
    assert np.array_equal(pixels(second.images[0]), pixels(result.images[0]))
    plain = txt2img.run(req.model_copy(update={"refiner_checkpoint": None}), ctx)
    assert not np.array_equal(pixels(plain.images[0]), pixels(result.images[0]))


def test_img2img_with_the_refiner_reproduces(ctx):
    init = noise_image(32, 24, seed=5)
    req = Img2ImgRequest(**{**BASE, "width": None, "height": None}, init_images=[init], denoising_strength=0.75,
                         refiner_checkpoint=REFINER, refiner_switch_at=0.4)
    first = img2img.run(req, ctx)
    assert first.images[0].size == (32, 24) and "Refiner switch at: 0.4" in first.infotexts[0]
    again = img2img.run(from_infotext(first.infotexts[0], Img2ImgRequest, init_images=[init]), ctx)
    assert np.array_equal(pixels(again.images[0]), pixels(first.images[0]))


def test_the_refiner_encodes_with_its_one_encoder(ctx, refiner_model):
    with refiner.in_use(ctx, refiner.plan(Txt2ImgRequest(**BASE, refiner_checkpoint=REFINER), ctx),
                        Txt2ImgRequest(**BASE), 4) as ref:
        embedding = ref.cond.parts[0][0].at(0)
    assert embedding.tokens.shape == (1, 77, 32) and embedding.pooled.shape == (1, 32)  # bigG's width alone


def test_a_schedule_split_in_two_runs_is_the_same_run(base):
    """The core's first_step/end_step: Euler over steps [0, 2) then [2, 4) from those latents is the full run."""
    from modules.processing import conditioning

    pipe = base.pipe
    cond = conditioning.encode(RunContext(base, Settings(), None), "a cat", "", 1, 4)
    model_sigmas = ModelSigmas.from_config(pipe.scheduler.config)
    inp = sampling.SamplingInput(
        unet=pipe.unet, sampler=samplers.prepare("Euler", None, model_sigmas, 4, [1]), model_sigmas=model_sigmas,
        device=torch.device("cpu"), conditioning=cond, noise=seeds.create_noise((4, 8, 8), [1]), steps=4, cfg_scale=5.0,
        size_condition=(16, 16))
    whole = sampling.sample(inp)
    import dataclasses

    half = sampling.sample(dataclasses.replace(inp, end_step=2))
    rest = sampling.sample(dataclasses.replace(inp, resume_latents=half, first_step=2))
    assert torch.equal(rest, whole)


def test_with_the_hires_fix_the_refiner_takes_part_in_the_second_pass(ctx, base, refiner_model):
    """A1111's default (hires_fix_refiner_pass = second pass): the first pass on the base alone (4
    steps), the hires pass (2 steps at timesteps 333 and 0) switches at 0.8 before its second step."""
    req = Txt2ImgRequest(**{**BASE, "width": 16, "height": 16}, enable_hr=True, hr_scale=2.0, denoising_strength=0.6,
                         refiner_checkpoint=REFINER, refiner_switch_at=0.8, hr_prompt="a (blue:1.1) circle")
    with unet_calls(base.pipe.unet) as base_calls, unet_calls(refiner_model.pipe.unet) as refiner_calls:
        first = txt2img.run(req, ctx)
    assert len(base_calls) == 5 and len(refiner_calls) == 1
    assert refiner_calls[0][0].tolist() == [32, 32, 0, 0, 2.5]  # the hires size
    assert first.images[0].size == (32, 32)
    again = txt2img.run(from_infotext(first.infotexts[0], Txt2ImgRequest), ctx)
    assert np.array_equal(pixels(again.images[0]), pixels(first.images[0]))


def test_a_switch_at_the_first_step_that_runs_gives_the_refiner_the_whole_pass(ctx, base, refiner_model):
    """img2img at strength 0.5 runs 2 of 4 steps (timesteps 333, 0): at 0.5 the refiner takes both."""
    init = noise_image(32, 32, seed=6)
    req = Img2ImgRequest(**BASE, init_images=[init], denoising_strength=0.5, refiner_checkpoint=REFINER,
                         refiner_switch_at=0.5)
    with unet_calls(base.pipe.unet) as base_calls, unet_calls(refiner_model.pipe.unet) as refiner_calls:
        refined = img2img.run(req, ctx)
    assert len(base_calls) == 0 and len(refiner_calls) == 2
    alone = img2img.run(req.model_copy(update={"refiner_checkpoint": None}),
                        RunContext(refiner_model, ctx.settings, None))
    assert np.array_equal(pixels(refined.images[0]), pixels(alone.images[0]))  # the refiner's own img2img


def test_inpaint_and_outpaint_with_the_refiner(ctx, base, refiner_model):
    """The refiner goes on inside the mask; outside it the picture is kept (latent blend), and the run
    reproduces from its infotext."""
    from PIL import Image

    from modules.processing import outpaint
    from modules.schemas import OutpaintRequest

    init, mask = noise_image(32, 32, seed=8), Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    req = Img2ImgRequest(**BASE, init_images=[init], mask=mask, denoising_strength=1.0, inpaint_full_res=False,
                         mask_blur=0, refiner_checkpoint=REFINER, refiner_switch_at=0.5)
    with unet_calls(refiner_model.pipe.unet) as refiner_calls:
        first = img2img.run(req, ctx)
    assert len(refiner_calls) == 2
    assert np.array_equal(pixels(first.images[0])[:, 16:], pixels(init)[:, 16:])  # no blur: kept exactly
    again = img2img.run(from_infotext(first.infotexts[0], Img2ImgRequest, init_images=[init], mask=mask,
                                      inpaint_full_res=False), ctx)
    assert np.array_equal(pixels(again.images[0]), pixels(first.images[0]))
    out = outpaint.run(OutpaintRequest(**BASE, init_images=[noise_image(24, 24)], pixels=8, direction=["right"],
                                       refiner_checkpoint=REFINER), ctx)
    assert out.images[0].size == (32, 24) and "Refiner: " in out.infotexts[0]


def test_an_unknown_or_foreign_refiner_is_a_request_error(ctx, tmp_path):
    with pytest.raises(RequestError, match="refiner_checkpoint: checkpoint 'nope' not found"):
        txt2img.run(Txt2ImgRequest(**BASE, refiner_checkpoint="nope"), ctx)
    from tests.tiny_models import tiny_components

    class SD15:
        pipe = type("Pipe", (), {})()

    sd = LoadedModel(CheckpointInfo(REFINER, None, "single", None), "sd1", SD15.pipe, None)
    unet, vae, _ = tiny_components()
    sd.pipe.unet, sd.pipe.vae = unet, vae
    foreign = RunContext(ctx.model, ctx.settings, None, refiners=Refiners(sd))
    with pytest.raises(RequestError, match="refiner_checkpoint: .* is SD 1.x and does not continue the latents"):
        txt2img.run(Txt2ImgRequest(**BASE, refiner_checkpoint=REFINER), foreign)


def test_refiner_checkpoints_are_detected_from_their_keys():
    refiner_state = {UNET_IN_KEY: torch.zeros(1, 4, 1, 1), SDXL_REFINER_KEY: torch.zeros(1)}
    assert detect_architecture(refiner_state) == "sdxl-refiner"
    inpaint_state = {UNET_IN_KEY: torch.zeros(1, 9, 1, 1), SDXL_KEY: torch.zeros(1)}
    assert detect_architecture(inpaint_state) == "sdxl"  # 9-channel SDXL inpainting


def test_a_refiner_folder_loads_as_a_refiner(tmp_path, refiner_model):
    from modules.model_loading import load_checkpoint

    refiner_model.pipe.save_pretrained(tmp_path / "tiny-refiner")
    loaded = load_checkpoint(CheckpointInfo("tiny-refiner", Path(tmp_path / "tiny-refiner"), "diffusers", None), None)
    assert loaded.arch == "sdxl-refiner" and loaded.is_refiner and loaded.is_sdxl


@pytest.mark.parametrize("body, status, field", [
    ({**T2I, "refiner_checkpoint": "no-such-refiner"}, 400, "refiner_checkpoint"),
    ({**T2I, "refiner_checkpoint": "tiny-b", "refiner_switch_at": 1.5}, 422, "refiner_switch_at"),
    ({**T2I, "refiner_checkpoint": "tiny-b", "refiner_switch_at": 0}, 422, "refiner_switch_at"),
])
def test_bad_refiner_input_is_a_4xx_naming_the_field(client, body, status, field):  # noqa: F811 - fixture
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == status, response.text
    assert field in response.text


def test_the_api_runs_a_refiner_and_says_so(client):  # noqa: F811 - fixture
    """Through the API, on SD 1.x tiny checkpoints (a refiner of the same family is allowed, as in A1111)."""
    response = client.post("/sdapi/v1/txt2img", json={**T2I, "refiner_checkpoint": "tiny-b", "refiner_switch_at": 0.5})
    assert response.status_code == 200, response.text
    info = response.json()["info"]
    assert "Refiner: tiny-b" in info and "Refiner switch at: 0.5" in info and "warnings" in info
    assert "refiner" not in str(__import__("json").loads(info).get("warnings", [])).lower()


def test_the_refiner_reads_the_clip_g_half_of_an_sdxl_embedding(ctx, base, refiner_model, tmp_path):
    from safetensors.torch import save_file

    from modules.checkpoints import HashCache
    from modules.extra_networks import build_extra_networks

    def vectors(pipe, tokenizer, encoder, text):
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
        return encoder.get_input_embeddings().weight[ids].detach().clone()

    folder = ctx.settings.path(ctx.settings.embeddings_dir)
    folder.mkdir(parents=True, exist_ok=True)
    r = refiner_model.pipe
    save_file({"clip_l": vectors(base.pipe, base.pipe.tokenizer, base.pipe.text_encoder, "red circle"),
               "clip_g": vectors(r, r.tokenizer_2, r.text_encoder_2, "red circle")}, str(folder / "mystyle.safetensors"))
    library = build_extra_networks(ctx.settings, HashCache(tmp_path / "hashes.json"))
    plan = refiner.plan(Txt2ImgRequest(**BASE, refiner_checkpoint=REFINER), ctx)
    with library.for_job(base) as networks:
        job = RunContext(base, ctx.settings, None, refiners=ctx.refiners, networks=networks)
        with refiner.in_use(job, plan, Txt2ImgRequest(**{**BASE, "prompt": "a mystyle <lora:x:0.5>"}), 4) as named:
            pass
    with refiner.in_use(ctx, plan, Txt2ImgRequest(**{**BASE, "prompt": "a red circle"}), 4) as words:
        pass
    assert torch.equal(named.cond.parts[0][0].at(0).tokens, words.cond.parts[0][0].at(0).tokens)
