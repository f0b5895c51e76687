"""Extensions in the web UI: their tabs and settings built into the page, js/css in the head, the Extensions tab."""

from __future__ import annotations

import shutil

import pytest

from modules.a1111_compat.loader import load_extensions
from modules.config import SettingsError
from tests.test_extensions import FIXTURES


@pytest.fixture
def loaded(services, data_dir):
    for name in ("rewriter", "broken"):
        shutil.copytree(FIXTURES / name, data_dir / "extensions" / name)
    extensions = load_extensions(services)
    yield services
    extensions.unload()


def test_ui_builder_adds_extension_tabs_settings_and_the_extensions_tab(loaded):
    from webui.app import create_ui

    demo = create_ui(loaded)
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    for elem_id in ("tab_rewriter_tab", "rewriter_markdown", "setting_rewriter_word", "settings_section_rewriter",
                    "tab_extensions", "extensions_table", "extensions_enabled", "extensions_install", "settings_submit"):
        assert elem_id in ids, elem_id


def test_a_tab_that_fails_to_build_shows_its_error_and_the_page_builds(loaded):
    from webui.app import create_ui

    def bad_tab(event):
        event.add_tab("Bad", lambda: 1 / 0, elem_id="bad")

    loaded.hooks.add("ui_built", bad_tab, owner="bad-ext")
    demo = create_ui(loaded)
    assert "tab_bad" in {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert [e.owner for e in loaded.hooks.errors] == ["Bad"]


def test_page_head_carries_extension_javascript_and_css(loaded):
    from webui.extensions import page_head

    head = page_head(loaded)
    assert "window.rewriterLoaded = true;" in head and "#rewriter_markdown { color: rgb(1, 2, 3); }" in head
    assert "broken" not in head


def test_extension_options_are_checked_then_saved(loaded):
    from modules import shared
    from modules.a1111_compat.option_values import apply_options

    assert apply_options(loaded, {"rewriter_word": "owl"}) == ["rewriter_word"]
    assert shared.opts.rewriter_word == "owl" and '"rewriter_word": "owl"' in loaded.settings.config_file.read_text()
    with pytest.raises(SettingsError, match="rewriter_word: must be text"):
        apply_options(loaded, {"rewriter_word": 3})
    with pytest.raises(SettingsError, match="nope: not an option"):
        apply_options(loaded, {"nope": 1})


def test_extensions_tab_lists_errors_and_applies_enable_disable(loaded):
    from webui import extensions as tab

    rows = {r[0]: r for r in tab.table_rows(loaded)}
    assert rows["broken"][2].startswith("error: ModuleNotFoundError") and rows["rewriter"][2] == "loaded"
    status, rows, enabled, errors = tab._guarded(loaded, lambda: tab.apply_enabled(loaded, ["broken"]))
    assert "1 of 2 extension(s) enabled" in status
    assert {r[0]: r[2] for r in rows}["rewriter"] == "disabled"
    assert loaded.extensions.find_script("Prompt rewriter", False) is None
    loaded.extensions.install_allowed = False
    status, *_ = tab._guarded(loaded, lambda: tab.apply_enabled(loaded, ["rewriter"]))
    assert "not allowed" in status and loaded.settings.disabled_extensions == ["rewriter"]


def test_generation_tabs_carry_the_scripts_uis_into_the_request(loaded):
    import gradio as gr

    from modules.batches import Batch
    from modules.schemas import Txt2ImgRequest
    from webui import extension_scripts

    with gr.Blocks():
        ui = extension_scripts.create_ui(loaded, False, "t")
    assert set(ui.alwayson) == {"Prompt rewriter"} and "Flip images" in ui.selectable
    [enabled, suffix] = ui.alwayson["Prompt rewriter"]
    values = {enabled: True, suffix: None, ui.choice: "Flip images"}  # None: a closed accordion's box
    batch = extension_scripts.with_scripts(Batch([("txt2img", Txt2ImgRequest(steps=1))]), ui, values)
    request = batch.requests[0][1]
    assert request.extension_alwayson == {"Prompt rewriter": [True, " by the rewriter"]}
    assert request.extension_script.title == "Flip images" and request.extension_script.args == [True]
    result = loaded.submit("txt2img", request.model_copy(update={"width": 32, "height": 32, "prompt": "x"})).wait(120)
    assert result.prompts == ["x by the rewriter 0"]


def test_tabs_show_the_script_dropdown(loaded):
    from webui.app import create_ui

    demo = create_ui(loaded)
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert {"txt2img_script_list", "img2img_script_list", "txt2img_alwayson_0", "controlnet_script_list"} <= ids
