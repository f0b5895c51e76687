"""Image browser: Easel's example extension, and the template for writing one.

It adds a tab (search the saved images by prompt, see them with their parameters) and an API route
(``GET /image-browser/v1/search?q=cat&limit=20``), using only Easel's hook registry:

- ``register(hooks, services)`` is called once when extensions load; ``hooks.add(point, fn)``
  registers a hook under this extension's name (its errors are shown in the Extensions tab);
- ``ui_built``: ``event.add_tab(title, build)``; ``build()`` makes the tab's components;
- ``app_started``: ``event.app`` is the FastAPI app; routes added there sit behind the API's
  credentials and body limit, like ``/sdapi/v1``.

The other hook points (before/after a job, per batch, per image, around saves, model loaded, each
denoiser step) are listed in ``modules/hooks.py`` and docs/extensions.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MAX_RESULTS = 200
MAX_FILES_SCANNED = 5000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def output_folders(settings: Any) -> list[Path]:
    """Every folder Easel saves generated images in (the ``outdir_*`` settings)."""
    names = [name for name in type(settings).model_fields if name.startswith("outdir_")]
    return [settings.path(getattr(settings, name)) for name in names]


def search(settings: Any, query: str, limit: int = 50) -> list[dict[str, str]]:
    """Saved images whose prompt holds ``query`` (case-insensitive), newest first.

    Each: ``path`` (relative to the data folder), ``prompt`` and ``infotext``."""
    from modules.images import read_infotext
    from modules.infotext import parse_infotext

    wanted = query.strip().lower()
    files = [p for folder in output_folders(settings) if folder.is_dir() for p in folder.rglob("*")
             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    found = []
    for path in files[:MAX_FILES_SCANNED]:
        try:
            text = read_infotext(path) or ""
        except (OSError, ValueError):
            continue
        prompt = parse_infotext(text).get("Prompt", "") if text else ""
        if wanted in prompt.lower():
            try:
                shown = path.relative_to(settings.data_dir).as_posix()
            except ValueError:
                shown = path.name
            found.append({"path": shown, "prompt": prompt, "infotext": text, "_file": str(path)})
            if len(found) >= limit:
                break
    return found


def add_route(event: Any) -> None:
    from fastapi import APIRouter, Query

    router = APIRouter(prefix="/image-browser/v1", tags=["extension: image-browser"])
    services = event.services

    @router.get("/search")
    def search_images(q: str = Query("", max_length=200, description="text the prompt must hold"),
                      limit: int = Query(50, ge=1, le=MAX_RESULTS)) -> list[dict[str, str]]:
        """Saved images whose prompt holds ``q``, newest first, with their infotext."""
        return [{k: v for k, v in item.items() if not k.startswith("_")} for item in search(services.settings, q, limit)]

    event.app.include_router(router)


def add_tab(event: Any) -> None:
    services = event.services

    def build() -> None:
        import gradio as gr
        from PIL import Image

        with gr.Row():
            query = gr.Textbox(label="Prompt contains", elem_id="image_browser_query", scale=4)
            button = gr.Button("Search", elem_id="image_browser_search", scale=1)
        gallery = gr.Gallery(label="Images", columns=6, elem_id="image_browser_gallery")
        details = gr.Dataframe(headers=["File", "Prompt"], interactive=False, elem_id="image_browser_table")

        def run(text: str):
            items = search(services.settings, text or "", 48)
            images = []
            for item in items:
                with Image.open(item["_file"]) as image:
                    images.append((image.copy(), item["prompt"]))
            return images, [[item["path"], item["prompt"]] for item in items]

        button.click(run, inputs=[query], outputs=[gallery, details])
        query.submit(run, inputs=[query], outputs=[gallery, details])

    event.add_tab("Image browser", build, elem_id="image_browser")


def register(hooks: Any, services: Any) -> None:
    """Called by Easel when extensions load: add this extension's hooks."""
    hooks.add("app_started", add_route)
    hooks.add("ui_built", add_tab)
