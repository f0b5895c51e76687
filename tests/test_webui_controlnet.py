"""The ControlNet units widget without a browser: units built from named fields, the messages for
bad units, the control image from the canvas, infotext restoring the units, the preview job, and a
txt2img run with a tiny ControlNet through the tab's own request building and the output panel."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from modules.schemas import ControlNetUnit, RequestError, Txt2ImgRequest
from webui import controlnet_units as cu
from webui import img2img, inpaint, runner, txt2img
from webui.controlnet_units import UNIT_FIELDS, build_unit, control_image, unit_key

MODEL = "tiny-cn"  # a diffusers folder: its title is its name
UNIT_VALUES = {
    "enabled": True, "module": "canny", "model": MODEL, "weight": 0.8, "resize_mode": "Resize and Fill",
    "low_vram": False, "processor_res": 64, "threshold_a": 50, "threshold_b": 150, "guidance_start": 0.1,
    "guidance_end": 0.9, "control_mode": "ControlNet is more important", "pixel_perfect": True,
}
TXT2IMG_VALUES = {"prompt": "a shape", "negative_prompt": "", "steps": 2, "width": 32, "height": 32,
                  "seed": 3, "sampler_name": "Euler", "cfg_scale": 5.0}


def scribble(size: int = 32) -> dict:
    """An ImageEditor value: a black canvas with a white stroke in its own layer (as the brush draws it)."""
    value = cu.blank_canvas(size, size)
    layer = np.zeros((size, size, 4), dtype=np.uint8)
    layer[8:12, 4:28] = (255, 255, 255, 255)
    layer_image = Image.fromarray(layer, "RGBA")
    composite = Image.alpha_composite(value["background"].convert("RGBA"), layer_image)
    return {"background": value["background"], "layers": [layer_image], "composite": composite}


@pytest.fixture
def controlnet_services(services, data_dir):
    from tests.tiny_controlnets import tiny_controlnet, write_controlnet_folder

    write_controlnet_folder(data_dir / "models" / "ControlNet", MODEL, tiny_controlnet(seed=0, unet_seed=0))
    return services


@pytest.fixture
def units_ui(controlnet_services):
    with gr.Blocks():
        return cu.controlnet_units_ui(controlnet_services, "t")


def named(unit_values: dict[int, dict]) -> dict:
    """Handler values for the widget: ``{cn{i}_{field}: value}``, in a shuffled order."""
    values = {unit_key(i, name): value for i, fields in unit_values.items() for name, value in fields.items()}
    keys = list(values)
    np.random.default_rng(0).shuffle(keys)
    return {key: values[key] for key in keys}


def test_unit_is_built_from_named_fields():
    unit = build_unit(0, UNIT_VALUES, Image.new("RGB", (8, 8), "white"), image_optional=False, model_titles=[MODEL])
    assert isinstance(unit, ControlNetUnit)
    assert (unit.module, unit.model, unit.weight, unit.processor_res) == ("canny", MODEL, 0.8, 64)
    assert (unit.threshold_a, unit.threshold_b, unit.guidance_start, unit.guidance_end) == (50, 150, 0.1, 0.9)
    assert (unit.resize_mode, unit.control_mode, unit.pixel_perfect) == (2, 2, True)
    assert unit.image.size == (8, 8)
    assert build_unit(0, {**UNIT_VALUES, "enabled": False}, None, image_optional=False) is None


@pytest.mark.parametrize("change, image, message", [
    ({"guidance_start": 0.8, "guidance_end": 0.2}, True, r"ControlNet unit 1: guidance_end: .*guidance_start"),
    ({}, False, r"ControlNet unit 1: image: no control image; draw on the canvas"),
    ({"model": "None"}, True, r"ControlNet unit 1: model: no ControlNet model chosen"),
    ({"model": "missing [0000]"}, True, r"ControlNet unit 1: model: 'missing \[0000\]' is not in models/ControlNet; "
                                        r"choose one of: tiny-cn"),
    ({"threshold_a": 300}, True, r"ControlNet unit 1: threshold_a: 300 is outside canny's"),
    ({"module": "nope"}, True, r"ControlNet unit 1: module: unknown preprocessor 'nope'"),
    ({"weight": 3}, True, r"ControlNet unit 1: weight"),
])
def test_bad_unit_raises_request_error_naming_unit_and_field(change, image, message):
    picture = Image.new("RGB", (8, 8), "white") if image else None
    with pytest.raises(RequestError, match=message):
        build_unit(1, {**UNIT_VALUES, **change}, picture, image_optional=False, model_titles=[MODEL])


def test_img2img_unit_may_leave_the_image_to_the_init_image():
    unit = build_unit(0, UNIT_VALUES, None, image_optional=True, model_titles=[MODEL])
    assert unit is not None and unit.image is None


def test_control_image_is_the_drawing_on_black_and_none_when_blank():
    assert control_image(None) is None
    assert control_image(cu.blank_canvas(32, 32)) is None  # nothing drawn: no control image
    image = np.asarray(control_image(scribble()))
    assert image.shape == (32, 32, 3)
    assert image[8:12, 4:28].min() == 255 and image[:8].max() == 0 and image[12:].max() == 0
    # a drawing without a background (transparent) is flattened on black, not on its RGB garbage
    layer = np.zeros((16, 16, 4), dtype=np.uint8)
    layer[..., :3] = 200
    layer[4:6, 4:12, 3] = 255
    flat = np.asarray(control_image({"background": None, "layers": [], "composite": Image.fromarray(layer, "RGBA")}))
    assert flat[4:6, 4:12].min() == 200 and flat[:4].max() == 0


def test_units_widget_builds_only_enabled_units_by_name(units_ui):
    values = named({0: {**UNIT_VALUES, "enabled": False, "image": scribble()},
                    1: {**UNIT_VALUES, "image": None},  # not enabled below: no image needed
                    2: {**UNIT_VALUES, "module": "none", "weight": 1.5, "image": scribble()}})
    values[unit_key(1, "enabled")] = None  # a never-rendered unit tab sends None: off
    units = units_ui.build({**values, "prompt": "ignored"})
    assert len(units) == 1
    assert (units[0].module, units[0].weight, units[0].model) == ("none", 1.5, MODEL)
    assert np.asarray(units[0].image)[8:12, 4:28].min() == 255


def test_units_widget_error_names_the_unit_shown(units_ui):
    values = named({2: {**UNIT_VALUES, "image": cu.blank_canvas(32, 32)}})
    with pytest.raises(RequestError, match="ControlNet unit 2: image"):
        units_ui.build(values)


def test_txt2img_request_carries_the_units():
    unit = build_unit(0, UNIT_VALUES, Image.new("RGB", (8, 8)), image_optional=True)
    request = txt2img.build_request(TXT2IMG_VALUES, [unit])
    assert isinstance(request, Txt2ImgRequest) and request.controlnet_units == [unit]
    assert txt2img.build_request(TXT2IMG_VALUES).controlnet_units == []


def test_img2img_and_inpaint_requests_carry_the_units():
    unit = build_unit(0, UNIT_VALUES, None, image_optional=True)
    init = Image.new("RGB", (32, 32), "gray")
    request = img2img.build_request(TXT2IMG_VALUES, init, [unit])
    assert request.controlnet_units == [unit] and request.controlnet_units[0].image is None
    editor = {"background": init, "layers": [Image.new("RGBA", (32, 32), (255, 255, 255, 255))], "composite": init}
    request = inpaint.build_request(TXT2IMG_VALUES, editor, None, inpaint.MASK_SOURCES[0], [unit])
    assert request.mask is not None and request.controlnet_units == [unit]


def test_slider_labels_and_ranges_follow_the_preprocessor():
    canny = cu.slider_updates("canny")
    assert canny["threshold_a"]["label"] == "Canny Low Threshold" and canny["threshold_a"]["value"] == 100
    assert canny["threshold_b"]["maximum"] == 255 and canny["threshold_b"]["visible"] is True
    none = cu.slider_updates("none")
    assert all(update["visible"] is False and update["value"] == -1 for update in none.values())
    assert cu.slider_updates("threshold", {"threshold_a": 90})["threshold_a"]["value"] == 90


INFOTEXT = ('a red square\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 3, Size: 32x32, '
            'ControlNet 0: "Module: canny, Model: tiny-cn, Weight: 0.7, Resize Mode: Just Resize, Low Vram: False, '
            'Processor Res: 256, Threshold A: 60.0, Threshold B: 120.0, Guidance Start: 0.2, Guidance End: 0.6, '
            'Pixel Perfect: True, Control Mode: My prompt is more important"')


def test_infotext_restores_the_unit_fields_and_disables_the_others(units_ui):
    updates = units_ui.infotext_updates(INFOTEXT)
    fields = units_ui.units[0].fields
    assert updates[fields["enabled"]] is True
    assert (updates[fields["module"]], updates[fields["model"]], updates[fields["weight"]]) == ("canny", MODEL, 0.7)
    assert updates[fields["resize_mode"]] == "Just Resize"
    assert updates[fields["control_mode"]] == "My prompt is more important"
    assert (updates[fields["guidance_start"]], updates[fields["guidance_end"]], updates[fields["pixel_perfect"]]) \
        == (0.2, 0.6, True)
    assert updates[fields["threshold_a"]]["value"] == 60 and updates[fields["threshold_a"]]["label"] == "Canny Low Threshold"
    assert updates[fields["processor_res"]]["value"] == 256
    assert updates[units_ui.units[1].fields["enabled"]] is False and updates[units_ui.units[2].fields["enabled"]] is False
    assert units_ui.units[0].image not in updates  # the image is not in the infotext
    assert units_ui.infotext_updates("just a prompt") == {}  # no parameters: the units stay as they are


def test_preview_runs_the_preprocessor_as_a_queue_job(controlnet_services):
    detected, message = cu.detect(controlnet_services, {"module": "canny", "processor_res": 32, "threshold_a": 100,
                                                        "threshold_b": 200}, scribble())
    assert message == ""
    edges = np.asarray(detected.convert("L"))
    assert detected.size == (32, 32) and set(np.unique(edges)) == {0, 255}
    assert edges[6:14, 2:30].max() == 255 and edges[20:].max() == 0  # edges around the stroke only
    none, message = cu.detect(controlnet_services, {"module": "canny"}, cu.blank_canvas(32, 32))
    assert none is None and "nothing to preview" in message
    none, message = cu.detect(controlnet_services, {"module": "canny", "threshold_a": 999}, scribble())
    assert none is None and "threshold_a" in message


def test_generate_with_a_unit_through_the_tab_records_it(controlnet_services):
    with gr.Blocks():
        tab = txt2img.create_ui(controlnet_services, prefix="cn", controlnet_first=True)
    values = {**TXT2IMG_VALUES, **named({0: {**UNIT_VALUES, "module": "none", "image": scribble(),
                                             "resize_mode": "Just Resize", "pixel_perfect": False}})}
    batch = txt2img.make_batch(tab.field_values(values), {}, controlnet_services, tab.units.build(values))
    updates = list(runner.stream_jobs(controlnet_services, tab.panel, lambda: batch, poll_seconds=0.05))
    final = updates[-1]
    assert tab.panel.error not in final, final.get(tab.panel.error)
    infotext = final[tab.panel.infotext]
    image = np.asarray(final[tab.panel.gallery][0])
    assert image.shape == (32, 32, 3) and image.std() > 5
    assert 'ControlNet 0: "Module: none, Model: tiny-cn' in infotext
    restored = tab.units.infotext_updates(infotext)
    assert restored[tab.units.units[0].fields["model"]] == MODEL


def test_model_list_is_rescanned_without_restart(controlnet_services, data_dir):
    from tests.tiny_controlnets import tiny_controlnet, write_controlnet_folder

    assert cu.model_choices(controlnet_services) == ["None", MODEL]
    write_controlnet_folder(data_dir / "models" / "ControlNet", "another-cn", tiny_controlnet(seed=1))
    assert cu.model_choices(controlnet_services) == ["None", "another-cn", MODEL]


def test_every_unit_field_is_a_controlnet_unit_field():
    assert set(UNIT_FIELDS) <= set(ControlNetUnit.model_fields)
    api_only = {"save_detected_map"}  # the extension's API-only field: the web UI shows the maps itself
    assert set(UNIT_FIELDS) | {"image"} | api_only == set(ControlNetUnit.model_fields)


def test_create_ui_has_the_controlnet_tab_and_accordions(controlnet_services):
    from webui.app import create_ui

    demo = create_ui(controlnet_services)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    for prefix in ("controlnet", "txt2img", "img2img", "inpaint"):
        assert f"{prefix}_cn0_image" in ids and f"{prefix}_cn2_preview" in ids
    assert {"tab_controlnet", "controlnet_generate", "txt2img_controlnet"} <= ids
