"""Prompt editing on the shipped model, measured with the detector of ``bundled/detect.py``.

The shape's colour is settled in the early steps: ``[red:blue:0.9]`` (red for 90% of the steps)
keeps it red, ``[red:blue:0.1]`` (blue after the first 10%) makes it blue.
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
