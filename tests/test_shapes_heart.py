"""The held-out shapes: the renderer draws a heart and a crescent, and the detector names the heart
(the DreamBooth demo measures with it) without changing its answer for the four trained shapes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageFilter

from bundled.detect import detect
from bundled.shapes import SHAPES, Scene, random_scene, render


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("position", ["left", "center", "bottom"])
def test_a_heart_is_named_with_its_size_colour_and_place(size: str, position: str) -> None:
    from bundled.shapes import POSITIONS

    x, y = POSITIONS[position]
    scene = Scene("heart", "yellow", "purple", size, position, x, y)
    found = detect(render(scene))
    assert (found.shape, found.size, found.color, found.background, found.position) == (
        "heart", size, "yellow", "purple", position)
    assert found.top_heaviness < -0.05


def test_blurred_noisy_hearts_are_still_hearts_and_other_shapes_are_not() -> None:
    rng = np.random.default_rng(3)
    hearts, others = [], []
    for _ in range(40):
        base = random_scene(rng)
        for shape, bucket in (("heart", hearts), (base.shape, others)):
            image = render(Scene(shape, base.color, base.background, base.size, base.position, base.cx, base.cy))
            blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.float32)
            noisy = np.clip(np.round(blurred + rng.normal(0, 8, blurred.shape)), 0, 255).astype(np.uint8)
            bucket.append(detect(noisy).shape)
    assert hearts.count("heart") == 40
    assert "heart" not in others and set(others) <= set(SHAPES)


def test_a_crescent_is_drawn_as_a_disc_with_a_bite() -> None:
    scene = Scene("crescent", "white", "black", "large", "center", 0.5, 0.5)
    pixels = np.asarray(render(scene), dtype=np.int16)
    assert (pixels[32, 22] > 200).all()  # the left of the disc is drawn
    assert (pixels[32, 36] < 40).all()  # its right is taken out again (background)
    assert detect(render(scene)).shape != "heart"
