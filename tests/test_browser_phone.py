"""The web UI on a phone (390x844) and small results drawn pixel-exact (issue #24, items 8 and 1),
in a real browser. Same set-up as ``tests/test_browser.py``; every wait is for a state of the page."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.test_browser import (  # noqa: F401 - browser and context are fixtures
    SIZE,
    TIMEOUT_MS,
    browser,
    context,
    open_page,
    server,
    set_slider,
    ui_data_dir,
    upload_into_editor,
)

pytestmark = pytest.mark.browser
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def phone(browser, server):  # noqa: F811
    ctx = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server[0].local_url)
    page.wait_for_selector("#txt2img_prompt textarea")
    yield page
    ctx.close()


def in_view(page, selector: str) -> bool:
    return page.evaluate("sel => { const r = document.querySelector(sel).getBoundingClientRect();"
                         " return r.top >= -1 && r.top < window.innerHeight; }", selector)


def test_phone_generate_scrolls_to_the_result_and_the_checkpoint_is_readable(phone, tmp_path):
    page = phone
    box = page.locator("#sd_model_checkpoint input")
    assert box.input_value().startswith(("easel-shapes", "tiny-a"))
    assert box.evaluate("el => el.scrollWidth <= el.clientWidth"), "the checkpoint name is cut off"
    page.locator("#txt2img_prompt textarea").fill("a large red circle on the left, blue background")
    set_slider(page, "txt2img_steps", 2)
    page.evaluate("window.scrollTo(0, 0)")
    assert not in_view(page, "#txt2img_progress")  # below the settings, out of sight
    page.locator("#txt2img_generate").click()
    page.wait_for_function("() => window.scrollY > 300")
    page.wait_for_selector("#txt2img_gallery img")
    page.wait_for_function("""() => { const r = document.querySelector('#txt2img_progress').getBoundingClientRect();
                                      return r.top >= -1 && r.top < window.innerHeight / 2; }""")
    page.screenshot(path=str(tmp_path / "phone-result.png"))
    assert in_view(page, "#txt2img_gallery")


def test_phone_inpaint_tools_leave_the_picture_free(phone, tmp_path):
    page = phone
    path = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(path)
    page.locator("#tab_inpaint-button").click()
    upload_into_editor(page, "inpaint_editor", path)
    editor = page.locator("#inpaint_editor")
    frame = editor.bounding_box()
    shot = np.asarray(Image.open(io.BytesIO(editor.screenshot())).convert("RGB"), dtype=int)
    red = (shot[..., 0] > 200) & (shot[..., 1] < 60) & (shot[..., 2] < 60)
    columns = np.flatnonzero(red.any(axis=0))
    assert columns.size, "the picture is not shown"
    tools = page.locator("#inpaint_editor .toolbar-wrap").bounding_box()
    scale = shot.shape[1] / frame["width"]
    picture_left = frame["x"] + columns[0] / scale
    assert tools["x"] + tools["width"] <= picture_left + 1, (tools, picture_left)
    page.screenshot(path=str(tmp_path / "phone-inpaint.png"))


def test_a_small_result_is_drawn_pixel_exact(page, tmp_path):  # noqa: F811 - page from test_browser's fixtures
    page.locator("#txt2img_prompt textarea").fill("a small star")
    set_slider(page, "txt2img_steps", 2)
    set_slider(page, "txt2img_width", SIZE)
    set_slider(page, "txt2img_height", SIZE)
    page.locator("#txt2img_generate").click()
    img = page.locator("#txt2img_gallery img").first
    img.wait_for()
    page.wait_for_function("""() => { const img = document.querySelector('#txt2img_gallery img');
        return img && img.complete && img.naturalWidth > 0; }""")
    natural, shown = img.evaluate("el => [el.naturalWidth, el.getBoundingClientRect().width]")
    assert natural == SIZE and shown > natural  # shown above its own size
    page.wait_for_function("getComputedStyle(document.querySelector('#txt2img_gallery img')).imageRendering"
                           " === 'pixelated'")
    page.screenshot(path=str(tmp_path / "pixelated.png"))


@pytest.fixture
def page(context, server):  # noqa: F811
    return open_page(context, server[0].local_url)
