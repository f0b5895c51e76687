"""The web UI in a real browser: Debian's Chromium driven by Playwright, against the app started
here on a free port with the tiny checkpoints.

Needs ``pip install playwright==1.65.2`` and ``apt-get install -y chromium`` (never
``playwright install``); without them every test here is skipped with the reason. Screenshots of
each flow are kept in ``$EASEL_ARTIFACTS`` (default: the test's tmp folder).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SIZE = 32
TIMEOUT_MS = 60_000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright==1.65.2")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (never 'playwright install')",
                allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ui_data_dir(tmp_path_factory, tiny_models_dir) -> Path:
    root = tmp_path_factory.mktemp("webui-data")
    shutil.copytree(tiny_models_dir, root / "models" / "Stable-diffusion")
    return root


@pytest.fixture(scope="module")
def server(ui_data_dir):
    from modules.config import load_settings
    from modules.services import build_services
    from webui.server import start

    services = build_services(load_settings(ui_data_dir, {"show_progress_every_n_steps": 1,
                                                          "sd_model_checkpoint": "tiny-a"}))
    running = start(services, port=free_port(), quiet=True)
    yield running, services
    running.close()
    services.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server[0].local_url)
    pg.wait_for_selector("#txt2img_prompt textarea")
    yield pg
    context.close()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("EASEL_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def set_slider(page, elem_id: str, value: int | float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def gallery_image(page, elem_id: str) -> Image.Image:
    """The first image shown in a gallery, fetched from the server as the browser sees it."""
    img = page.locator(f"#{elem_id} img").first
    img.wait_for(state="visible")
    src = img.get_attribute("src")
    data = page.request.get(src).body()
    return Image.open(io.BytesIO(data)).convert("RGB")


def wait_idle(page, elem_id: str) -> None:
    page.wait_for_selector(f"#{elem_id}:visible")
    page.wait_for_timeout(300)


def generate_txt2img(page, prompt: str, seed: int = 1234) -> None:
    page.locator("#txt2img_prompt textarea").fill(prompt)
    set_slider(page, "txt2img_steps", 2)
    set_slider(page, "txt2img_width", SIZE)
    set_slider(page, "txt2img_height", SIZE)
    page.locator("#txt2img_seed input").fill(str(seed))
    page.locator("#txt2img_generate").click()
    page.wait_for_selector("#txt2img_gallery img")
    wait_idle(page, "txt2img_generate")


def test_txt2img_generate_shows_image_and_infotext_and_saves_png(page, server, ui_data_dir, artifacts):
    generate_txt2img(page, "a red square", seed=1234)
    infotext = page.locator("#txt2img_infotext textarea").input_value()
    assert infotext.startswith("a red square")
    assert "Steps: 2" in infotext and "Seed: 1234" in infotext and f"Size: {SIZE}x{SIZE}" in infotext
    shown = gallery_image(page, "txt2img_gallery")
    assert shown.size == (SIZE, SIZE)
    saved = sorted((ui_data_dir / "outputs" / "txt2img-images").rglob("*-1234.png"))
    assert saved, "the generated PNG was not written to outputs/txt2img-images"
    from modules.images import read_infotext

    assert read_infotext(saved[-1]) == infotext
    on_disk = np.asarray(Image.open(saved[-1]).convert("RGB"), dtype=int)
    assert np.abs(on_disk - np.asarray(shown, dtype=int)).max() <= 1  # PNG in the gallery, not lossy webp
    page.screenshot(path=str(artifacts / "txt2img.png"))


def test_bad_size_shows_request_error(page, artifacts):
    page.locator("#txt2img_prompt textarea").fill("x")
    set_slider(page, "txt2img_steps", 2)
    page.locator("#txt2img_batch_count input[type=number]").fill("500")  # above the request's limit of 100
    page.locator("#txt2img_batch_count input[type=number]").press("Enter")
    page.locator("#txt2img_generate").click()
    error = page.locator("#txt2img_error textarea")
    error.wait_for(state="visible")
    assert "n_iter" in error.input_value()
    page.screenshot(path=str(artifacts / "txt2img-error.png"))


def test_read_parameters_button_fills_fields(page):
    text = ("a castle\nNegative prompt: blurry\n"
            "Steps: 7, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4.5, Seed: 99, Size: 64x48")
    page.locator("#txt2img_prompt textarea").fill(text)
    page.locator("#txt2img_read_params").click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value === 'a castle'")
    assert page.locator("#txt2img_neg_prompt textarea").input_value() == "blurry"
    assert page.locator("#txt2img_steps input[type=number]").input_value() == "7"
    assert page.locator("#txt2img_cfg_scale input[type=number]").input_value() == "4.5"
    assert page.locator("#txt2img_width input[type=number]").input_value() == "64"
    assert page.locator("#txt2img_height input[type=number]").input_value() == "48"
    assert page.locator("#txt2img_seed input").input_value() == "99"
    assert page.locator("#txt2img_sampling input").input_value() == "DPM++ 2M"
    assert page.locator("#txt2img_scheduler input").input_value() == "Karras"


def test_pnginfo_send_to_txt2img_fills_fields(page, tmp_path, artifacts):
    from modules.images import save_image

    text = "a lighthouse\nNegative prompt: fog\nSteps: 9, Sampler: Euler, CFG scale: 6, Seed: 4242, Size: 40x56"
    path = save_image(Image.new("RGB", (40, 56), "teal"), tmp_path, 4242, text, use_date_subdir=False)
    page.locator("#tab_pnginfo-button").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
    page.wait_for_function("document.querySelector('#pnginfo_parameters textarea').value.includes('lighthouse')")
    assert page.locator("#pnginfo_parameters textarea").input_value() == text
    page.screenshot(path=str(artifacts / "pnginfo.png"))
    page.locator("#pnginfo_send_to_txt2img").click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value === 'a lighthouse'")
    assert page.locator("#txt2img_neg_prompt textarea").input_value() == "fog"
    assert page.locator("#txt2img_steps input[type=number]").input_value() == "9"
    assert page.locator("#txt2img_seed input").input_value() == "4242"
    assert page.locator("#txt2img_width input[type=number]").input_value() == "40"
    assert page.locator("#txt2img_height input[type=number]").input_value() == "56"
    assert page.locator("#txt2img_sampling input").input_value() == "Euler"


def test_settings_bad_value_shows_error_and_is_not_saved(page, server, ui_data_dir, artifacts):
    services = server[1]
    before = services.settings
    page.locator("#tab_settings-button").click()
    pattern = page.locator("#settings_samples_filename_pattern textarea")
    pattern.fill("[number]-[nonsense]")
    page.locator("#settings_submit").click()
    error = page.locator("#settings_error textarea")
    error.wait_for(state="visible")
    assert "[nonsense]" in error.input_value()
    assert services.settings == before
    assert not (ui_data_dir / "config.json").exists() or "[nonsense]" not in (ui_data_dir / "config.json").read_text()
    page.screenshot(path=str(artifacts / "settings-error.png"))
    pattern.fill("[seed]-[number]")
    page.locator("#settings_submit").click()
    page.wait_for_selector("#settings_result .easel-ok")
    assert services.settings.samples_filename_pattern == "[seed]-[number]"
    assert '"[seed]-[number]"' in (ui_data_dir / "config.json").read_text()
    services.update_settings(before)  # the other tests expect the default file names


def draw_stroke(page, editor_id: str, points: list[tuple[float, float]]) -> None:
    """Press the brush and drag through ``points`` given as fractions of the canvas size."""
    page.locator(f"#{editor_id} button[aria-label='Brush']").click()
    page.wait_for_timeout(500)
    canvas = page.locator(f"#{editor_id} .pixi-target canvas")
    box = canvas.bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()
    page.mouse.move(5, 5)


def test_inpaint_brush_stroke_changes_only_the_stroked_region(page, tmp_path, artifacts):
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path = tmp_path / "source.png"
    source.save(path)
    page.locator("#tab_inpaint-button").click()
    page.locator("#inpaint_editor input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#inpaint_editor .pixi-target canvas")
    page.wait_for_timeout(1000)
    draw_stroke(page, "inpaint_editor", [(0.35, 0.3), (0.5, 0.3), (0.65, 0.3)])
    page.screenshot(path=str(artifacts / "inpaint-stroke.png"))
    page.locator("#inpaint_prompt textarea").fill("a blue stripe")
    set_slider(page, "inpaint_steps", 2)
    set_slider(page, "inpaint_width", 64)
    set_slider(page, "inpaint_height", 64)
    set_slider(page, "inpaint_mask_blur", 0)
    page.locator("#inpaint_generate").click()
    page.wait_for_selector("#inpaint_gallery img, #inpaint_error:visible")
    error = page.locator("#inpaint_error textarea")
    assert not error.is_visible() or not error.input_value(), error.input_value()
    result = np.asarray(gallery_image(page, "inpaint_gallery"), dtype=int)
    original = np.asarray(source, dtype=int)
    diff = np.abs(result - original).max(axis=2)
    assert diff[56:, :].max() <= 2, "pixels far below the stroke changed"
    assert diff[10:22, 20:44].mean() > 10, "the stroked region did not change"
    page.screenshot(path=str(artifacts / "inpaint-result.png"))


def test_interrupt_mid_run_restores_generate(page, server, artifacts):
    services = server[1]
    page.locator("#txt2img_prompt textarea").fill("a long run")
    set_slider(page, "txt2img_steps", 150)
    set_slider(page, "txt2img_width", SIZE)
    set_slider(page, "txt2img_height", SIZE)
    set_slider(page, "txt2img_batch_count", 50)
    page.locator("#txt2img_generate").click()
    page.wait_for_selector("#txt2img_interrupt:visible")
    assert not page.locator("#txt2img_generate").is_visible()
    page.wait_for_selector("#txt2img_progress .easel-progress-text")
    assert "Step" in page.locator("#txt2img_progress").inner_text()
    page.screenshot(path=str(artifacts / "txt2img-running.png"))
    page.locator("#txt2img_interrupt").click()
    page.wait_for_selector("#txt2img_generate:visible", timeout=30_000)
    assert page.locator("#txt2img_error textarea").input_value() == "Interrupted."
    assert services.queue.current() is None


def test_checkpoint_switch_from_dropdown(page, server, artifacts):
    services = server[1]
    dropdown = page.locator("#sd_model_checkpoint input")
    dropdown.click()
    page.get_by_role("option", name="tiny-b", exact=False).first.click()
    page.wait_for_function("document.querySelector('#sd_model_status').innerText.includes('Loaded')")
    assert "tiny-b" in page.locator("#sd_model_status").inner_text()
    assert services.selected_checkpoint.startswith("tiny-b")
    page.screenshot(path=str(artifacts / "checkpoint-switch.png"))
    services.select_checkpoint("tiny-a").wait(60)


def test_outpaint_grows_the_image_and_keeps_the_original(page, tmp_path, artifacts):
    source = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    path = tmp_path / "small.png"
    source.save(path)
    page.locator("#tab_outpaint-button").click()
    page.locator("#outpaint_image input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#outpaint_image img")
    page.locator("#outpaint_direction label", has_text="left").click()  # untick: right, up, down remain
    page.locator("#outpaint_direction label", has_text="up").click()
    set_slider(page, "outpaint_pixels", 16)
    set_slider(page, "outpaint_steps", 2)
    page.locator("#outpaint_generate").click()
    page.wait_for_selector("#outpaint_gallery img")
    result = gallery_image(page, "outpaint_gallery")
    assert result.size == (48, 48)  # 32 + 16 to the right, 32 + 16 down
    kept = np.abs(np.asarray(result, dtype=int)[:24, :24] - np.asarray(source, dtype=int)[:24, :24]).max()
    assert kept <= 2, "the original pixels far from the new area changed"
    page.screenshot(path=str(artifacts / "outpaint.png"))
