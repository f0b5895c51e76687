"""Hires fix: target size, infotext keys, round trip, errors."""

from __future__ import annotations

import numpy as np
import pytest

from modules import infotext
from modules.processing import hires, txt2img
from modules.schemas import RequestError, Txt2ImgRequest


def req(**kw) -> Txt2ImgRequest:
    base = dict(prompt="a house", steps=2, seed=11, width=32, height=32, save_images=False, enable_hr=True,
                hr_scale=1.5, denoising_strength=0.6)
    return Txt2ImgRequest(**{**base, **kw})


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest-exact)", "Lanczos", "Nearest"])
def test_output_has_the_scaled_size_and_infotext(ctx, upscaler):
    result = txt2img.run(req(hr_upscaler=upscaler, hr_second_pass_steps=3), ctx)
    assert result.images[0].size == (48, 48)
    assert (result.width, result.height) == (48, 48)
    text = result.infotexts[0]
    assert "Size: 32x32" in text
    assert f"Denoising strength: 0.6, Hires upscale: 1.5, Hires steps: 3, Hires upscaler: {upscaler}" in text


def test_resize_x_y(ctx):
    r = txt2img.run(req(hr_resize_x=64, hr_resize_y=0, width=32, height=16), ctx)
    assert r.images[0].size == (64, 32)
    assert "Hires resize: 64x0" in r.infotexts[0] and "Hires upscale:" not in r.infotexts[0]


def test_target_size_rules():
    r = Txt2ImgRequest(hr_scale=2.0)
    assert hires.target_size(r, 40, 24, 8) == (80, 48)
    assert hires.target_size(Txt2ImgRequest(hr_resize_y=100), 40, 24, 8) == (160, 96)
    assert hires.target_size(Txt2ImgRequest(hr_resize_x=64, hr_resize_y=48), 40, 24, 8) == (64, 48)


def test_hires_changes_nothing_when_disabled(ctx):
    plain = txt2img.run(req(enable_hr=False), ctx)
    assert plain.images[0].size == (32, 32) and "Hires" not in plain.infotexts[0]


def test_round_trip_reproduces_hires(ctx):
    first = txt2img.run(req(seed=-1, hr_upscaler="Latent (bicubic)", hr_second_pass_steps=3), ctx)
    fields = infotext.infotext_to_fields(infotext.parse_infotext(first.infotexts[0]))
    assert fields["enable_hr"] is True
    again = txt2img.run(Txt2ImgRequest(**fields, save_images=False), ctx)
    assert again.infotexts[0] == first.infotexts[0]
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(first.images[0]))


def test_huge_upscale_and_unknown_upscaler_are_clear_errors(ctx):
    with pytest.raises(RequestError, match="max_side"):
        txt2img.run(req(hr_scale=8.0, width=512, height=512), ctx)
    with pytest.raises(RequestError, match="hr_upscaler: unknown upscaler 'Bogus'; known: None, Lanczos"):
        txt2img.run(req(hr_upscaler="Bogus"), ctx)


def test_progress_counts_both_passes(ctx):
    seen = []
    ctx.progress.update = lambda step, total, preview=None: seen.append((step, total))  # type: ignore[method-assign]
    txt2img.run(req(steps=4, hr_second_pass_steps=4, denoising_strength=0.5), ctx)
    assert seen[-1] == (6, 6)  # 4 first-pass steps + int(4 * 0.5) second-pass steps


def test_vae_tiling_only_for_large_images_and_restored():
    from modules.processing import common

    class FakeVae:
        use_tiling = False

        def enable_tiling(self):
            self.use_tiling = True

        def disable_tiling(self):
            self.use_tiling = False

    class FakePipe:
        vae = FakeVae()

    pipe = FakePipe()
    with common.vae_tiling_for(pipe, 512, 512):
        assert pipe.vae.use_tiling is False
    with common.vae_tiling_for(pipe, 2048, 2048):
        assert pipe.vae.use_tiling is True
    assert pipe.vae.use_tiling is False
