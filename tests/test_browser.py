"""The web UI in a real browser: Debian's Chromium driven by Playwright, against the app started
here on a free port with the bundled model (``models/Stable-diffusion/easel-shapes.safetensors``,
64x64) when it exists, else the tiny checkpoints (32x32). The tiny checkpoints are always there too,
for the flows that need two models (checkpoint switch).

Needs ``pip install playwright==1.65.2`` and ``apt-get install -y chromium`` (never
``playwright install``); without them every test here is skipped with the reason. Screenshots of
each flow are kept in ``$EASEL_ARTIFACTS`` (default: the test's tmp folder).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "models" / "Stable-diffusion" / "easel-shapes.safetensors"
HAS_BUNDLED = BUNDLED.exists()
DEFAULT_CKPT = "easel-shapes" if HAS_BUNDLED else "tiny-a"
SIZE = 64 if HAS_BUNDLED else 32
TIMEOUT_MS = 60_000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright==1.65.2")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (never 'playwright install')",
                allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_data_dir(root: Path, tiny_models_dir: Path) -> Path:
    """``root/models/Stable-diffusion`` with the tiny checkpoints and, when it exists, the bundled
    model with its .yaml."""
    shutil.copytree(tiny_models_dir, root / "models" / "Stable-diffusion")
    if HAS_BUNDLED:
        for path in (BUNDLED, BUNDLED.with_suffix(".yaml")):
            if path.exists():
                shutil.copy2(path, root / "models" / "Stable-diffusion" / path.name)
    return root


@contextlib.contextmanager
def running_server(data_dir: Path, **start_kwargs) -> Iterator[tuple]:
    """The web UI on ``data_dir`` on a free port, as ``(server, services)``; closed on exit."""
    from modules.config import load_settings
    from modules.services import build_services
    from webui.server import start

    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 1,
                                                       "sd_model_checkpoint": DEFAULT_CKPT}))
    try:
        running = start(services, port=free_port(), quiet=True, **start_kwargs)
        try:
            yield running, services
        finally:
            running.close()
    finally:
        services.close()


@pytest.fixture(scope="module")
def ui_data_dir(tmp_path_factory, tiny_models_dir) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("webui-data"), tiny_models_dir)


@pytest.fixture(scope="module")
def server(ui_data_dir):
    with running_server(ui_data_dir) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(context, url: str):
    """A new tab in ``context`` showing the UI at ``url``."""
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(url)
    pg.wait_for_selector("#txt2img_prompt textarea")
    return pg


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1800})
    yield ctx
    ctx.close()


@pytest.fixture
def page(context, server):
    return open_page(context, server[0].local_url)


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


def upload_into_editor(page, editor_id: str, path: Path, attempts: int = 3, wait_s: float = 40) -> None:
    """Upload ``path`` as an ImageEditor's background and wait until the canvas shows it.

    The canvas is drawn a while after the upload (software WebGL), and on a loaded machine an
    upload made while the editor is still setting up its canvas can be dropped: so wait for the
    canvas first, and upload again when the picture has not appeared after ``wait_s`` seconds.
    """
    canvas = page.locator(f"#{editor_id} .pixi-target canvas")
    canvas.wait_for(state="visible")
    std = 0.0
    for _ in range(attempts):
        page.locator(f"#{editor_id} input[type=file]").set_input_files(str(path))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"), dtype=float)
            std = float(shot.std())
            if std > 20:
                page.wait_for_timeout(300)
                return
            page.wait_for_timeout(250)
    page.screenshot(path=str(path.with_name(f"{editor_id}-upload-failed.png")))
    raise AssertionError(f"the image uploaded into #{editor_id} never appeared on its canvas "
                         f"({attempts} uploads, canvas std {std:.1f})")


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
    upload_into_editor(page, "inpaint_editor", path)
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
    set_slider(page, "txt2img_batch_count", 20)  # 150 x 20 = 3000 steps, the request limit
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
    services.select_checkpoint(DEFAULT_CKPT).wait(60)


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
    fit = page.locator("#outpaint_gallery img").first.evaluate("img => getComputedStyle(img).objectFit")
    assert fit == "contain"  # the gallery shows whole images, never a crop of a wide result
    kept = np.abs(np.asarray(result, dtype=int)[:24, :24] - np.asarray(source, dtype=int)[:24, :24]).max()
    assert kept <= 2, "the original pixels far from the new area changed"
    page.screenshot(path=str(artifacts / "outpaint.png"))


def progress_text(page, prefix: str) -> str:
    return page.locator(f"#{prefix}_progress").inner_text()


def start_txt2img(page, prompt: str, seed: int, steps: int = 2, batch_count: int = 1) -> None:
    """Fill the txt2img fields and press Generate (does not wait for the result)."""
    page.locator("#txt2img_prompt textarea").fill(prompt)
    set_slider(page, "txt2img_steps", steps)
    set_slider(page, "txt2img_width", SIZE)
    set_slider(page, "txt2img_height", SIZE)
    set_slider(page, "txt2img_batch_count", batch_count)
    page.locator("#txt2img_seed input").fill(str(seed))
    page.locator("#txt2img_generate").click()


def wait_result(page, prefix: str) -> str:
    """Wait for the run to end with an image; returns the infotext shown."""
    page.wait_for_selector(f"#{prefix}_gallery img")
    wait_idle(page, f"{prefix}_generate")
    error = page.locator(f"#{prefix}_error textarea")
    assert not error.is_visible() or not error.input_value(), error.input_value()
    return page.locator(f"#{prefix}_infotext textarea").input_value()


def test_two_browser_tabs_each_see_their_own_job(context, server, artifacts):
    services = server[1]
    tab_a = open_page(context, server[0].local_url)
    tab_b = open_page(context, server[0].local_url)
    # A runs a long job; B's short job waits behind it and shows its place in the queue
    start_txt2img(tab_a, "a long run in tab a", seed=1, steps=150, batch_count=20)  # at the step limit
    tab_a.wait_for_selector("#txt2img_progress .easel-progress-text")
    start_txt2img(tab_b, "a short run in tab b", seed=222)
    tab_b.wait_for_function(
        "document.querySelector('#txt2img_progress').innerText.includes('Waiting in queue: position 1')")
    assert "Step" in progress_text(tab_a, "txt2img") and "Waiting" not in progress_text(tab_a, "txt2img")
    tab_a.screenshot(path=str(artifacts / "tabs-a-running.png"))
    tab_b.screenshot(path=str(artifacts / "tabs-b-waiting.png"))
    # interrupting A ends A's job only: B's job then runs and B shows its own result
    tab_a.locator("#txt2img_interrupt").click()
    tab_a.wait_for_selector("#txt2img_generate:visible", timeout=30_000)
    assert tab_a.locator("#txt2img_error textarea").input_value() == "Interrupted."
    infotext_b = wait_result(tab_b, "txt2img")
    assert infotext_b.startswith("a short run in tab b") and "Seed: 222" in infotext_b
    assert tab_a.locator("#txt2img_gallery img").count() == 1  # A's partial image, kept as A1111 does
    tab_b.screenshot(path=str(artifacts / "tabs-b-result.png"))
    # both at once: each tab gets its own image and infotext
    start_txt2img(tab_a, "again in tab a", seed=111)
    start_txt2img(tab_b, "again in tab b", seed=333)
    infotext_a, infotext_b = wait_result(tab_a, "txt2img"), wait_result(tab_b, "txt2img")
    assert infotext_a.startswith("again in tab a") and "Seed: 111" in infotext_a
    assert infotext_b.startswith("again in tab b") and "Seed: 333" in infotext_b
    tab_a.screenshot(path=str(artifacts / "tabs-a-result.png"))
    assert services.queue.current() is None


def test_settings_persist_across_a_restart_and_theme_flag(browser, tmp_path, tiny_models_dir, artifacts):
    data_dir = make_data_dir(tmp_path / "data", tiny_models_dir)
    with running_server(data_dir) as (first, _):
        context = browser.new_context(viewport={"width": 1400, "height": 1800})
        pg = open_page(context, first.local_url)
        pg.locator("#tab_settings-button").click()
        steps = pg.locator("#settings_default_steps input")
        steps.fill("13")
        pg.locator("#settings_submit").click()
        pg.wait_for_selector("#settings_result .easel-ok")
        pg.screenshot(path=str(artifacts / "settings-saved.png"))
        context.close()
    assert '"default_steps": 13' in (data_dir / "config.json").read_text()
    with running_server(data_dir, theme="dark") as (second, services):
        assert services.settings.default_steps == 13
        context = browser.new_context(viewport={"width": 1400, "height": 1800})
        pg = open_page(context, second.local_url)
        assert "__theme=dark" in pg.url and "dark" in pg.evaluate("document.body.className")  # --theme dark
        assert pg.locator("#txt2img_steps input[type=number]").input_value() == "13"
        pg.locator("#tab_settings-button").click()
        assert pg.locator("#settings_default_steps input").input_value() == "13"
        pg.screenshot(path=str(artifacts / "settings-after-restart-dark.png"))
        context.close()


def test_gradio_auth_asks_for_login_and_rejects_a_wrong_password(browser, tmp_path, tiny_models_dir, artifacts):
    data_dir = make_data_dir(tmp_path / "data", tiny_models_dir)
    with running_server(data_dir, auth=[("alice", "wonderland")]) as (running, _):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(running.local_url)
        pg.wait_for_selector("input[type=password]")
        assert pg.locator("#txt2img_prompt").count() == 0
        assert pg.request.get(running.local_url.rstrip("/") + "/config").status == 401
        pg.locator("input[type=text]").fill("alice")
        pg.locator("input[type=password]").fill("wrong")
        pg.get_by_role("button", name="Login").click()
        pg.get_by_text("Incorrect Credentials").wait_for()
        assert pg.locator("#txt2img_prompt").count() == 0
        pg.screenshot(path=str(artifacts / "auth-rejected.png"))
        pg.locator("input[type=text]").fill("alice")
        pg.locator("input[type=password]").fill("wonderland")
        pg.get_by_role("button", name="Login").click()
        pg.wait_for_selector("#txt2img_prompt textarea")
        pg.screenshot(path=str(artifacts / "auth-logged-in.png"))
        context.close()


def noise_image(path: Path, size: int, seed: int) -> Image.Image:
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))
    image.save(path)
    return image


def run_img2img(page, prompt: str, outputs: Path) -> np.ndarray:
    """Generate with seed 77 and wait for this run's PNG in ``outputs`` (the gallery may still
    show the previous run's image until then); returns the image shown."""
    before = len(list(outputs.rglob("*-77.png")))
    page.locator("#img2img_prompt textarea").fill(prompt)
    set_slider(page, "img2img_steps", 2)
    set_slider(page, "img2img_width", SIZE)
    set_slider(page, "img2img_height", SIZE)
    page.locator("#img2img_seed input").fill("77")
    page.locator("#img2img_generate").click()
    page.wait_for_selector("#img2img_gallery img")
    for _ in range(240):
        if len(list(outputs.rglob("*-77.png"))) > before:
            break
        page.wait_for_timeout(250)
    infotext = wait_result(page, "img2img")
    assert infotext.startswith(prompt) and "Denoising strength: 0.75" in infotext and "Seed: 77" in infotext
    return np.asarray(gallery_image(page, "img2img_gallery"), dtype=int)


def test_img2img_and_sketch_generate(page, tmp_path, ui_data_dir, artifacts):
    noise_image(tmp_path / "source.png", SIZE, seed=3)
    page.locator("#tab_img2img-button").click()
    page.locator("#img2img_image input[type=file]").set_input_files(str(tmp_path / "source.png"))
    page.wait_for_selector("#img2img_image img")
    outputs = ui_data_dir / "outputs" / "img2img-images"
    plain = run_img2img(page, "img2img of noise", outputs)
    assert plain.shape == (SIZE, SIZE, 3)
    assert len(list(outputs.rglob("*-77.png"))) == 1, "the img2img result was not written to outputs/img2img-images"
    page.screenshot(path=str(artifacts / "img2img.png"))
    # Sketch: the uploaded image is the sketch's background; a stroke over it changes the input
    page.locator("#img2img_mode label", has_text="Sketch").click()
    page.wait_for_selector("#img2img_sketch .pixi-target canvas")
    page.wait_for_timeout(1000)
    upload_into_editor(page, "img2img_sketch", tmp_path / "source.png")
    # zooming once makes the canvas map the pointer onto the image (it was built while hidden)
    page.locator("#img2img_sketch button[aria-label='Zoom out']").click()
    page.wait_for_timeout(500)
    canvas = page.locator("#img2img_sketch .pixi-target canvas")
    before = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"), dtype=int)
    draw_stroke(page, "img2img_sketch", [(0.3, 0.5), (0.5, 0.5), (0.7, 0.5)])
    after = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"), dtype=int)
    # the default brush is sized to the picture (a stroke about 5% of 64 px wide), so the stroke covers a few %
    assert (np.abs(after - before) > 30).mean() > 0.005, "the brush stroke did not show on the sketch canvas"
    page.screenshot(path=str(artifacts / "img2img-sketch-stroke.png"))
    sketched = run_img2img(page, "img2img of noise", outputs)
    assert len(list(outputs.rglob("*-77.png"))) == 2
    assert sketched.shape == (SIZE, SIZE, 3)
    assert np.abs(sketched - plain).mean() > 1, "the sketch did not reach the model (same result as without it)"
    page.screenshot(path=str(artifacts / "img2img-sketch-result.png"))


def test_send_to_img2img_carries_image_and_prompt(page, artifacts):
    generate_txt2img(page, "a sent picture", seed=4321)
    sent = np.asarray(gallery_image(page, "txt2img_gallery"), dtype=int)
    page.locator("#txt2img_send_to_img2img").click()
    page.wait_for_function("document.querySelector('#img2img_prompt textarea')?.value === 'a sent picture'")
    assert page.locator("#img2img_seed input").input_value() == "4321"
    img = page.locator("#img2img_image img").first
    img.wait_for(state="visible")
    deadline = time.monotonic() + 15  # an image from an earlier test may show until the new one lands
    while True:
        received = np.asarray(Image.open(io.BytesIO(page.request.get(img.get_attribute("src")).body())).convert("RGB"),
                              dtype=int)
        if (received.shape == sent.shape and np.abs(received - sent).max() <= 2) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert received.shape == sent.shape and np.abs(received - sent).max() <= 2
    assert page.locator("#tab_img2img-button").get_attribute("aria-selected") == "true"
    page.screenshot(path=str(artifacts / "send-to-img2img.png"))


def test_extras_upscale_nearest_doubles_the_image(page, tmp_path, ui_data_dir, artifacts):
    source = noise_image(tmp_path / "small.png", 16, seed=5)
    page.locator("#tab_extras-button").click()
    page.locator("#extras_image input[type=file]").set_input_files(str(tmp_path / "small.png"))
    page.wait_for_selector("#extras_image img")
    set_slider(page, "extras_upscaling_resize", 2)
    page.locator("#extras_upscaler_1 input").click()
    page.get_by_role("option", name="Nearest", exact=True).click()
    page.locator("#extras_generate").click()
    page.wait_for_selector("#extras_gallery img")
    wait_idle(page, "extras_generate")
    result = np.asarray(gallery_image(page, "extras_gallery"), dtype=int)
    expected = np.asarray(source, dtype=int).repeat(2, axis=0).repeat(2, axis=1)
    assert result.shape == (32, 32, 3) and np.abs(result - expected).max() <= 1
    assert sorted((ui_data_dir / "outputs" / "extras-images").rglob("*.png")), "the upscaled PNG was not saved"
    page.screenshot(path=str(artifacts / "extras-upscale.png"))


def test_xy_plot_shows_a_labelled_grid(page, artifacts):
    page.locator("#txt2img_xyplot").get_by_text("Script: X/Y plot").click()
    page.locator("#txt2img_xy_enabled input").check()
    page.locator("#txt2img_xy_x_values textarea").fill("Euler a, Euler")  # X: sampler
    page.locator("#txt2img_xy_y_values textarea").fill("3, 9")  # Y: CFG scale
    generate_txt2img(page, "a grid", seed=9)
    thumbs = page.locator("#txt2img_gallery img")
    assert thumbs.count() == 5  # the grid, then the four cells
    grid = gallery_image(page, "txt2img_gallery")
    assert grid.width >= 2 * SIZE + 10 and grid.height >= 2 * SIZE + 10  # two columns, two rows and the labels
    cells = np.asarray(grid, dtype=int)
    assert cells.std() > 5
    page.screenshot(path=str(artifacts / "xy-plot.png"))
    page.locator("#txt2img_xy_enabled input").uncheck()
