"""img2img on tiny random components: strength, resize modes, batches, bad input, round trip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules import infotext, masks
from modules.processing import img2img
from modules.processing.context import RunContext
from modules.schemas import Img2ImgRequest, RequestError
from tests.tiny_models import noise_image


@pytest.fixture
def ctx(services):
    with services.models.use(services.checkpoints.get("tiny-a").name) as model:
        yield RunContext(model, services.settings, services.saver)


def req(**kw) -> Img2ImgRequest:
    base = dict(prompt="a cat", steps=3, seed=7, save_images=False, width=32, height=32)
    return Img2ImgRequest(**{**base, **kw})


def test_strength_zero_returns_the_input_exactly(ctx):
    image = noise_image(32, 32)
    result = img2img.run(req(init_images=[image], denoising_strength=0.0), ctx)
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(image))
    assert "Denoising strength: 0" in result.infotexts[0]


def test_strength_changes_the_image_and_reproduces(ctx):
    image = noise_image(32, 32)
    a = img2img.run(req(init_images=[image], denoising_strength=0.6), ctx).images[0]
    b = img2img.run(req(init_images=[image], denoising_strength=0.6), ctx).images[0]
    c = img2img.run(req(init_images=[image], denoising_strength=0.6, seed=8), ctx).images[0]
    assert a.size == (32, 32)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert not np.array_equal(np.asarray(a), np.asarray(image))


def test_batch_seeds_and_default_size(ctx):
    image = noise_image(40, 24)  # no width/height: the image's size, rounded down to 8
    result = img2img.run(req(init_images=[image], width=None, height=None, batch_size=2, n_iter=1), ctx)
    assert [im.size for im in result.images] == [(40, 24), (40, 24)]
    assert result.seeds == [7, 8]
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(result.images[1]))


def two_tone(w: int, h: int) -> Image.Image:
    """Left half red, right half blue (top half of each a bit lighter) for locating pixels."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


def test_resize_mode_just_resize_stretches():
    out = masks.resize_image(two_tone(64, 32), 32, 32, 0)
    assert out.size == (32, 32)
    assert out.getpixel((4, 16))[0] > 200 and out.getpixel((28, 16))[2] > 200


def test_resize_mode_crop_and_resize_crops_the_sides():
    src = Image.new("RGB", (64, 32), (0, 255, 0))
    src.paste((255, 0, 0), (0, 0, 16, 32))  # a red band on the left quarter: cropped away
    out = masks.resize_image(src, 32, 32, 1)
    assert out.size == (32, 32)
    assert all(out.getpixel((x, 16))[1] > 200 for x in (0, 16, 31))


def test_resize_mode_resize_and_fill_keeps_everything_and_fills_bands():
    src = Image.new("RGB", (64, 32), (0, 255, 0))
    src.paste((255, 0, 0), (0, 0, 64, 4))  # top rows red: the first row stretched into the top band
    out = masks.resize_image(src, 32, 32, 2)
    assert out.size == (32, 32)
    assert out.getpixel((16, 0))[0] > 150  # top band from the first row
    assert out.getpixel((16, 20))[1] > 200  # the picture in the middle
    assert out.getpixel((16, 31))[1] > 200  # bottom band from the (green) last row


def test_resize_mode_latent_upscale_gives_the_target_size(ctx):
    result = img2img.run(req(init_images=[noise_image(16, 16)], resize_mode=3, denoising_strength=0.5), ctx)
    assert result.images[0].size == (32, 32)


def test_rgba_and_greyscale_inputs_are_converted(ctx):
    rgba = Image.new("RGBA", (32, 32), (10, 20, 30, 0))
    grey = Image.new("L", (32, 32), 77)
    a = img2img.run(req(init_images=[rgba], denoising_strength=0.0), ctx).images[0]
    b = img2img.run(req(init_images=[grey], denoising_strength=0.0), ctx).images[0]
    assert a.mode == "RGB" and a.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert b.mode == "RGB" and b.getpixel((5, 5)) == (77, 77, 77)


@pytest.mark.parametrize("bad", ["not an image", b"\x89PNG broken", None])
def test_non_image_is_a_request_error(ctx, bad):
    with pytest.raises(RequestError, match=r"init_images\[0\]"):
        img2img.run(req(init_images=[bad]), ctx)


def test_no_init_image_is_a_request_error(ctx):
    with pytest.raises(RequestError, match="init_images"):
        img2img.run(req(init_images=[]), ctx)


def test_sketch_composite_puts_the_drawing_over_the_picture():
    bg = Image.new("RGB", (32, 32), (0, 0, 255))
    sketch = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    sketch.paste((255, 0, 0, 255), (0, 0, 8, 8))  # drawn at half size: scaled to the picture
    out = img2img.composite_sketch(bg, sketch)
    assert out.getpixel((2, 2)) == (255, 0, 0)
    assert out.getpixel((30, 30)) == (0, 0, 255)


def test_infotext_round_trip_reproduces_img2img(ctx):
    image = noise_image(32, 32, seed=3)
    first = img2img.run(req(init_images=[image], denoising_strength=0.5, seed=-1, cfg_scale=5.0), ctx)
    fields = infotext.infotext_to_fields(infotext.parse_infotext(first.infotexts[0]))
    again = img2img.run(Img2ImgRequest(**fields, init_images=[image], save_images=False), ctx)
    assert again.infotexts[0] == first.infotexts[0]
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(first.images[0]))


def test_saved_into_the_img2img_folder(ctx):
    result = img2img.run(req(init_images=[noise_image(32, 32)], denoising_strength=0.3, save_images=True), ctx)
    assert len(result.paths) == 1 and result.paths[0].is_file()
    assert "img2img-images" in str(result.paths[0])


def test_each_init_image_is_encoded_once_per_request(ctx, monkeypatch):
    from modules.processing import common

    calls = []
    real = common.encode_images
    monkeypatch.setattr(common, "encode_images", lambda pipe, images: calls.append(len(images)) or real(pipe, images))
    image = noise_image(32, 32)
    batched = img2img.run(req(init_images=[image], denoising_strength=0.5, batch_size=2, n_iter=2), ctx)
    assert len(calls) == 1 and len(batched.images) == 4
    single = img2img.run(req(init_images=[image], denoising_strength=0.5, seed=10), ctx)
    assert np.array_equal(np.asarray(batched.images[3]), np.asarray(single.images[0]))  # seed 7+3, same as alone
