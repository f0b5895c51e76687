"""A1111's img2img extras on the core: soft inpainting, mask_blur_x/_y, latent_mask and NGMS (s_min_uncond)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules import infotext, masks, soft_inpainting
from modules.processing import img2img, sampling, txt2img
from modules.schemas import Img2ImgRequest, SoftInpainting, Txt2ImgRequest
from tests.tiny_models import noise_image


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    m = Image.new("L", size, 0)
    m.paste(255, box)
    return m


def req(**kw) -> Img2ImgRequest:
    base = dict(prompt="a dog", steps=4, seed=5, save_images=False, width=64, height=64, denoising_strength=0.9,
                inpaint_full_res=False, mask_blur=6)
    return Img2ImgRequest(**{**base, **kw})


def diff(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).sum(2)


# ---------------------------------------------------------------------------------------------
# the pieces


def test_step_mask_keeps_more_of_the_original_at_high_noise():
    s = SoftInpainting()
    mask = torch.tensor([0.0, 0.25, 0.5, 1.0])
    high, low = soft_inpainting.step_mask(s, mask, torch.tensor(10.0)), soft_inpainting.step_mask(s, mask, torch.tensor(0.1))
    assert high[0] == 0 and low[0] == 0 and high[-1] == 1 and low[-1] == 1  # outside stays, inside is generated
    assert (high[1:3] < low[1:3]).all()  # the soft edge takes less of the estimate while the noise is high


def test_blend_keeps_the_length_of_the_latent_vectors():
    s = SoftInpainting(inpaint_detail_preservation=4)
    a = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 4, 1, 1)
    b = torch.tensor([0.0, 1.0, 0.0, 0.0]).view(1, 4, 1, 1)
    t = torch.full((1, 1, 1, 1), 0.5)
    linear = a * 0.5 + b * 0.5
    blended = soft_inpainting.blend_latents(s, a, b, t)
    assert torch.linalg.vector_norm(linear) < 0.8
    assert torch.linalg.vector_norm(blended) == pytest.approx(1.0, abs=1e-4)  # both have length 1
    assert torch.allclose(soft_inpainting.blend_latents(s, a, b, torch.zeros_like(t)), a, atol=1e-4)
    assert torch.allclose(soft_inpainting.blend_latents(s, a, b, torch.ones_like(t)), b, atol=1e-4)


def test_percentile_filter_max_and_median():
    image = np.zeros((6, 6))
    image[3, 3] = 10.0
    kernel = soft_inpainting.gaussian_kernel()
    top = soft_inpainting.weighted_percentile_filter(image, kernel, 0.9, 1.0)
    assert top[3, 3] > 0 and top[2, 2] > 0 and top[0, 0] == 0  # the top of the stack spreads the peak
    median = soft_inpainting.weighted_percentile_filter(image, kernel, 0.25, 0.75)
    assert median.max() == 0  # a lone peak is not the median of its window


def test_composite_mask_follows_what_changed():
    s = SoftInpainting()
    init = torch.zeros(1, 4, 16, 16)
    result = init.clone()
    result[:, :, 6:10, 6:10] = 2.0
    mask = torch.ones(1, 1, 16, 16)
    (overlay,) = soft_inpainting.composite_mask(s, mask, init, result, (128, 128))
    arr = np.asarray(overlay)
    assert overlay.size == (128, 128) and arr[64, 64] > 200 and arr[0, 0] == 0 and arr[127, 127] == 0
    assert 0 < arr[64, 40] < arr[64, 52]  # a soft edge around the change


# ---------------------------------------------------------------------------------------------
# on a tiny model


def test_soft_inpainting_keeps_the_outside_and_softens_the_transition(ctx):
    # wide enough (16 latent cells) that the latents' changes, spread by two cells, leave a border untouched
    image, box = noise_image(128, 32, seed=3), (56, 0, 72, 32)
    mask = box_mask(image.size, box)
    size = dict(width=128, height=32, mask_blur=4)
    hard = img2img.run(req(init_images=[image], mask=mask, **size), ctx)
    soft = img2img.run(req(init_images=[image], mask=mask, soft_inpainting=SoftInpainting(), **size), ctx)
    out = soft.images[0]
    assert out.size == image.size
    d_soft, d_hard = diff(out, image), diff(hard.images[0], image)
    assert d_soft[:, :20].max() == 0 and d_soft[:, 108:].max() == 0  # outside: the original pixels
    assert d_soft[:, 60:68].mean() > 10  # the middle is repainted
    band = (np.asarray(masks.blur_mask(mask, 4)) > 0) & (np.asarray(mask) == 0)
    assert np.abs(d_soft[band] - d_hard[band]).mean() > 1  # the transition differs from the hard mask's
    text = soft.infotexts[0]
    assert "Soft inpainting enabled: True" in text and "Soft inpainting schedule bias: 1" in text
    assert "Soft inpainting difference contrast: 2" in text
    # reproducible from the infotext
    fields = infotext.infotext_to_fields(infotext.parse_infotext(text))
    assert fields["soft_inpainting"]["mask_blend_scale"] == 0.5
    again = img2img.run(req(init_images=[image], mask=mask, soft_inpainting=SoftInpainting(**fields["soft_inpainting"]),
                            **size), ctx)
    assert again.images[0].tobytes() == out.tobytes()
    off = img2img.run(req(init_images=[image], mask=mask, soft_inpainting=SoftInpainting(enabled=False), **size), ctx)
    assert off.images[0].tobytes() == hard.images[0].tobytes() and "Soft inpainting" not in off.infotexts[0]


def test_mask_blur_x_and_y_blur_each_way(ctx):
    image, box = noise_image(64, 64, seed=4), (24, 24, 40, 40)
    mask = box_mask(image.size, box)
    result = img2img.run(req(init_images=[image], mask=mask, mask_blur_x=8, mask_blur_y=0, steps=2), ctx)
    changed = diff(result.images[0], image) > 0
    assert changed[32, 18] and not changed[18, 32]  # the edge is blurred sideways only
    assert not changed[:24, :].any() and not changed[40:, :].any()
    assert "Mask blur" not in result.infotexts[0]  # A1111 writes none when the two differ
    same = img2img.run(req(init_images=[image], mask=mask, mask_blur_x=3, mask_blur_y=3, mask_blur=9, steps=2), ctx)
    assert "Mask blur: 3" in same.infotexts[0]


def test_latent_mask_is_the_latent_blends_mask(ctx):
    image, box = noise_image(64, 64, seed=6), (16, 16, 48, 48)
    mask = box_mask(image.size, box)
    base = dict(init_images=[image], mask=mask, mask_blur=0, steps=2, inpainting_fill=1)
    plain = img2img.run(req(**base), ctx).images[0]
    small = box_mask(image.size, (28, 28, 36, 36))  # the latents change only here
    result = img2img.run(req(**base, latent_mask=small), ctx).images[0]
    assert result.tobytes() != plain.tobytes()
    d = diff(result, image)
    assert d[~(np.asarray(mask) > 0)].max() == 0  # the pixel composite still follows mask
    assert d[30:34, 30:34].mean() > d[16:20, 16:20].mean()  # the model repainted the latent mask's place


def test_ngms_skips_the_negative_prompt_on_every_other_late_call(ctx):
    base = dict(prompt="a cat", negative_prompt="dog", steps=6, seed=3, width=32, height=32, save_images=False)
    plain = txt2img.run(Txt2ImgRequest(**base), ctx)
    ngms = txt2img.run(Txt2ImgRequest(**base, s_min_uncond=100.0), ctx)
    assert ngms.images[0].tobytes() != plain.images[0].tobytes()
    assert "NGMS: 100" in ngms.infotexts[0] and "NGMS" not in plain.infotexts[0]
    fields = infotext.infotext_to_fields(infotext.parse_infotext(ngms.infotexts[0]))
    assert fields["s_min_uncond"] == 100.0
    tiny = txt2img.run(Txt2ImgRequest(**base, s_min_uncond=1e-6), ctx)  # no level under it: nothing skipped
    assert tiny.images[0].tobytes() == plain.images[0].tobytes()


def test_ngms_model_call_runs_without_the_negative_rows():
    seen = []

    class Unet:
        dtype = torch.float32

        def __call__(self, x, t, encoder_hidden_states, **kw):
            seen.append(x.shape[0])
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    cond = sampling.Conditioning.fixed(torch.ones(1, 2, 4), torch.zeros(1, 2, 4))
    inp = type("Inp", (), {"unet": Unet(), "cfg_scale": 7.0, "guided": True, "control": None, "conditioning": cond,
                           "noise": torch.zeros(1, 4, 2, 2), "device": torch.device("cpu"), "size_condition": None,
                           "aesthetic_score": None, "inpaint_channels": None, "segments": (),
                           "sampler": type("S", (), {"sampler": type("X", (), {"cfg_divisor": 1.0})()})()})()
    model = sampling.GuidedModel(inp)
    model(torch.zeros(1, 4, 2, 2), torch.tensor(1), 0, 2)
    model(torch.zeros(1, 4, 2, 2), torch.tensor(1), 0, 2, skip_uncond=True)
    assert seen == [2, 1]
