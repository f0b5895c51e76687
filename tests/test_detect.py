"""The shapes-world detector reads back what the renderer drew, also through noise and blur."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bundled.detect import Detection, detect, nearest_palette, nearest_position
from bundled.shapes import PALETTE, Scene, random_scene, render

FIELDS = ("color", "background", "position", "size", "shape")
N_SCENES = 400


def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A slight blur (radius 0.7) and Gaussian noise (sigma 8), like a generated image."""
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.float32)
    noisy = blurred + rng.normal(0.0, 8.0, blurred.shape)
    return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8))


def accuracies(scenes: list[Scene], images: list[Image.Image]) -> dict[str, float]:
    """Fraction of the scenes whose detected field equals the drawn one, per field."""
    found = [detect(img) for img in images]
    return {f: float(np.mean([getattr(d, f) == getattr(s, f) for d, s in zip(found, scenes, strict=True)])) for f in FIELDS}


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    rng = np.random.default_rng(2024)
    return [random_scene(rng) for _ in range(N_SCENES)]


def test_clean_renders_are_read_back(scenes: list[Scene]) -> None:
    acc = accuracies(scenes, [render(s) for s in scenes])
    assert acc["shape"] >= 0.97, acc
    for field in ("color", "background", "position", "size"):
        assert acc[field] >= 0.99, acc


def test_blurred_noisy_renders_are_read_back(scenes: list[Scene]) -> None:
    rng = np.random.default_rng(7)
    acc = accuracies(scenes, [degrade(render(s), rng) for s in scenes])
    assert acc["shape"] >= 0.95, acc
    for field in ("color", "background", "position", "size"):
        assert acc[field] >= 0.98, acc


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "star"])
@pytest.mark.parametrize("size", ["small", "large"])
def test_each_shape_and_size_is_named(shape: str, size: str) -> None:
    scene = Scene(shape=shape, color="red", background="white", size=size, position="center", cx=0.5, cy=0.5)
    found = detect(render(scene))
    assert (found.shape, found.size, found.color, found.background, found.position) == (
        shape, size, "red", "white", "center",
    )
    assert found.cx == pytest.approx(0.5, abs=0.02) and found.cy == pytest.approx(0.5, abs=0.02)


def test_array_input_gives_the_same_answer_as_pil() -> None:
    scene = Scene("triangle", "orange", "yellow", "small", "left", 0.24, 0.51)
    image = render(scene)
    assert detect(np.asarray(image)) == detect(image)


def test_blank_image_finds_no_shape() -> None:
    blank = Image.new("RGB", (64, 64), PALETTE["blue"])
    found = detect(blank)
    assert isinstance(found, Detection)
    assert found.background == "blue"
    assert (found.shape, found.color, found.position, found.size) == (None, None, None, None)


def test_faint_noise_finds_no_shape() -> None:
    rng = np.random.default_rng(3)
    base = np.full((64, 64, 3), PALETTE["green"], dtype=np.float32)
    noisy = np.clip(base + rng.normal(0, 5, base.shape), 0, 255).astype(np.uint8)
    found = detect(noisy)
    assert found.background == "green" and found.shape is None


def test_wrong_array_layout_is_rejected() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        detect(np.zeros((64, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        detect(np.zeros((64, 64, 3), dtype=np.float32))


def test_palette_and_anchor_lookups() -> None:
    assert nearest_palette(np.array([200, 40, 40]))[0] == "red"
    assert nearest_palette(np.array([250, 150, 10]))[0] == "orange"
    assert nearest_position(0.27, 0.48) == "left"
    assert nearest_position(0.5, 0.72) == "bottom"
    assert nearest_position(0.52, 0.5) == "center"
