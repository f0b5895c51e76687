"""Outpainting: canvas size, original pixels exact, fills, validation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules.processing import outpaint
from modules.schemas import OutpaintRequest, RequestError, parse_request
from tests.tiny_models import noise_image


@pytest.mark.parametrize("fill", ["edge", "noise", "solid"])
def test_size_is_input_plus_padding_and_original_is_exact(ctx, fill):
    image = noise_image(32, 24)
    r = OutpaintRequest(init_images=[image], pixels=8, direction=["left", "down"], outpaint_fill=fill,
                        steps=3, seed=2, save_images=False, mask_blur=4)
    out = outpaint.run(r, ctx).images[0]
    assert out.size == (40, 32)
    assert np.array_equal(np.asarray(out)[0:24, 8:40], np.asarray(image))
    new_area = np.asarray(out)[24:, :8].astype(int)
    assert new_area.std() > 0 or fill == "solid"


def test_all_sides_and_a_size_not_a_multiple_of_8(ctx):
    image = noise_image(20, 20)
    out = outpaint.run(OutpaintRequest(init_images=[image], pixels=16, steps=2, seed=1, save_images=False), ctx).images[0]
    assert out.size == (52, 52)
    assert np.array_equal(np.asarray(out)[16:36, 16:36], np.asarray(image))


def test_extend_canvas_edge_fill_stretches_the_border():
    image = Image.new("RGB", (4, 4), (0, 0, 255))
    image.putpixel((0, 1), (255, 0, 0))
    canvas = outpaint.extend_canvas(image, (8, 0, 0, 0), "edge", "#000000", 0)
    assert canvas.size == (12, 4)
    assert canvas.getpixel((0, 1)) == (255, 0, 0) and canvas.getpixel((3, 2)) == (0, 0, 255)


def test_pixels_must_be_a_multiple_of_8_and_directions_known():
    with pytest.raises(RequestError, match="pixels: must be a multiple of 8"):
        parse_request(OutpaintRequest, {"pixels": 12})
    with pytest.raises(RequestError, match="direction"):
        parse_request(OutpaintRequest, {"direction": ["sideways"]})


def test_bad_fill_colour_and_missing_image(ctx):
    with pytest.raises(RequestError, match="fill_color"):
        outpaint.run(OutpaintRequest(init_images=[noise_image(16, 16)], pixels=8, outpaint_fill="solid",
                                     fill_color="not a colour", save_images=False), ctx)
    with pytest.raises(RequestError, match="init_images"):
        outpaint.run(OutpaintRequest(save_images=False), ctx)
