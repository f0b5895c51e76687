"""Defaults that work for a new user (issue #24, item 6), without a browser: the ControlNet model
preselected when one is installed, what the bundled model knows in the prompt placeholder and the
examples, the size warning, and outpaint keeping its own defaults when parameters are sent to it."""

from __future__ import annotations

import gradio as gr

from bundled import shapes
from webui import controlnet_units as cu
from webui import hints, outpaint
from webui.widgets import LABEL_READ_PARAMS


def test_the_one_installed_controlnet_is_preselected(services, data_dir):
    from tests.tiny_controlnets import tiny_controlnet, write_controlnet_folder

    assert cu.default_model(cu.model_choices(services)) == "None"  # nothing installed
    write_controlnet_folder(data_dir / "models" / "ControlNet", "only-cn", tiny_controlnet(seed=0, unet_seed=0))
    with gr.Blocks():
        units = cu.controlnet_units_ui(services, "t")
    assert all(unit.fields["model"].value == "only-cn" for unit in units.units)
    write_controlnet_folder(data_dir / "models" / "ControlNet", "second-cn", tiny_controlnet(seed=1, unet_seed=0))
    choices = cu.model_choices(services)
    assert cu.default_model(choices) == "None"  # two: the user chooses
    assert cu.default_model(choices, "second-cn") == "second-cn"  # a choice made is kept
    assert cu.default_model(["None", "only-cn"], "gone-cn") == "only-cn"


def test_the_placeholder_tells_what_the_bundled_model_knows_and_is_true():
    text = hints.prompt_placeholder("easel-shapes", LABEL_READ_PARAMS)
    assert "a large red circle on the left, blue background" in text and "Ctrl+Enter" in text
    assert len(text) < 80  # one line: the box keeps its height when typing starts
    own = hints.prompt_placeholder("my-model", LABEL_READ_PARAMS)
    assert "circle" not in own and "Ctrl+Enter" in own
    hint = hints.bundled_hint(64)
    assert "64x64" in hint and all(word in hint for word in (*shapes.SHAPES, *shapes.PALETTE))
    # every word the hint names is one the bundled model was trained on
    assert set(hints.BUNDLED_SHAPES) == set(shapes.SHAPES)
    assert set(hints.BUNDLED_COLOURS) == set(shapes.PALETTE)
    assert set(hints.BUNDLED_SIZES) == set(shapes.SIZES)
    assert set(hints.BUNDLED_PLACES) == {phrases[0] for phrases in shapes.POSITION_PHRASES.values()}
    for example in hints.BUNDLED_EXAMPLES:
        words = example.replace(",", "").split()
        assert words[2] in shapes.PALETTE and words[3] in shapes.SHAPES and words[1] in shapes.SIZES


def test_size_warning_only_far_from_the_native_size():
    assert hints.size_warning(64, 64, 64) == ""
    assert hints.size_warning(128, 96, 64) == ""  # up to twice: fine
    line = hints.size_warning(512, 512, 64)
    assert "512x512" in line and "native 64x64" in line and "\n" not in line
    assert hints.size_warning(64, 16, 64)  # less than half
    assert hints.size_warning(None, 64, 64) == ""


def test_ui_shows_the_examples_and_the_size_line(bundled_services):
    from webui.app import create_ui

    demo = create_ui(bundled_services)
    blocks = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert "a large red circle on the left" in blocks["txt2img_prompt"].placeholder
    assert "circle" not in blocks["img2img_prompt"].placeholder  # the example is txt2img's
    assert "64x64" in blocks["txt2img_examples"].label
    assert {"txt2img_examples", "txt2img_size_warning", "img2img_size_warning", "inpaint_size_warning"} <= set(blocks)
    assert blocks["txt2img_width"].value == 64  # the native size: no warning at first
    handlers = [dep for dep in demo.fns.values() if any(blocks["txt2img_size_warning"]._id == getattr(o, "_id", o)
                                                        for o in dep.outputs)]
    assert handlers and "native 64x64" in handlers[0].fn(512, 512)


def test_outpaint_keeps_its_own_defaults_when_parameters_are_sent(services):
    with gr.Blocks():
        tab = outpaint.create_ui(services)
    text = ("a cat\nSteps: 7, Sampler: Euler, CFG scale: 4, Seed: 5, Size: 512x512, Denoising strength: 0.3, "
            "Mask blur: 2")
    sent = tab.sent_updates(text)
    assert sent[tab.fields["steps"]] == 7 and sent[tab.fields["prompt"]] == "a cat"
    for name in ("denoising_strength", "mask_blur", "width", "height"):
        assert tab.fields[name] not in sent, name
    pasted = tab.infotext_updates(text)  # Read params on outpaint's own infotext restores everything
    assert pasted[tab.fields["denoising_strength"]] == 0.3
