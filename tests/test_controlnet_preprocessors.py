"""ControlNet preprocessors: real pixels against OpenCV, parameters, errors and pixel-perfect sizes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from bundled.shapes import Scene, render
from modules.controlnet import annotators
from modules.controlnet.preprocessors import (
    MODULES,
    PreprocessorError,
    check_params,
    list_modules,
    module_defaults,
    modules_detail,
    pixel_perfect_resolution,
    preprocess,
)
from modules.schemas import RequestError

STAR = Scene("star", "red", "blue", "large", "left", 0.27, 0.52)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def drawing(background: int, ink: int, size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), (background,) * 3)
    ImageDraw.Draw(image).line([(8, 8), (56, 40)], fill=(ink,) * 3, width=3)
    return image


def test_canny_equals_opencv_pixel_for_pixel():
    image = render(STAR)
    rgb = np.asarray(image)
    out = pixels(preprocess("canny", image, resolution=64, threshold_a=50, threshold_b=120))
    expected = cv2.Canny(rgb, 50, 120)
    assert out.shape == (64, 64, 3) and np.array_equal(out[:, :, 0], expected)
    assert np.array_equal(out[:, :, 0], out[:, :, 2]) and 40 < (expected > 0).sum() < 1000

    gray = Image.fromarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)).convert("RGB")
    out = pixels(preprocess("canny", gray, resolution=64, threshold_a=50, threshold_b=120))
    assert np.array_equal(out[:, :, 0], cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 50, 120))

    # Defaults (100, 200) and the resolution: the short side is resized before detection (cubic up).
    out = pixels(preprocess("canny", image, resolution=128))
    big = cv2.resize(rgb, (128, 128), interpolation=cv2.INTER_CUBIC)
    assert out.shape == (128, 128, 3) and np.array_equal(out[:, :, 0], cv2.Canny(big, 100, 200))


def test_resolution_resizes_the_short_side():
    wide = Image.new("RGB", (120, 60), (10, 200, 30))
    assert preprocess("invert", wide, resolution=30).size == (60, 30)
    assert preprocess("invert", wide, resolution=-1).size == (1024, 512)  # -1: 512
    assert preprocess("none", wide, resolution=30).size == (120, 60)  # the image is the map


def test_invert_threshold_and_none_pixels():
    image = render(STAR)
    rgb = np.asarray(image)
    assert np.array_equal(pixels(preprocess("invert", image, 64)), 255 - rgb)
    assert np.array_equal(pixels(preprocess("invert (from white bg & black line)", image, 64)), 255 - rgb)
    gray = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3))
    out = pixels(preprocess("threshold", Image.fromarray(gray), 64, threshold_a=100))
    assert np.array_equal(out[0, :, 0] == 255, gray[0, :, 0] > 100)
    assert set(np.unique(out)) == {0, 255}
    assert np.array_equal(pixels(preprocess("none", image)), rgb)


@pytest.mark.parametrize("background, ink", [(255, 0), (0, 255), (230, 40)])
def test_scribble_gives_white_lines_on_black_whatever_the_background(background, ink):
    image = drawing(background, ink)
    out = pixels(preprocess("scribble", image, 64))
    stroke = np.asarray(image)[:, :, 0] == ink
    assert set(np.unique(out)) == {0, 255}
    assert np.array_equal(out[:, :, 0] == 255, stroke)


@pytest.mark.parametrize("color", [0, 255, 128])
def test_an_empty_scribble_is_refused(color):
    with pytest.raises(PreprocessorError, match="the scribble is empty: draw something") as err:
        preprocess("scribble", Image.new("RGB", (64, 64), (color,) * 3), 64)
    assert err.value.field == "image"


def test_scribble_xdog_finds_dark_lines():
    image = drawing(255, 0)  # a black stroke on white, as a sketch
    out = pixels(preprocess("scribble_xdog", image, 64))
    near_stroke = cv2.dilate((np.asarray(image)[:, :, 0] == 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    lines = out[:, :, 0] == 255
    assert set(np.unique(out)) == {0, 255} and lines.sum() > 30
    assert not (lines & ~near_stroke).any()  # every line pixel lies on (or next to) the stroke
    assert lines.sum() > pixels(preprocess("scribble_xdog", image, 64, threshold_a=64))[:, :, 0].astype(bool).sum()


def test_parameters_are_checked_and_defaults_filled():
    params = check_params("canny")
    assert (params.resolution, params.threshold_a, params.threshold_b) == (512, 100.0, 200.0)
    assert check_params("threshold", 64, 50, 999).threshold_b is None  # threshold has no second parameter
    with pytest.raises(PreprocessorError, match=r"threshold_a: 300 is outside canny's Canny Low Threshold range 1..255") as err:
        check_params("canny", 512, 300, 200)
    assert err.value.field == "threshold_a"
    with pytest.raises(PreprocessorError, match="threshold_b: 0 is outside") as err:
        check_params("canny", 512, 100, 0)
    assert err.value.field == "threshold_b"
    with pytest.raises(PreprocessorError, match="resolution: 5000 is outside 1..4096") as err:
        check_params("canny", 5000)
    with pytest.raises(PreprocessorError, match=r"module: unknown preprocessor 'sobel'; choose one of: none, canny") as err:
        preprocess("sobel", render(STAR))
    assert err.value.field == "module"


def test_module_list_and_details_follow_the_extension():
    assert list_modules() == ["none", "canny", "invert", "threshold", "scribble", "scribble_xdog", "lineart", "depth",
                              "openpose", "hed"]
    aliases = list_modules(alias_names=True)
    assert {"invert (from white bg & black line)", "depth_midas", "softedge_hed", "lineart_realistic"} <= set(aliases)
    canny = module_defaults("canny")
    assert canny == {"model_free": False, "sliders": [
        {"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048},
        {"name": "Canny Low Threshold", "value": 100, "min": 1, "max": 255},
        {"name": "Canny High Threshold", "value": 200, "min": 1, "max": 255},
    ]}
    assert module_defaults("none")["sliders"] == []
    assert module_defaults("scribble_xdog")["sliders"][1] == {"name": "XDoG Threshold", "value": 32, "min": 1, "max": 64}
    assert set(modules_detail(alias_names=True)) == set(aliases)


def test_missing_annotator_names_the_file_to_place(tmp_path):
    folder = tmp_path / "models" / "ControlNet" / "annotators"
    with pytest.raises(RequestError) as err:
        preprocess("lineart", render(STAR), 64, annotators_dir=folder)
    message = str(err.value)
    assert "annotators/sk_model.pth" in message and "annotators/sk_model2.pth" in message
    assert "never downloads" in message
    with pytest.raises(RequestError, match=r"annotators/dpt_hybrid-midas-501f0c75.pt"):
        preprocess("depth_midas", render(STAR), 64, annotators_dir=folder)
    with pytest.raises(RequestError, match=r"annotators/ControlNetHED.pth"):
        preprocess("softedge_hed", render(STAR), 64, annotators_dir=folder)


def test_without_controlnet_aux_the_message_says_what_to_install(tmp_path):
    try:
        import controlnet_aux  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("controlnet-aux is installed here")
    module_files = {"openpose": ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")}
    for name in module_files["openpose"]:
        (tmp_path / name).write_bytes(b"not used")
    assert annotators.missing_files(MODULES["openpose"], tmp_path) == []
    with pytest.raises(RequestError, match=r"module openpose needs the controlnet-aux package "
                                           r"\(pip install controlnet-aux==0.0.10\), not installed"):
        preprocess("openpose", render(STAR), 64, annotators_dir=tmp_path)


def test_pixel_perfect_resolution_follows_the_extension():
    # A 512x768 (w x h) image onto a 1024x1024 output: cover (crop/just resize) 2x -> 1024, fit 1.33x -> 683.
    assert pixel_perfect_resolution((512, 768), 1024, 1024, resize_mode=1) == 1024
    assert pixel_perfect_resolution((512, 768), 1024, 1024, resize_mode=0) == 1024
    assert pixel_perfect_resolution((512, 768), 1024, 1024, resize_mode=2) == 683
    assert pixel_perfect_resolution((64, 64), 64, 64, resize_mode=1) == 64
    assert pixel_perfect_resolution((1000, 500), 640, 480, resize_mode=1) == 480
    assert pixel_perfect_resolution((1000, 500), 640, 480, resize_mode=2) == 320
