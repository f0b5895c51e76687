"""Prompt editing on the shipped model, measured with the detector of ``bundled/detect.py``.

The shape's colour is settled in the early steps: ``[red:blue:0.9]`` (red for 90% of the steps)
keeps it red, ``[red:blue:0.1]`` (blue after the first 10%) makes it blue. ``AND`` of two positions
draws two shapes (docs/experiments/and-two-shapes.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bundled.detect import detect
from modules.schemas import Txt2ImgRequest

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "models" / "Stable-diffusion" / "easel-shapes.safetensors"
SEEDS = range(3000, 3030)


@pytest.fixture(scope="module")
def services(bundled_services):
    return bundled_services


@pytest.mark.slow  # 60 images of 20 steps
@pytest.mark.parametrize("when, colour", [("0.9", "red"), ("0.1", "blue")])
def test_the_early_steps_set_the_colour(services, when, colour):
    prompt = f"a large [red:blue:{when}] circle in the center, white background"
    hits = 0
    for seed in SEEDS:
        req = Txt2ImgRequest(prompt=prompt, seed=seed, steps=20, cfg_scale=6, sampler_name="Euler a", save_images=False)
        hits += detect(services.submit("txt2img", req).wait(300).images[0]).color == colour
    assert hits >= 0.9 * len(SEEDS), hits


def red_halves(image) -> tuple[bool, bool]:
    """Whether the detector finds a red shape in the left and in the right 64x64 half of a 128x64 image."""
    halves = (image.crop((0, 0, 64, 64)), image.crop((64, 0, 128, 64)))
    return tuple(d.shape is not None and d.color == "red" for d in map(detect, halves))


@pytest.mark.slow  # 40 images of 128x64, 20 steps
def test_and_of_two_positions_draws_two_shapes(services):
    """The model saw one shape per 64x64 image; on a 128x64 canvas (room for two at its size) the
    composable prompt draws a red circle in both halves far more often than its first part alone."""
    left = "a large red circle on the left, white background"
    both = {}
    for prompt in (f"{left} AND a large red circle on the right, white background", left):
        hits = 0
        for seed in range(100, 120):
            req = Txt2ImgRequest(prompt=prompt, seed=seed, steps=20, cfg_scale=7, sampler_name="Euler a",
                                 width=128, height=64, save_images=False)
            hits += all(red_halves(services.submit("txt2img", req).wait(300).images[0]))
        both[prompt] = hits
    composed, alone = both.values()
    assert composed >= 10, both  # measured 15/20
    assert alone <= 5, both  # measured 3/20: the second shape comes from the AND part
