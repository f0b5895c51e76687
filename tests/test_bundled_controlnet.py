"""The shipped ControlNet moves the shape where the map puts it, on the shipped model.

Real assertions with the OpenCV detector: a canny unit on a rendered scene puts the generated
shape at the map's position (also when the prompt names another position, with "ControlNet is
more important"), while colour and background still follow the prompt.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bundled.detect import detect
from bundled.shapes import Scene, render
from modules.config import load_settings
from modules.schemas import Txt2ImgRequest
from modules.services import build_services

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "models" / "Stable-diffusion" / "easel-shapes.safetensors"
CONTROLNET = ROOT / "models" / "ControlNet" / "easel-shapes-control.safetensors"

# (map scene: shape, position) and the prompt's (colour, background, named position)
CASES = [
    (("square", "left"), ("red", "blue", "left")),
    (("circle", "top"), ("yellow", "purple", "top")),
    (("triangle", "right"), ("green", "white", "right")),
    (("star", "bottom"), ("orange", "black", "bottom")),
    (("square", "right"), ("blue", "yellow", "left")),
    (("circle", "bottom"), ("white", "green", "top")),
]
CENTRES = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "center": (0.5, 0.5)}


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    data = tmp_path_factory.mktemp("bundled-cn")
    for src, sub in ((BUNDLED, "Stable-diffusion"), (CONTROLNET, "ControlNet")):
        folder = data / "models" / sub
        folder.mkdir(parents=True, exist_ok=True)
        for f in (src, src.with_suffix(".yaml")):
            shutil.copy(f, folder / f.name)
    s = build_services(load_settings(data, {"show_progress_every_n_steps": 0}))
    yield s
    s.close()


def test_shipped_controlnet_is_small_and_listed(services):
    assert CONTROLNET.stat().st_size <= 15 * 2**20
    assert [i.stem for i in services.controlnet_infos()] == ["easel-shapes-control"]


def test_the_map_decides_position_the_prompt_decides_colours(services):
    hits = {"position": 0, "color": 0, "background": 0}
    for i, ((shape, where), (color, background, named)) in enumerate(CASES):
        cx, cy = CENTRES[where]
        source = Scene(shape, "black", "white", "large", where, cx, cy)  # the map's colours are not the prompt's
        prompt = Scene(shape, color, background, "large", named, 0.5, 0.5).caption()
        unit = dict(module="canny", model="easel-shapes-control", image=render(source), processor_res=64,
                    resize_mode=0, control_mode=0 if named == where else 2)
        req = Txt2ImgRequest(prompt=prompt, seed=300 + i, steps=20, cfg_scale=6, sampler_name="Euler a",
                             save_images=False, controlnet_units=[unit])
        result = services.submit("txt2img", req).wait(300)
        assert 'ControlNet 0: "Module: canny, Model: easel-shapes-control' in result.infotexts[0]
        found = detect(result.images[0])
        hits["position"] += found.position == where
        hits["color"] += found.color == color
        hits["background"] += found.background == background
    assert hits["position"] >= 5 and hits["color"] >= 5 and hits["background"] >= 5, hits


def test_the_map_decides_the_outline_with_a_deterministic_sampler(services):
    """The canny map's outline is drawn where it is (DPM++ 2M: bundled.evaluate measures 92-96% on 100
    cases, against 78-84% with Euler a, whose fresh noise each step makes outlines lumpy). The prompt
    names the map's shape, as in bundled.evaluate: a prompt naming another shape still wins over the map."""
    drawn = []
    for i, ((shape, where), (color, background, named)) in enumerate(CASES + [(("star", "left"), ("red", "white", "left")),
                                                                            (("triangle", "top"), ("blue", "orange", "top"))]):
        cx, cy = CENTRES[where]
        source = Scene(shape, "black", "white", "large", where, cx, cy)
        prompt = Scene(shape, color, background, "large", named, 0.5, 0.5).caption()
        unit = dict(module="canny", model="easel-shapes-control", image=render(source), processor_res=64,
                    resize_mode=0, control_mode=0 if named == where else 2)
        req = Txt2ImgRequest(prompt=prompt, seed=400 + i, steps=20, cfg_scale=6, sampler_name="DPM++ 2M",
                             save_images=False, controlnet_units=[unit])
        found = detect(services.submit("txt2img", req).wait(300).images[0])
        drawn.append((found.shape, shape, found.position, where))
    assert sum(s == shape and p == where for s, shape, p, where in drawn) >= 7, drawn
