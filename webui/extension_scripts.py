"""Extension scripts in the txt2img / img2img tabs: always-on scripts' own UIs, and the Script dropdown
with each selectable script's UI (A1111's layout). Their values become the request's
``extension_alwayson`` and ``extension_script`` (by title), the same fields the API fills."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.batches import Batch
from modules.schemas import ScriptCall

NONE = "None"


@dataclass
class ScriptsUi:
    fields: dict[str, Any] = field(default_factory=dict)  # input name -> component
    alwayson: dict[str, list[str]] = field(default_factory=dict)  # title -> its input names, in order
    selectable: dict[str, list[str]] = field(default_factory=dict)
    choice: str | None = None  # the dropdown's input name
    defaults: dict[str, Any] = field(default_factory=dict)  # input name -> the component's value when built


def _components(services, entry, is_img2img: bool) -> list[Any]:
    try:
        return list(entry.script.ui(is_img2img) or [])
    except Exception as err:  # noqa: BLE001 - one script's UI must not break the tab
        services.hooks.record(entry.owner, f"script {entry.title!r}.ui", err)
        return []


def create_ui(services, is_img2img: bool, prefix: str) -> ScriptsUi:
    """The scripts' components (call inside the tab's settings column); nothing without extensions."""
    ui = ScriptsUi()
    if services.extensions is None:
        return ui
    scripts = services.extensions.scripts_for(is_img2img)
    for n, entry in enumerate(s for s in scripts if s.alwayson):
        with gr.Group(elem_id=f"{prefix}_alwayson_{n}"):
            names = []
            for i, component in enumerate(_components(services, entry, is_img2img)):
                name = f"_ext_a{n}_{i}"
                ui.fields[name] = component
                ui.defaults[name] = getattr(component, "value", None)
                names.append(name)
            ui.alwayson[entry.title] = names
    selectable = [s for s in scripts if not s.alwayson]
    if not selectable:
        return ui
    choice = gr.Dropdown([NONE, *[s.title for s in selectable]], value=NONE, label="Script",
                         elem_id=f"{prefix}_script_list")
    ui.choice = "_ext_choice"
    ui.fields[ui.choice] = choice
    groups = []
    for n, entry in enumerate(selectable):
        with gr.Group(visible=False, elem_id=f"{prefix}_script_{n}") as group:
            names = []
            for i, component in enumerate(_components(services, entry, is_img2img)):
                name = f"_ext_s{n}_{i}"
                ui.fields[name] = component
                ui.defaults[name] = getattr(component, "value", None)
                names.append(name)
        groups.append(group)
        ui.selectable[entry.title] = names
    titles = list(ui.selectable)
    choice.change(lambda title: [gr.update(visible=title == t) for t in titles], inputs=[choice], outputs=groups,
                  queue=False)
    return ui


def request_fields(ui: ScriptsUi, values: dict[str, Any]) -> dict[str, Any]:
    """``extension_alwayson`` and ``extension_script`` from the scripts' values (a component the page
    never rendered, in a closed accordion, sends None: its value as built stands)."""
    def value(name: str) -> Any:
        v = values.get(name)
        return ui.defaults.get(name) if v is None else v

    out: dict[str, Any] = {}
    if ui.alwayson:
        out["extension_alwayson"] = {title: [value(n) for n in names] for title, names in ui.alwayson.items()}
    title = values.get(ui.choice) if ui.choice else None
    if title and title != NONE and title in ui.selectable:
        out["extension_script"] = ScriptCall(title=title, args=[value(n) for n in ui.selectable[title]])
    return out


def with_scripts(batch: Batch, ui: ScriptsUi, values: dict[str, Any]) -> Batch:
    """``batch`` with the scripts' fields on each generation request."""
    update = request_fields(ui, values)
    if not update:
        return batch
    batch.requests = [(kind, request.model_copy(update=update) if kind in ("txt2img", "img2img") else request)
                      for kind, request in batch.requests]
    return batch
