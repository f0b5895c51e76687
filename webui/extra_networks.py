"""The "Extra networks" panel under the txt2img and img2img prompts (A1111's card browser).

Cards for every checkpoint, LoRA, embedding and ControlNet model (``modules.network_cards`` lists
them), with a search box. Clicking a card:

- LoRA: adds ``<lora:NAME:1>`` to the tab's prompt (or takes it out when it is there, as A1111);
- embedding: adds its name to the prompt (or takes it out);
- checkpoint: selects it in the top dropdown and loads it;
- ControlNet: chooses it as the model of the tab's ControlNet unit 0.

"Set preview" on a card writes the tab's selected result as the model's ``NAME.preview.png``.
Pictures are sent inline (small data URIs), so the page never asks the server for a file. The
browser only sends a card's kind and name, which are looked up in the listing again.

The cards and the top checkpoint list keep themselves current (:func:`bind_auto_refresh`): a timer
asks every few seconds for ``modules.network_cards.folders_stamp`` (names, sizes and times of the
files in the model folders) and, only when it changed (a training job or the installer wrote a
model, or a file was copied in), rescans the folders and sends the new lists.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from modules.network_cards import (
    KIND_LABELS,
    KINDS,
    CardError,
    NetworkCard,
    find_card,
    folders_stamp,
    list_cards,
    preview_file,
    set_preview,
)
from modules.training.job import refresh_lists
from webui.top_bar import TopBar, checkpoint_titles, selected_title, switch_checkpoint
from webui.widgets import gallery_image

THUMBNAIL_SIDE = 96
REFRESH_SECONDS = 2.0  # how often an open page looks for new model files
CARD_JS = """
element.addEventListener('click', (event) => {
  const card = event.target.closest('.easel-card');
  if (!card || !element.contains(card)) return;
  const action = event.target.closest('[data-action]');
  trigger('click', {kind: card.dataset.kind, name: card.dataset.name, action: action ? action.dataset.action : 'use'});
});
"""
CSS = """
.easel-cards-kind { margin: 6px 0 2px; font-weight: bold; }
.easel-cards-row { display: flex; flex-wrap: wrap; gap: 6px; }
.easel-card { width: 120px; border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 4px;
  cursor: pointer; font-size: 0.8em; overflow: hidden; }
.easel-card:hover { border-color: var(--color-accent); }
.easel-card img, .easel-card-blank { width: 96px; height: 96px; display: block; margin: 0 auto; object-fit: contain;
  image-rendering: pixelated; }
.easel-card-blank { display: flex; align-items: center; justify-content: center; font-size: 2em; opacity: 0.4;
  background: var(--background-fill-secondary); }
.easel-card-name { font-weight: bold; overflow-wrap: anywhere; }
.easel-card-description { opacity: 0.75; max-height: 4.5em; overflow: hidden; }
.easel-card-preview { font-size: 0.9em; margin-top: 2px; text-decoration: underline; background: none; border: none;
  padding: 0; cursor: pointer; }
"""
ACTIONS = {
    "checkpoint": "click: select and load this checkpoint",
    "lora": "click: add <lora:{name}:1> to the prompt (click again: take it out)",
    "embedding": "click: add {name} to the prompt (click again: take it out)",
    "controlnet": "click: use this model in ControlNet unit 0",
}


@dataclass
class CardsUI:
    """One tab's panel: the search box, the cards and a status line."""

    search: gr.Textbox
    cards: gr.HTML
    status: gr.HTML


def _attr(text: str) -> str:
    """Text for HTML (attributes too); braces and ``$`` escaped, so Gradio's template sees none."""
    return html.escape(text, quote=True).replace("{", "&#123;").replace("}", "&#125;").replace("$", "&#36;")


def thumbnail_uri(card: NetworkCard) -> str | None:
    """The card's preview as a small PNG data URI; None without a (readable) preview."""
    path = preview_file(card)
    if path is None:
        return None
    try:
        with Image.open(path) as picture:
            picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            buffer = io.BytesIO()
            picture.convert("RGB").save(buffer, format="PNG")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def card_html(card: NetworkCard) -> str:
    picture = thumbnail_uri(card)
    image = (f"<img src='{picture}' alt='preview of {_attr(card.label)}'>" if picture
             else f"<div class='easel-card-blank'>{_attr(card.label[:1].upper())}</div>")
    hint = ACTIONS[card.kind].format(name=card.name)
    return (f"<div class='easel-card' data-kind='{card.kind}' data-name='{_attr(card.name)}' title='{_attr(hint)}'>"
            f"{image}<div class='easel-card-name'>{_attr(card.label)}</div>"
            f"<div class='easel-card-description'>{_attr(card.description)}</div>"
            "<button class='easel-card-preview' data-action='preview' "
            "title='Use the selected result of this tab as the preview picture'>Set preview</button></div>")


def cards_html(cards: list[NetworkCard], query: str = "") -> str:
    """Every card that matches ``query``, under a heading per kind."""
    shown = [card for card in cards if card.matches(query)]
    parts = []
    for kind in KINDS:
        own = [card for card in shown if card.kind == kind]
        if own:
            parts.append(f"<div class='easel-cards-kind'>{KIND_LABELS[kind]} ({len(own)})</div>"
                         f"<div class='easel-cards-row'>{''.join(card_html(card) for card in own)}</div>")
    if not parts:
        what = f" matching {_attr(query)!s}" if (query or "").strip() else ""
        parts.append(f"<p class='easel-cards-none'>No models{what}. Put them in the models folders or install "
                     "them in the Models tab.</p>")
    return f"<div class='easel-cards'>{''.join(parts)}</div>"


def render(services, query: str = "") -> str:
    return cards_html(list_cards(services), query)


def lora_tag(name: str) -> str:
    return f"<lora:{name}:1>"


def toggle_in_prompt(prompt: str, text: str) -> str:
    """``prompt`` with ``text`` appended (space-separated), or, when it is there already, taken out."""
    prompt = prompt or ""
    if text.startswith("<lora:"):  # any weight of the same LoRA counts as there
        name = text[len("<lora:"):-len(":1>")]
        pattern = re.compile(r"\s*<lora:" + re.escape(name) + r"(:[^>]*)?>")
    else:
        pattern = re.compile(r"\s*(?<![\w-])" + re.escape(text) + r"(?![\w-])")
    if pattern.search(prompt):
        return pattern.sub("", prompt, count=1).strip()
    return f"{prompt.rstrip()} {text}".strip()


def create_ui(prefix: str, services) -> CardsUI:
    """The closed "Extra networks" accordion (call inside the tab, under the prompts)."""
    with gr.Accordion("Extra networks", open=False, elem_id=f"{prefix}_extra_networks"):
        search = gr.Textbox(label="Search", placeholder="name or description", lines=1, max_lines=1,
                            elem_id=f"{prefix}_extra_networks_search")
        cards = gr.HTML(render(services), js_on_load=CARD_JS, elem_id=f"{prefix}_extra_networks_cards")
        status = gr.HTML(elem_id=f"{prefix}_extra_networks_status")
    return CardsUI(search, cards, status)


def bind_events(ui: CardsUI, services, prompt: gr.Textbox, gallery: gr.Gallery, selected: gr.State, top: TopBar,
                controlnet_model: Any = None) -> None:
    """Search, card clicks (insert, select, set preview)."""
    ui.search.change(lambda query: render(services, query), inputs=[ui.search], outputs=[ui.cards], queue=False,
                     show_progress="hidden", trigger_mode="always_last")
    checkpoint, checkpoint_status = top.checkpoint, top.status
    outputs = [prompt, checkpoint, checkpoint_status, ui.cards, ui.status,
               *([controlnet_model] if controlnet_model is not None else [])]

    def on_click(evt: gr.EventData, text: str, query: str, results: list | None, index: int):
        data = evt._data if isinstance(evt._data, dict) else {}
        try:
            card = find_card(services, data.get("kind"), data.get("name"))
        except CardError as err:
            yield {ui.status: f"<span class='easel-error'>{html.escape(str(err))}</span>"}
            return
        if data.get("action") == "preview":
            yield preview_action(services, card, results, index, query, ui)
            return
        if card.kind == "checkpoint":
            title = services.checkpoints.title(services.checkpoints.get(card.name))
            yield {checkpoint: title, ui.status: f"Checkpoint: {html.escape(title)}"}
            for line in switch_checkpoint(services, title):
                yield {checkpoint_status: line}
        elif card.kind == "controlnet":
            if controlnet_model is None:
                yield {ui.status: "This tab has no ControlNet unit."}
            else:
                yield {controlnet_model: card.name, ui.status: f"ControlNet unit 0 model: {html.escape(card.name)}"}
        else:
            inserted = lora_tag(card.name) if card.kind == "lora" else card.name
            yield {prompt: toggle_in_prompt(text, inserted), ui.status: ""}

    ui.cards.click(on_click, inputs=[prompt, ui.search, gallery, selected], outputs=outputs, show_progress="hidden",
                   concurrency_limit=None)


def preview_action(services, card: NetworkCard, results: list | None, index: int, query: str, ui: CardsUI) -> dict:
    """Write the tab's selected result as the card's preview; the cards again, or why not."""
    picture = gallery_image(results, index)
    if picture is None:
        return {ui.status: "<span class='easel-error'>No result to use as preview: generate an image first.</span>"}
    if not isinstance(picture, Image.Image):
        picture = Image.open(picture)
    try:
        path = set_preview(card, picture)
    except (CardError, OSError) as err:
        return {ui.status: f"<span class='easel-error'>{html.escape(str(err))}</span>"}
    return {ui.cards: render(services, query), ui.status: f"Preview of {html.escape(card.label)} saved as "
                                                          f"{html.escape(path.name)}."}


def bind_auto_refresh(services, top: TopBar, cards: list) -> gr.Timer:
    """Every ``REFRESH_SECONDS``: when the model folders changed since this page last looked, the
    rescanned checkpoint list (the current choice kept) and every extra-networks panel's cards
    (``cards``: ``webui.extra_networks.CardsUI``, rendered with its search text)."""
    timer = gr.Timer(REFRESH_SECONDS)
    seen = gr.State(folders_stamp(services))  # what the page was built with
    searches = [ui.search for ui in cards]

    def on_tick(stamp: str, *queries: str):
        now = folders_stamp(services)
        if now == stamp:
            return {seen: stamp}
        refresh_lists(services)
        updates = {seen: now, top.checkpoint: gr.update(choices=checkpoint_titles(services),
                                                        value=selected_title(services))}
        for ui, query in zip(cards, queries, strict=True):
            updates[ui.cards] = render(services, query or "")
        return updates

    timer.tick(on_tick, inputs=[seen, *searches], outputs=[seen, top.checkpoint, *(ui.cards for ui in cards)],
               queue=False, show_progress="hidden")
    return timer


