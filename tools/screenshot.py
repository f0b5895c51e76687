"""Take the README's screenshot (docs/screenshot.png): the txt2img tab with a result of the bundled
model, in Debian's Chromium driven by Playwright, as the browser tests do (tests/test_browser.py).

    PYTHONPATH=. .venv/bin/python tools/screenshot.py [--out docs/screenshot.png]

It starts Easel on a temporary data folder holding only the bundled model, generates one image
with a fixed seed and saves the page as a 256-colour PNG (small enough to commit).
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from tests.test_browser import BUNDLED, CHROMIUM, CHROMIUM_ARGS, running_server, set_slider

PROMPT = "a large red circle on the left, blue background"
VIEWPORT = {"width": 1280, "height": 1280}
MAX_BYTES = 150 * 1024


def make_data(root: Path) -> Path:
    folder = root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for path in (BUNDLED, BUNDLED.with_suffix(".yaml")):
        if path.exists():
            shutil.copy2(path, folder / path.name)
    return root


def take(out: Path, seed: int = 3) -> int:
    """Write the screenshot to ``out``; returns its size in bytes."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, running_server(make_data(Path(tmp))) as (running, _), \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.set_default_timeout(120_000)
        page.goto(running.local_url)
        page.locator("#txt2img_prompt textarea").fill(PROMPT)
        set_slider(page, "txt2img_steps", 20)
        page.locator("#txt2img_seed input").fill(str(seed))
        page.locator("#txt2img_generate").click()
        page.wait_for_selector("#txt2img_gallery img")
        page.wait_for_selector("#txt2img_generate:visible")
        page.wait_for_selector("#txt2img_gallery [data-testid=status-tracker].hide", state="attached")
        page.mouse.move(1, 1)
        page.wait_for_timeout(800)
        shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        browser.close()
    small = shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    small.save(out, optimize=True)
    return out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshot.png"))
    args = parser.parse_args()
    size = take(args.out)
    print(f"wrote {args.out} ({size / 1024:.0f} KiB)")
    if size > MAX_BYTES:
        raise SystemExit(f"{args.out} is {size / 1024:.0f} KiB, over {MAX_BYTES // 1024} KiB: use a smaller viewport")


if __name__ == "__main__":
    main()
