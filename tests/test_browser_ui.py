"""The web UI as a new user meets it (issue #24), in a real browser: settings that stick across a
page reload, keyboard shortcuts, the prompt token counter, brush size, one-line errors.

Same set-up as ``tests/test_browser.py`` (Debian's Chromium driven by Playwright, skipped with the
reason when either is missing). Every wait is for a state of the page, never a fixed time.
"""

from __future__ import annotations

import json

import pytest

from tests.test_browser import (  # noqa: F401 - browser and context are fixtures
    SIZE,
    TIMEOUT_MS,
    browser,
    context,
    make_data_dir,
    open_page,
    running_server,
    set_slider,
)

pytestmark = pytest.mark.browser


def wait_value(page, selector: str, value: str) -> None:
    """Wait until the input or textarea at ``selector`` holds ``value``."""
    page.wait_for_function("([sel, want]) => document.querySelector(sel)?.value === want", arg=[selector, value])


def apply_settings(page) -> str:
    """Press Apply and return the summary line shown (waits for one that differs from the last)."""
    before = page.locator("#settings_result").inner_text()
    page.locator("#settings_submit").click()
    page.wait_for_function("before => { const ok = document.querySelector('#settings_result .easel-ok');"
                           " return ok && ok.innerText !== before; }", arg=before)
    return page.locator("#settings_result").inner_text()


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_settings_stick_across_a_reload_and_apply_writes_only_changes(browser, tmp_path, tiny_models_dir):  # noqa: F811
    data_dir = make_data_dir(tmp_path / "data", tiny_models_dir)
    with running_server(data_dir) as (running, services):
        ctx = browser.new_context(viewport={"width": 1400, "height": 1800})
        page, stale = open_page(ctx, running.local_url), open_page(ctx, running.local_url)
        page.locator("#tab_settings-button").click()
        page.locator("#settings_default_steps input").fill("13")
        page.locator("#settings_default_width input").fill("48")
        summary = apply_settings(page)
        assert "Saved 2 changed setting(s)" in summary and "default_steps" in summary, summary
        # Reload UI: the page comes back with the saved values, in the Settings tab and as the tabs' defaults
        with page.expect_navigation():
            page.locator("#settings_reload_ui").click()
        page.wait_for_selector("#txt2img_prompt textarea")
        wait_value(page, "#txt2img_steps input[type=number]", "13")
        wait_value(page, "#txt2img_width input[type=number]", "48")
        assert page.locator("#txt2img_height input[type=number]").input_value() == str(SIZE)  # 0: native size
        page.locator("#tab_settings-button").click()
        wait_value(page, "#settings_default_steps input", "13")
        assert page.locator("#settings_default_sampler input").input_value() == "DPM++ 2M"
        # a page opened before the change (it shows 20 steps) changes the sampler: only the sampler is written
        stale.locator("#tab_settings-button").click()
        assert stale.locator("#settings_default_steps input").input_value() == "20"
        choose(stale, "settings_default_sampler", "Euler")
        assert "Saved 1 changed setting(s)" in apply_settings(stale)
        saved = json.loads((data_dir / "config.json").read_text())
        assert saved["default_steps"] == 13 and saved["default_sampler"] == "Euler" and saved["default_width"] == 48
        # a second Apply on the reloaded page writes its one change and keeps the stale page's sampler
        page.locator("#settings_samples_filename_pattern textarea").fill("[seed]-[number]")
        assert "Saved 1 changed setting(s)" in apply_settings(page)
        wait_value(page, "#settings_default_sampler input", "Euler")  # after Apply the form shows what is saved
        assert "Nothing to save" in apply_settings(page)  # pressed again: nothing changed
        saved = json.loads((data_dir / "config.json").read_text())
        assert saved["default_sampler"] == "Euler" and saved["samples_filename_pattern"] == "[seed]-[number]"
        assert services.settings.default_sampler == "Euler" and services.settings.default_steps == 13
        page.screenshot(path=str(tmp_path / "settings-after-reload.png"))
        ctx.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models_dir):
    data_dir = make_data_dir(tmp_path_factory.mktemp("webui-ui-data"), tiny_models_dir)
    with running_server(data_dir) as running:
        yield running


@pytest.fixture
def page(context, server):  # noqa: F811
    return open_page(context, server[0].local_url)


def test_weight_shortcut_ctrl_enter_and_read_params_restore(page, tmp_path):
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a red square")
    wait_value(page, "#txt2img_prompt textarea", "a red square")
    prompt.evaluate("area => { area.focus(); area.setSelectionRange(2, 5); }")  # select "red"
    prompt.press("Control+ArrowUp")
    assert prompt.input_value() == "a (red:1.1) square"
    prompt.press("Control+ArrowUp")
    assert prompt.input_value() == "a (red:1.2) square"
    prompt.press("Control+ArrowDown")
    assert prompt.input_value() == "a (red:1.1) square"
    set_slider(page, "txt2img_steps", 2)
    set_slider(page, "txt2img_width", SIZE)
    set_slider(page, "txt2img_height", SIZE)
    page.locator("#txt2img_seed input").fill("31")
    assert "Ctrl+Enter" in (page.locator("#txt2img_generate").get_attribute("title") or "")
    prompt.press("Control+Enter")  # generates, as the Generate button does
    page.wait_for_selector("#txt2img_gallery img")
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.startsWith('a (red:1.1) square')")
    assert "Seed: 31" in page.locator("#txt2img_infotext textarea").input_value()
    assert prompt.input_value() == "a (red:1.1) square"  # Ctrl+Enter added no new line
    page.screenshot(path=str(tmp_path / "ctrl-enter.png"))
    # Read params with an empty prompt restores the last generation
    prompt.fill("")
    set_slider(page, "txt2img_steps", 9)
    page.locator("#txt2img_read_params").click()
    wait_value(page, "#txt2img_prompt textarea", "a (red:1.1) square")
    wait_value(page, "#txt2img_steps input[type=number]", "2")
    assert page.locator("#txt2img_seed input").input_value() == "31"


def test_token_counter_counts_with_the_tokenizer(page):
    from webui.tokens import count_tokens

    counter = page.locator("#txt2img_token_counter")
    assert counter.inner_text() == "0/75"
    page.locator("#txt2img_prompt textarea").fill("a red square <lora:anything:0.5>")
    page.wait_for_function("document.querySelector('#txt2img_token_counter').innerText === '3/75'")
    long_prompt = "word, " * 50  # 100 tokens: two chunks
    assert count_tokens(long_prompt) == (100, 2)
    page.locator("#txt2img_prompt textarea").fill(long_prompt)
    page.wait_for_function("document.querySelector('#txt2img_token_counter').innerText === '100/150'")
    page.locator("#txt2img_neg_prompt textarea").fill("blurry")
    page.wait_for_function("document.querySelector('#txt2img_neg_token_counter').innerText === '1/75'")


def test_escape_interrupts_the_running_job(page, server):
    page.locator("#txt2img_prompt textarea").fill("a long run")
    set_slider(page, "txt2img_steps", 150)
    set_slider(page, "txt2img_width", SIZE)
    set_slider(page, "txt2img_height", SIZE)
    set_slider(page, "txt2img_batch_count", 20)
    page.locator("#txt2img_generate").click()
    page.wait_for_selector("#txt2img_interrupt:visible")
    page.wait_for_selector("#txt2img_progress .easel-progress-text")
    page.keyboard.press("Escape")
    page.wait_for_selector("#txt2img_generate:visible")
    assert page.locator("#txt2img_error textarea").input_value() == "Interrupted."
    assert server[1].queue.current() is None


def test_inpaint_brush_is_sized_to_the_picture_and_clear_keeps_it(page, server, tmp_path):
    import io
    import time

    import numpy as np
    from PIL import Image

    from tests.test_browser import draw_stroke, upload_into_editor

    services = server[1]
    path = tmp_path / "dark.png"
    checker = (np.indices((64, 64)).sum(axis=0) // 4 % 2 * 100).astype(np.uint8)  # 0 and 100: dark, not flat
    Image.fromarray(np.stack([checker] * 3, axis=-1)).save(path)
    page.locator("#tab_inpaint-button").click()
    upload_into_editor(page, "inpaint_editor", path)
    canvas = page.locator("#inpaint_editor .pixi-target canvas")
    before = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"), dtype=int)
    draw_stroke(page, "inpaint_editor", [(0.35, 0.5), (0.5, 0.5), (0.65, 0.5)])
    deadline = time.monotonic() + 30  # software WebGL draws the stroke a while after the mouse is up
    while True:
        after = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"), dtype=int)
        painted = after[after - before > 30]
        if painted.size or time.monotonic() > deadline:
            break
        page.wait_for_timeout(250)
    page.screenshot(path=str(tmp_path / "inpaint-stroke.png"))
    assert painted.size, "the stroke did not show on the canvas"
    assert np.median(painted) < 220, "the mask is drawn opaque white: the picture under it cannot be seen"
    # the mask the server receives: a stroke about 5% of 64 px wide (3 px), not Gradio's 25 px
    captured = []
    submit_all = services.submit_all
    services.submit_all = lambda requests: captured.extend(requests) or submit_all(requests)
    try:
        page.locator("#inpaint_prompt textarea").fill("x")
        set_slider(page, "inpaint_steps", 1)
        page.locator("#inpaint_generate").click()
        page.wait_for_selector("#inpaint_gallery img")
    finally:
        services.submit_all = submit_all
    mask = np.asarray(captured[0][1].mask.convert("L")) > 127
    rows = mask.any(axis=1).sum()
    columns = mask.any(axis=0).sum()
    assert columns >= 20, f"the stroke is {columns} px long"
    assert 1 <= rows <= 6, f"a default stroke is {rows} px wide on a 64 px picture"  # 5%: about 3 px
    page.screenshot(path=str(tmp_path / "inpaint-brush.png"))
    # Clear canvas takes the strokes away and keeps the picture: Generate then asks for a mask, not an image
    page.locator("#inpaint_editor button[aria-label='Clear canvas']").click()
    page.locator("#inpaint_generate").click()
    page.wait_for_function("document.querySelector('#inpaint_error textarea')?.value.includes('nothing is painted')")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shown = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"), dtype=int)
        if shown.std() > 20 and not (shown - before > 30).any():
            break
        page.wait_for_timeout(250)
    assert shown.std() > 20 and not (shown - before > 30).any(), "the picture is gone or the stroke stayed"


def test_a_non_image_upload_is_one_line(page, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("hello, I am text")
    for tab, elem_id in (("img2img", "img2img_image"), ("pnginfo", "pnginfo_image")):
        page.locator(f"#tab_{tab}-button").click()
        page.locator(f"#{elem_id} input[type=file]").set_input_files(str(fake))
        toast = page.locator(".toast-body", has_text="not an image: fake.png").first
        toast.wait_for()
        text = toast.inner_text()
        assert "preprocess" not in text and "/tmp/" not in text and len(text.splitlines()) <= 3, text
        page.wait_for_function("id => !document.querySelector(`#${id} img`)", arg=elem_id)  # taken out again
        for close in page.locator(".toast-body button, .toast-close").all():
            if close.is_visible():
                close.click()
    page.screenshot(path=str(tmp_path / "non-image.png"))


def test_styles_editor_creates_edits_applies_and_deletes(page, server, context):  # noqa: F811
    from modules.styles import load_styles

    path = server[1].settings.data_dir / "styles.csv"
    page.locator("#txt2img_styles_edit").get_by_text("Edit styles").click()
    name = page.locator("#txt2img_style_name input")
    name.fill("bright")
    name.press("Enter")
    page.locator("#txt2img_style_prompt textarea").fill("{prompt}, bright colours")
    page.locator("#txt2img_style_neg_prompt textarea").fill("dull")
    page.locator("#txt2img_style_save").click()
    page.wait_for_selector("#txt2img_style_status:has-text('Saved style bright')")
    assert load_styles(path)["bright"].prompt == "{prompt}, bright colours"
    other = open_page(context, server[0].local_url)  # a page opened now lists it in every tab
    other.locator("#tab_img2img-button").click()
    other.locator("#img2img_styles input").click()
    other.get_by_role("option", name="bright", exact=True).wait_for()
    other.close()
    # edit it: the same name saves over it
    page.locator("#txt2img_style_prompt textarea").fill("{prompt}, vivid colours")
    page.locator("#txt2img_style_save").click()
    for _ in range(240):
        if load_styles(path)["bright"].prompt == "{prompt}, vivid colours":
            break
        page.wait_for_timeout(250)
    assert load_styles(path)["bright"].prompt == "{prompt}, vivid colours" and len(load_styles(path)) == 1
    # apply: choose it in the Styles dropdown, then write it into the prompt boxes
    page.locator("#txt2img_prompt textarea").fill("a cat")
    page.locator("#txt2img_styles input").click()
    page.get_by_role("option", name="bright", exact=True).click()
    page.locator("#txt2img_style_apply").click()
    wait_value(page, "#txt2img_prompt textarea", "a cat, vivid colours")
    assert page.locator("#txt2img_neg_prompt textarea").input_value() == "dull"
    # delete
    page.locator("#txt2img_style_delete").click()
    page.wait_for_selector("#txt2img_style_status:has-text('Deleted style bright')")
    assert load_styles(path) == {}
