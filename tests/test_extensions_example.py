"""The example extension in extensions/image-browser: a tab and an API route on Easel's own hook registry."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi.testclient import TestClient

from modules.a1111_compat.loader import load_extensions
from modules.api import create_app
from modules.schemas import Txt2ImgRequest

EXAMPLE = Path(__file__).resolve().parent.parent / "extensions" / "image-browser"


def test_image_browser_searches_saved_images_by_prompt(services, data_dir):
    shutil.copytree(EXAMPLE, data_dir / "extensions" / "image-browser")
    extensions = load_extensions(services)
    try:
        assert [e.name for e in extensions.items if e.active] == ["builtin", "image-browser"]
        for prompt in ("a red circle", "a blue square"):
            services.submit("txt2img", Txt2ImgRequest(prompt=prompt, steps=1, width=32, height=32, seed=1)).wait(120)
        with TestClient(create_app(services)) as client:
            found = client.get("/image-browser/v1/search", params={"q": "CIRCLE"}).json()
            assert [f["prompt"] for f in found] == ["a red circle"]
            assert found[0]["path"].startswith("outputs/txt2img-images/") and "Steps: 1" in found[0]["infotext"]
            assert len(client.get("/image-browser/v1/search").json()) == 2
            bad = client.get("/image-browser/v1/search", params={"limit": 0})
            assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "limit"]

        from webui.app import create_ui

        demo = create_ui(services)
        ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
        assert {"tab_image_browser", "image_browser_query", "image_browser_gallery"} <= ids
    finally:
        extensions.unload()
