"""Token merging (A1111's token_merging_ratio options, modules.token_merging): the UNet's attention
sees fewer tokens, the patch never outlives its run, the ratios follow A1111's options, and the
images, infotext and API carry it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from fastapi.testclient import TestClient

from modules import token_merging
from modules.api import create_app
from modules.config import load_settings
from modules.images import encode_image_base64
from modules.infotext import infotext_to_fields, parse_infotext
from modules.job_batching import batch_key
from modules.schemas import Img2ImgRequest, Txt2ImgRequest
from modules.services import build_services
from tests.tiny_models import noise_image


def tiny_unet(down=("CrossAttnDownBlock2D", "DownBlock2D"), up=("UpBlock2D", "CrossAttnUpBlock2D")):
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=down, up_block_types=up,
                                cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32).eval()


def unet_call(unet, size=8):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, size, size, generator=gen)
    text = torch.randn(2, 7, 32, generator=gen)
    with torch.no_grad():
        return unet(x, torch.tensor([500, 500]), encoder_hidden_states=text).sample


def self_attention_tokens(unet) -> list[int]:
    """Records the number of tokens each self-attention (attn1) gets, in call order."""
    seen: list[int] = []
    for name, module in unet.named_modules():
        if name.endswith("attn1"):
            module.register_forward_pre_hook(lambda _m, args, kw: seen.append((args or (kw["hidden_states"],))[0].shape[1]),
                                             with_kwargs=True)
    return seen


def test_merging_halves_the_self_attention_tokens_and_is_removed_after():
    unet = tiny_unet()
    seen = self_attention_tokens(unet)
    plain = unet_call(unet)
    assert seen == [64, 16, 64, 64]  # the 8x8 latent's first level (down, up twice) and the 4x4 middle
    seen.clear()
    with token_merging.merged_tokens(unet, 0.5):
        merged = unet_call(unet)
        again = unet_call(unet)
    assert seen == [32, 16, 32, 32] * 2  # the first level's halved, the middle's kept
    assert torch.equal(merged, again)  # deterministic: no random choice of the tokens kept
    assert (merged - plain).abs().mean() > 1e-4  # the images change
    seen.clear()
    assert torch.equal(unet_call(unet), plain)  # patch gone: the same output as before
    assert seen == [64, 16, 64, 64]
    assert all(type(m).__name__ != "ToMeBlock" for m in unet.modules())
    assert not unet._forward_pre_hooks


def test_ratio_zero_patches_nothing_and_an_error_still_removes_the_patch():
    unet = tiny_unet()
    plain = unet_call(unet)
    with token_merging.merged_tokens(unet, 0.0):
        assert all(type(m).__name__ != "ToMeBlock" for m in unet.modules())
        assert torch.equal(unet_call(unet), plain)
    with pytest.raises(RuntimeError, match="boom"), token_merging.merged_tokens(unet, 0.3):
        assert any(type(m).__name__ == "ToMeBlock" for m in unet.modules())
        raise RuntimeError("boom")
    assert all(type(m).__name__ != "ToMeBlock" for m in unet.modules())
    assert torch.equal(unet_call(unet), plain)
    with pytest.raises(ValueError, match="0..0.9"), token_merging.merged_tokens(unet, 1.5):
        pass


def test_sdxl_layout_merges_at_its_first_level_with_attention():
    """SDXL's first down block has no attention: merging goes to the next level (A1111 merges nothing there)."""
    unet = tiny_unet(down=("DownBlock2D", "CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D", "UpBlock2D"))
    assert token_merging.first_attention_level(unet) == 2
    assert token_merging.first_attention_level(tiny_unet()) == 1
    seen = self_attention_tokens(unet)
    unet_call(unet, size=16)
    assert seen == [64, 64, 64, 64]  # a 16x16 latent: attention at 8x8 only (down, middle, up twice)
    seen.clear()
    with token_merging.merged_tokens(unet, 0.5):
        unet_call(unet, size=16)
    assert seen == [32, 32, 32, 32]


def test_ratios_follow_a1111_options(services):
    s = services.settings.model_copy(update={"token_merging_ratio": 0.3})
    t2i, i2i = Txt2ImgRequest(), Img2ImgRequest()
    assert token_merging.first_pass_ratio(t2i, s) == 0.3
    assert token_merging.first_pass_ratio(i2i, s) == 0.3  # img2img option 0: the general one
    assert token_merging.hires_ratio(t2i, s) == 0.3  # hires option 0: the first pass's
    s = s.model_copy(update={"token_merging_ratio_img2img": 0.5, "token_merging_ratio_hr": 0.6})
    assert token_merging.first_pass_ratio(t2i, s) == 0.3
    assert token_merging.first_pass_ratio(i2i, s) == 0.5
    assert token_merging.hires_ratio(t2i, s) == 0.6
    assert token_merging.first_pass_ratio(Img2ImgRequest(token_merging_ratio=0.0), s) == 0.0  # the request wins
    assert token_merging.hires_ratio(Txt2ImgRequest(token_merging_ratio_hr=0.2), s) == 0.2


def run(services, **fields):
    request = Txt2ImgRequest(**{"prompt": "a red circle", "seed": 3, "steps": 3, **fields})
    return services.submit("txt2img", request).wait(timeout=120)


def test_txt2img_with_merging_changes_the_image_and_says_so(services):
    plain = run(services)
    merged = run(services, token_merging_ratio=0.5)
    again = run(services, token_merging_ratio=0.5)
    a, b = (np.asarray(r.images[0], dtype=np.int16) for r in (plain, merged))
    assert np.abs(a - b).mean() > 0.1
    assert np.array_equal(b, np.asarray(again.images[0], dtype=np.int16))  # seeds still reproduce
    assert "Token merging ratio" not in plain.infotexts[0]
    assert "Token merging ratio: 0.5" in merged.infotexts[0]
    fields = infotext_to_fields(parse_infotext(merged.infotexts[0]))
    assert fields["token_merging_ratio"] == 0.5
    # the cached UNet was left unpatched: the plain request gives the plain image again
    assert np.array_equal(a, np.asarray(run(services).images[0], dtype=np.int16))
    with services.models.use(services.selected_checkpoint) as model:
        assert all(type(m).__name__ != "ToMeBlock" for m in model.pipe.unet.modules())


def test_settings_ratio_applies_and_hires_pass_reports_its_own(services):
    services.update_settings(services.settings.model_copy(update={"token_merging_ratio": 0.4, "token_merging_ratio_hr": 0.2}))
    r = run(services, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.5)
    assert "Token merging ratio: 0.4" in r.infotexts[0] and "Token merging ratio hr: 0.2" in r.infotexts[0]
    img = services.submit("img2img", Img2ImgRequest(prompt="x", seed=1, steps=3, init_images=[noise_image(32, 32)],
                                                   denoising_strength=0.6)).wait(timeout=120)
    assert "Token merging ratio: 0.4" in img.infotexts[0]


def test_jobs_with_different_ratios_do_not_share_a_batch():
    a, b = Txt2ImgRequest(prompt="a"), Txt2ImgRequest(prompt="b", token_merging_ratio=0.5)
    assert batch_key("txt2img", a) != batch_key("txt2img", b)
    assert batch_key("txt2img", b) == batch_key("txt2img", Txt2ImgRequest(prompt="c", token_merging_ratio=0.5))


def test_api_override_settings_and_options(data_dir):
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0}))
    body = {"prompt": "a red apple", "steps": 2, "seed": 7, "width": 32, "height": 32,
            "override_settings": {"token_merging_ratio": 0.5}}
    try:
        with TestClient(create_app(services)) as client:
            r = client.post("/sdapi/v1/txt2img", json=body)
            assert r.status_code == 200
            assert "Token merging ratio: 0.5" in json.loads(r.json()["info"])["infotexts"][0]
            bad = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"token_merging_ratio": 0.95}})
            assert bad.status_code == 422
            assert bad.json()["detail"][0]["loc"] == ["body", "override_settings", "token_merging_ratio"]
            # img2img: token_merging_ratio_img2img from override_settings, token_merging_ratio over it
            i2i = {"prompt": "x", "steps": 2, "seed": 1, "denoising_strength": 0.6, "width": 32, "height": 32,
                   "init_images": [encode_image_base64(noise_image(32, 32))]}
            r = client.post("/sdapi/v1/img2img", json={**i2i, "override_settings": {"token_merging_ratio_img2img": 0.3}})
            assert "Token merging ratio: 0.3" in json.loads(r.json()["info"])["infotexts"][0]
            r = client.post("/sdapi/v1/img2img", json={**i2i, "override_settings": {"token_merging_ratio_img2img": 0.3,
                                                                                    "token_merging_ratio": 0.6}})
            assert "Token merging ratio: 0.6" in json.loads(r.json()["info"])["infotexts"][0]
            r = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"token_merging_ratio_img2img": 0.3}})
            assert "Token merging ratio" not in json.loads(r.json()["info"])["infotexts"][0]  # txt2img ignores it
            # the options: read, written, validated
            assert client.get("/sdapi/v1/options").json()["token_merging_ratio"] == 0.0
            assert client.post("/sdapi/v1/options", json={"token_merging_ratio": 0.3}).status_code == 200
            assert client.get("/sdapi/v1/options").json()["token_merging_ratio"] == 0.3
            bad = client.post("/sdapi/v1/options", json={"token_merging_ratio_hr": 2})
            assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "token_merging_ratio_hr"]
            r = client.post("/sdapi/v1/txt2img", json={k: v for k, v in body.items() if k != "override_settings"})
            assert "Token merging ratio: 0.3" in json.loads(r.json()["info"])["infotexts"][0]
    finally:
        services.close()
