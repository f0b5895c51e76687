"""SDXL in every mode (issue #20, item 2) on a tiny random SDXL pipeline: txt2img, img2img, inpaint
(also a 9-channel UNet), outpaint, hires fix and an SDXL ControlNet each give the right size and
come back bit-identical from their own infotext; A1111's prompt weighting on both SDXL encoders."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules import infotext, prompts
from modules.checkpoints import CheckpointInfo
from modules.config import Settings
from modules.controlnet.models import ControlNetInfo, LoadedControlNet
from modules.model_loading import LoadedModel
from modules.processing import conditioning, img2img, outpaint, txt2img
from modules.processing.context import RunContext
from modules.schemas import ControlNetUnit, Img2ImgRequest, OutpaintRequest, Txt2ImgRequest
from tests.tiny_models import noise_image, tiny_sdxl_controlnet, tiny_sdxl_pipeline

BASE = dict(prompt="a (red:1.3) circle BREAK blue sky", negative_prompt="blurry", steps=3, seed=7, cfg_scale=5.0,
            save_images=False)


class ControlNets:
    """One tiny SDXL ControlNet, handed out as ``Services.use_controlnet`` does."""

    def __init__(self) -> None:
        self.info = ControlNetInfo("tiny-xl-cn", "tiny-xl-cn", Path("tiny-xl-cn"), "diffusers")
        self.loaded = LoadedControlNet(tiny_sdxl_controlnet(), "sdxl", self.info, None)

    def controlnet_infos(self):
        return [self.info]

    @contextmanager
    def use_controlnet(self, title, field="controlnet model"):
        yield self.loaded


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return LoadedModel(CheckpointInfo("tiny-xl.safetensors", None, "single", None), "sdxl", tiny_sdxl_pipeline(), "0000")


@pytest.fixture
def ctx(model, tmp_path) -> RunContext:
    return RunContext(model, Settings(data_dir=tmp_path), None, controlnets=ControlNets())


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def from_infotext(text: str, cls, **extra):
    """The request an infotext describes (as PNG Info / the API's ``infotext`` field read it)."""
    fields = infotext.infotext_to_fields(infotext.parse_infotext(text))
    fields = {k: v for k, v in fields.items() if k in cls.model_fields}
    return cls(**{**fields, "save_images": False, **extra})


def reproduces(run, req, ctx, cls, size, **extra) -> None:
    first = run(req, ctx)
    assert first.images[0].size == size
    again = run(from_infotext(first.infotexts[0], cls, **extra), ctx)
    assert again.infotexts == first.infotexts
    assert np.array_equal(pixels(again.images[0]), pixels(first.images[0]))


def test_txt2img(ctx):
    reproduces(txt2img.run, Txt2ImgRequest(**BASE, width=32, height=24), ctx, Txt2ImgRequest, (32, 24))


def test_hires_fix(ctx):
    req = Txt2ImgRequest(**BASE, width=16, height=16, enable_hr=True, hr_scale=2.0, denoising_strength=0.6)
    reproduces(txt2img.run, req, ctx, Txt2ImgRequest, (32, 32))


def test_img2img(ctx):
    init = noise_image(40, 32, seed=1)
    req = Img2ImgRequest(**BASE, init_images=[init], denoising_strength=0.6)
    reproduces(img2img.run, req, ctx, Img2ImgRequest, (40, 32), init_images=[init])


def test_inpaint(ctx):
    init, mask = noise_image(32, 32, seed=2), Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    req = Img2ImgRequest(**BASE, init_images=[init], mask=mask, denoising_strength=0.9, inpaint_full_res=False)
    reproduces(img2img.run, req, ctx, Img2ImgRequest, (32, 32), init_images=[init], mask=mask,
               inpaint_full_res=False)


def test_outpaint(ctx):
    init = noise_image(24, 24, seed=3)
    req = OutpaintRequest(**BASE, init_images=[init], pixels=8, direction=["left", "down"])
    reproduces(outpaint.run, req, ctx, OutpaintRequest, (32, 32), init_images=[init], pixels=8,
               direction=["left", "down"])


def test_nine_channel_sdxl_inpaint(model, tmp_path):
    """An SDXL inpainting UNet (9 input channels) gets the mask and masked-image latents."""
    from diffusers import UNet2DConditionModel

    pipe = tiny_sdxl_pipeline()
    config = {**pipe.unet.config, "in_channels": 9}
    torch.manual_seed(4)
    pipe.unet = UNet2DConditionModel.from_config(config)
    nine = LoadedModel(CheckpointInfo("tiny-xl-inpaint.safetensors", None, "single", None), "sdxl", pipe, "0001")
    ctx = RunContext(nine, Settings(data_dir=tmp_path), None)
    init, mask = noise_image(32, 32, seed=2), Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    req = Img2ImgRequest(**BASE, init_images=[init], mask=mask, denoising_strength=1.0)
    reproduces(img2img.run, req, ctx, Img2ImgRequest, (32, 32), init_images=[init], mask=mask)


def test_controlnet(ctx):
    hint = Image.new("RGB", (32, 32), "black")
    hint.paste((255, 255, 255), (0, 0, 16, 32))
    unit = ControlNetUnit(model="tiny-xl-cn", image=hint, module="none")
    req = Txt2ImgRequest(**BASE, width=32, height=32, controlnet_units=[unit])
    first = txt2img.run(req, ctx)
    plain = txt2img.run(req.model_copy(update={"controlnet_units": []}), ctx)
    assert not np.array_equal(pixels(first.images[0]), pixels(plain.images[0]))  # the unit acts
    assert "ControlNet 0" in first.infotexts[0]
    units = [u.model_copy(update={"image": hint}) for u in
             from_infotext(first.infotexts[0], Txt2ImgRequest).controlnet_units]
    again = txt2img.run(from_infotext(first.infotexts[0], Txt2ImgRequest, controlnet_units=units), ctx)
    assert np.array_equal(pixels(again.images[0]), pixels(first.images[0]))


def test_controlnet_gets_the_sdxl_added_conditioning(ctx):
    """The ControlNet sees the same pooled text and size conditioning as the UNet."""
    seen = []
    net = ctx.controlnets.loaded.model
    handle = net.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs.get("added_cond_kwargs")),
                                           with_kwargs=True)
    try:
        unit = ControlNetUnit(model="tiny-xl-cn", image=noise_image(32, 32), module="none", control_mode=2)
        txt2img.run(Txt2ImgRequest(**BASE, width=32, height=32, controlnet_units=[unit]), ctx)
    finally:
        handle.remove()
    assert seen and all(a is not None and a["time_ids"][0].tolist() == [32, 32, 0, 0, 32, 32] for a in seen)


def test_an_sd15_controlnet_is_refused_on_sdxl(ctx):
    from modules.schemas import RequestError
    from tests.tiny_controlnets import tiny_controlnet

    ctx.controlnets.loaded = LoadedControlNet(tiny_controlnet(), "sd1", ctx.controlnets.info, None)
    unit = ControlNetUnit(model="tiny-xl-cn", image=noise_image(32, 32), module="none")
    with pytest.raises(RequestError, match="ControlNet unit 0: model: .*SD 1.x ControlNet, but the checkpoint is SDXL"):
        txt2img.run(Txt2ImgRequest(**BASE, width=32, height=32, controlnet_units=[unit]), ctx)


def test_prompt_weighting_follows_a1111_on_both_encoders(model):
    """``(red:1.5)``: each encoder's penultimate hidden states of the chunk, multiplied by the token
    weights, scaled back to the unweighted chunk's mean, concatenated; pooled from encoder 2, unweighted."""
    pipe = model.pipe
    plain, weighted = prompts.encode_prompt_set_sdxl(conditioning.sdxl_encoders(pipe), ["a red cat", "a (red:1.5) cat"])
    assert plain[0].shape == weighted[0].shape == (1, 77, 64)
    assert torch.equal(plain[1], weighted[1])
    ids = pipe.tokenizer("a red cat").input_ids
    weights = torch.ones(77)
    weights[2] = 1.5  # BOS, a, red
    want = []
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        tokens = tokenizer(["a red cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert tokens[0, :len(ids)].tolist() == ids
        z = encoder(tokens, output_hidden_states=True).hidden_states[-2].float()
        scaled = z * weights[None, :, None]
        want.append(scaled * (z.mean() / scaled.mean()))
    assert torch.allclose(weighted[0], torch.cat(want, dim=-1), atol=1e-6)
    assert not torch.allclose(weighted[0], plain[0])


def test_unweighted_sdxl_prompts_encode_as_the_sdxl_pipeline(model):
    pipe = model.pipe
    (ours, pooled), = prompts.encode_prompt_set_sdxl(conditioning.sdxl_encoders(pipe), ["a red circle"])
    theirs, _, their_pooled, _ = pipe.encode_prompt("a red circle", device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(ours, theirs) and torch.equal(pooled, their_pooled)


def test_break_gives_sdxl_a_chunk_per_part(model):
    (embeds, _), = prompts.encode_prompt_set_sdxl(conditioning.sdxl_encoders(model.pipe), ["a cat BREAK a dog"])
    assert embeds.shape == (1, 154, 64)


def test_sdxl_textual_inversion_is_its_vectors_in_place_of_its_name(model, tmp_path):
    """An SDXL embedding (clip_l + clip_g) whose vectors are each encoder's token embeddings of
    ``red circle`` encodes exactly as those words, weighted too; an SD 1.x one is refused by name."""
    from safetensors.torch import save_file

    from modules.checkpoints import HashCache
    from modules.extra_networks import build_extra_networks
    from modules.schemas import RequestError

    pipe = model.pipe

    def vectors(tokenizer, encoder, text):
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
        return encoder.get_input_embeddings().weight[ids].detach().clone()

    settings = Settings(data_dir=tmp_path)
    folder = settings.path(settings.embeddings_dir)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"clip_l": vectors(pipe.tokenizer, pipe.text_encoder, "red circle"),
               "clip_g": vectors(pipe.tokenizer_2, pipe.text_encoder_2, "red circle")}, str(folder / "mystyle.safetensors"))
    save_file({"emb_params": torch.zeros(1, 32)}, str(folder / "sdone.safetensors"))
    library = build_extra_networks(settings, HashCache(tmp_path / "hashes.json"))
    with library.for_job(model) as networks:
        named = conditioning.encode(RunContext(model, settings, None, networks=networks), "a (mystyle:1.2) cat", "", 1, 3)
        assert "mystyle" in networks.infotext_params()["TI hashes"]
        with pytest.raises(RequestError, match="embedding 'sdone' is a one-encoder"):
            conditioning.encode(RunContext(model, settings, None, networks=networks), "a sdone cat", "", 1, 3)
    words = conditioning.encode(RunContext(model, settings, None), "a (red circle:1.2) cat", "", 1, 3)
    ours, theirs = named.parts[0][0].at(0), words.parts[0][0].at(0)
    assert torch.equal(ours.tokens, theirs.tokens) and torch.equal(ours.pooled, theirs.pooled)


def test_a_float16_sdxl_vae_encodes_and_decodes_upcast():
    """SDXL's VAE overflows in float16: with ``force_upcast`` it works in float32 and goes back after."""
    from modules.processing import common

    pipe = tiny_sdxl_pipeline()
    pipe.vae.to(dtype=torch.float16)
    seen = []
    handle = pipe.vae.decoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    try:
        latents = common.encode_images(pipe, [noise_image(16, 16)])
        images = common.decode_latents(pipe, latents)
    finally:
        handle.remove()
    assert latents.dtype == torch.float16 and pipe.vae.dtype == torch.float16
    assert seen == [torch.float32] and images[0].size == (16, 16)
