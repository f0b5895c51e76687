"""The upscaler registry and the Extras single-image upscale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules import upscalers
from modules.processing import extras
from modules.processing.context import RunContext
from modules.schemas import ExtrasRequest, RequestError


def test_registry_names_in_a1111_order(tmp_path):
    names = [u.name for u in upscalers.list_upscalers(tmp_path)]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert {"Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
            "Latent (nearest)", "Latent (nearest-exact)"} <= set(names)
    assert "Latent" not in [u.name for u in upscalers.list_upscalers(tmp_path, include_latent=False)]


def test_model_files_listed_only_when_spandrel_imports(tmp_path):
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "ESRGAN" / "4x-Fake.pth").write_bytes(b"x")
    names = [u.name for u in upscalers.list_upscalers(tmp_path)]
    assert ("4x-Fake" in names) == upscalers.spandrel_available()
    if not upscalers.spandrel_available():
        with pytest.raises(RequestError, match="spandrel"):
            upscalers.get_upscaler("4x-Fake", tmp_path)


@pytest.mark.parametrize("name", ["None", "Lanczos", "Nearest"])
def test_pixel_upscalers_give_the_size(tmp_path, name):
    image = Image.new("RGB", (10, 6), (1, 2, 3))
    out = upscalers.upscale_image(image, upscalers.get_upscaler(name, tmp_path), 25, 15)
    assert out.size == (25, 15)


def test_nearest_repeats_pixels(tmp_path):
    image = Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8))
    out = upscalers.upscale_image(image, upscalers.get_upscaler("Nearest", tmp_path), 4, 2)
    assert np.asarray(out)[:, :, 0].tolist() == [[0, 0, 255, 255], [0, 0, 255, 255]]


def test_latent_upscale_size_and_modes(tmp_path):
    lat = torch.arange(16.0).reshape(1, 1, 4, 4)
    up = upscalers.upscale_latents(lat, upscalers.get_upscaler("Latent (nearest-exact)", tmp_path), 8, 8)
    assert up.shape == (1, 1, 8, 8) and up[0, 0, 0, 1] == lat[0, 0, 0, 0]
    with pytest.raises(RequestError, match="latents"):
        upscalers.upscale_image(Image.new("RGB", (4, 4)), upscalers.get_upscaler("Latent", tmp_path), 8, 8)


def extras_ctx(settings):
    return RunContext(model=None, settings=settings, saver=None)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path):
    from modules.config import make_settings

    return make_settings(data_dir=tmp_path, max_side=256)


def test_extras_scale_by_and_to(settings):
    image = Image.new("RGB", (20, 10), (9, 9, 9))
    r = extras.run(ExtrasRequest(image=image, upscaling_resize=2.5, upscaler_1="Lanczos"), extras_ctx(settings))
    assert r.images[0].size == (50, 25)
    assert "Postprocess upscale by: 2.5, Postprocess upscaler: Lanczos" == r.infotexts[0]
    r = extras.run(ExtrasRequest(image=image, resize_mode=1, upscaling_resize_w=30, upscaling_resize_h=30,
                                 upscaler_1="Nearest"), extras_ctx(settings))
    assert r.images[0].size == (30, 30)


def test_extras_crop_keeps_the_centre(settings):
    image = Image.new("RGB", (40, 10), (255, 0, 0))
    image.paste((0, 255, 0), (15, 0, 25, 10))  # green centre, red sides cropped away
    r = extras.run(ExtrasRequest(image=image, resize_mode=1, upscaling_resize_w=20, upscaling_resize_h=20,
                                 upscaler_1="Nearest", upscaling_crop=True), extras_ctx(settings))
    assert r.images[0].getpixel((10, 10)) == (0, 255, 0)
    assert r.images[0].getpixel((0, 10)) == (0, 255, 0)


def test_extras_second_upscaler_blend(settings):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    a = extras.run(ExtrasRequest(image=image, upscaler_1="Nearest"), extras_ctx(settings)).images[0]
    b = extras.run(ExtrasRequest(image=image, upscaler_1="Nearest", upscaler_2="Lanczos",
                                 extras_upscaler_2_visibility=0.5), extras_ctx(settings))
    assert b.infotexts[0].endswith("Postprocess upscaler 2: Lanczos")
    assert not np.array_equal(np.asarray(a), np.asarray(b.images[0]))


def test_extras_errors(settings):
    with pytest.raises(RequestError, match="max_side"):
        extras.run(ExtrasRequest(image=Image.new("RGB", (200, 200)), upscaling_resize=4), extras_ctx(settings))
    with pytest.raises(RequestError, match="upscaler_1: unknown upscaler 'Latent'"):
        extras.run(ExtrasRequest(image=Image.new("RGB", (8, 8)), upscaler_1="Latent"), extras_ctx(settings))
    with pytest.raises(RequestError, match="image: expected an image"):
        extras.run(ExtrasRequest(image=b"junk"), extras_ctx(settings))


def test_extras_job_through_the_queue(services):
    job = services.submit("extras", ExtrasRequest(image=Image.new("RGB", (8, 8), (5, 6, 7)), upscaling_resize=2))
    result = job.wait(60)
    assert result.images[0].size == (16, 16)
    assert result.paths and result.paths[0].is_file()


def test_extras_through_the_queue_loads_no_checkpoint(services):
    image = Image.new("RGB", (16, 16), (200, 30, 30))
    result = services.submit("extras", ExtrasRequest(image=image, upscaling_resize=2, upscaler_1="Nearest")).wait(60)
    assert result.images[0].size == (32, 32)
    assert result.images[0].getpixel((5, 5)) == (200, 30, 30)
    assert services.models.loaded() == []
