"""Inpainting: pixels outside mask + blur band unchanged, masked ones changed, "only masked"
paste position, mask handling, 9-channel checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules import masks
from modules.processing import img2img
from modules.processing.context import RunContext
from modules.schemas import Img2ImgRequest, RequestError
from tests.tiny_models import noise_image, write_single_file


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    m = Image.new("L", size, 0)
    m.paste(255, box)
    return m


def req(**kw) -> Img2ImgRequest:
    base = dict(prompt="a dog", steps=3, seed=5, save_images=False, width=32, height=32, denoising_strength=0.9)
    return Img2ImgRequest(**{**base, **kw})


def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).sum(2) > 0


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
@pytest.mark.parametrize("full_res", [False, True])
def test_pixels_outside_mask_and_blur_band_are_unchanged(ctx, fill, full_res):
    image, box, blur = noise_image(64, 64), (24, 24, 40, 40), 2
    mask = box_mask(image.size, box)
    size = 32 if full_res else None
    result = img2img.run(req(init_images=[image], mask=mask, mask_blur=blur, inpainting_fill=fill,
                             inpaint_full_res=full_res, width=size, height=size), ctx)
    out = result.images[0]
    assert out.size == image.size
    diff = changed(out, image)
    band = np.asarray(masks.blur_mask(mask, blur)) > 0  # where the blurred mask reaches
    assert not diff[~band].any()
    inside = diff[box[1]:box[3], box[0]:box[2]]
    assert inside.mean() > 0.9


def test_only_masked_pastes_back_at_the_mask(ctx):
    image = noise_image(96, 64, seed=1)
    box = (60, 8, 76, 24)
    result = img2img.run(req(init_images=[image], mask=box_mask(image.size, box), mask_blur=0,
                             inpaint_full_res=True, inpaint_full_res_padding=4), ctx)
    diff = changed(result.images[0], image)
    ys, xs = np.nonzero(diff)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == box  # exactly the mask, no blur
    assert "Inpaint area: Only masked" in result.infotexts[0]
    assert "Masked area padding: 4" in result.infotexts[0]


def test_crop_region_and_aspect_expansion():
    mask = box_mask((100, 80), (40, 30, 50, 40))
    region = masks.crop_region(mask, 5)
    assert region == (35, 25, 55, 45)
    x1, y1, x2, y2 = masks.expand_crop_region(region, 64, 32, 100, 80)
    assert (x2 - x1) == 2 * (y2 - y1) and x1 <= 35 and x2 >= 55 and (y1, y2) == (25, 45)


def test_inverted_mask_repaints_the_outside(ctx):
    image, box = noise_image(32, 32), (8, 8, 24, 24)
    result = img2img.run(req(init_images=[image], mask=box_mask(image.size, box), mask_blur=0,
                             inpainting_mask_invert=1, inpaint_full_res=False), ctx)
    diff = changed(result.images[0], image)
    assert not diff[8:24, 8:24].any()
    assert diff[:4].mean() > 0.9
    assert "Mask mode: Inpaint not masked" in result.infotexts[0]


def test_mask_of_another_size_is_resized_with_a_note(ctx):
    image = noise_image(32, 32)
    small = box_mask((16, 16), (0, 0, 8, 8))  # top-left quarter
    result = img2img.run(req(init_images=[image], mask=small, mask_blur=0, inpaint_full_res=False), ctx)
    assert any("Mask resized from 16x16" in c for c in result.comments)
    assert "Mask resized" in result.info()["comments"][0]
    diff = changed(result.images[0], image)
    assert not diff[20:, :].any() and not diff[:, 20:].any()
    assert diff[:14, :14].mean() > 0.9


def test_empty_mask_is_a_clear_error(ctx):
    with pytest.raises(RequestError, match="mask: the mask is empty"):
        img2img.run(req(init_images=[noise_image(32, 32)], mask=Image.new("L", (32, 32), 0)), ctx)
    with pytest.raises(RequestError, match="all white before inversion"):
        img2img.run(req(init_images=[noise_image(32, 32)], mask=Image.new("L", (32, 32), 255), inpainting_mask_invert=1), ctx)


def test_non_image_mask_is_a_request_error(ctx):
    with pytest.raises(RequestError, match="mask: expected an image"):
        img2img.run(req(init_images=[noise_image(32, 32)], mask="white"), ctx)


def test_infotext_keys_as_a1111_writes_them(ctx):
    result = img2img.run(req(init_images=[noise_image(32, 32)], mask=box_mask((32, 32), (0, 0, 16, 16)),
                             mask_blur=3, inpainting_fill=1, inpaint_full_res=False), ctx)
    text = result.infotexts[0]
    assert "Denoising strength: 0.9, Mask blur: 3, Masked content: original" in text
    assert "Inpaint area" not in text


def test_nine_channel_inpainting_checkpoint(services, tmp_path):
    folder = services.settings.models_dir / "Stable-diffusion"
    write_single_file(folder, "tiny-inpaint", seed=3, in_channels=9)
    services.checkpoints.refresh() if hasattr(services.checkpoints, "refresh") else None
    info = services.checkpoints.get("tiny-inpaint")
    with services.models.use(info.name) as model:
        assert model.arch == "sd1-inpaint"
        ctx = RunContext(model, services.settings, None)
        image, box = noise_image(32, 32), (8, 8, 24, 24)
        result = img2img.run(req(init_images=[image], mask=box_mask(image.size, box), mask_blur=0,
                                 inpaint_full_res=False, denoising_strength=1.0), ctx)
        diff = changed(result.images[0], image)
        assert not diff[~(np.asarray(box_mask(image.size, box)) > 0)].any()
        assert diff[8:24, 8:24].mean() > 0.9
        plain = img2img.run(req(init_images=[image], denoising_strength=0.5), ctx)  # img2img, no mask
        assert plain.images[0].size == (32, 32)
