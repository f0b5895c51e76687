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
