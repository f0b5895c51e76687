"""Extensions in the web UI: their tabs and settings sections (the ``ui_built`` hook point), their
JavaScript and CSS in the page, and the Extensions tab (list, enable/disable, errors, install, update)."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.a1111_compat import manage
from modules.a1111_compat.option_values import apply_options
from modules.config import SettingsError
from modules.hooks import UiEvent, UiOption

PREFIX = "extensions"
TABLE_HEADERS = ["Extension", "Enabled", "Status", "Scripts", "Remote", "Version"]
ERROR_HEADERS = ["When", "Extension", "Where", "Error"]


def collect(services) -> UiEvent:
    """Run the ``ui_built`` hooks (extensions add tabs and options); call before the page's Blocks."""
    return services.hooks.ui_built(services)


def render_tabs(services, event: UiEvent) -> None:
    """Each extension tab inside the page's ``gr.Tabs``; a tab that fails to build shows its error."""
    for tab in event.tabs:
        with gr.Tab(tab.title, id=tab.elem_id, elem_id=f"tab_{tab.elem_id}"):
            try:
                built = tab.build()
                if isinstance(built, gr.Blocks):
                    built.render()
            except Exception as err:  # noqa: BLE001 - one extension's tab must not break the page
                services.hooks.record(tab.title, "ui_built", err)
                gr.HTML(f"<p class='easel-error'>{html.escape(type(err).__name__)}: {html.escape(str(err))}</p>")


def option_component(option: UiOption, value: Any) -> Any:
    common = {"label": option.label, "info": option.info or None, "elem_id": f"setting_{option.key}"}
    if option.component == "checkbox":
        return gr.Checkbox(value=bool(value), **common)
    if option.component == "slider":
        return gr.Slider(minimum=option.minimum or 0, maximum=option.maximum or 100, step=option.step or 1,
                         value=value, **common)
    if option.component == "number":
        return gr.Number(value=value, **common)
    if option.component in ("dropdown", "radio") and option.choices:
        cls = gr.Dropdown if option.component == "dropdown" else gr.Radio
        return cls(choices=list(option.choices), value=value, **common)
    return gr.Textbox(value="" if value is None else str(value), **common)


@dataclass
class OptionsUi:
    fields: dict[str, Any]
    apply: gr.Button | None
    result: gr.HTML | None


def create_options_ui(services, options: list[UiOption]) -> OptionsUi:
    """The extensions' settings sections (inside the Settings tab), one accordion per section."""
    fields: dict[str, Any] = {}
    if not options:
        return OptionsUi(fields, None, None)
    values = services.settings.extension_options
    sections: dict[tuple[str, str], list[UiOption]] = {}
    for option in options:
        sections.setdefault(tuple(option.section), []).append(option)
    for (section_id, title), items in sections.items():
        with gr.Accordion(title, open=False, elem_id=f"settings_section_{section_id}"):
            for option in items:
                fields[option.key] = option_component(option, values.get(option.key, option.default))
    apply = gr.Button("Apply extension options", elem_id="settings_extensions_apply")
    result = gr.HTML(elem_id="settings_extensions_result")
    return OptionsUi(fields, apply, result)


def bind_options(ui: OptionsUi, services) -> None:
    if ui.apply is None:
        return

    def on_apply(data: dict):
        values = {key: data[comp] for key, comp in ui.fields.items() if comp in data}
        try:
            changed = apply_options(services, values)
        except SettingsError as err:
            gr.Warning(str(err))
            return f"<p class='easel-error'>{html.escape(str(err))}</p>"
        return f"<p>Saved {len(changed)} changed extension option(s).</p>"

    ui.apply.click(on_apply, inputs=set(ui.fields.values()), outputs=[ui.result])


def page_head(services) -> str:
    """``<script>`` and ``<style>`` tags with the enabled extensions' ``javascript/*.js`` and ``style.css``."""
    if services.extensions is None:
        return ""
    parts = []
    for extension in services.extensions.items:
        for js in extension.javascript:
            text = js.read_text(encoding="utf-8", errors="replace").replace("</script", "<\\/script")
            parts.append(f"<script data-extension=\"{html.escape(extension.name)}\">\n{text}\n</script>")
        if extension.css is not None:
            text = extension.css.read_text(encoding="utf-8", errors="replace").replace("</style", "<\\/style")
            parts.append(f"<style data-extension=\"{html.escape(extension.name)}\">\n{text}\n</style>")
    return "\n".join(parts)


# -- the Extensions tab ------------------------------------------------------------------------
def table_rows(services) -> list[list[Any]]:
    extensions = services.extensions
    if extensions is None:
        return []
    rows = []
    for e in extensions.items:
        if e.builtin:
            continue
        status = "loaded" if e.active else ("disabled" if not e.enabled else f"error: {e.error}")
        info = e.git_info()
        rows.append([e.name, e.enabled, status, ", ".join(s.title for s in e.scripts), info["remote"], info["version"]])
    return rows


def error_rows(services) -> list[list[str]]:
    return [[time.strftime("%H:%M:%S", time.localtime(err.when)), err.owner, err.point, err.message]
            for err in reversed(services.hooks.errors)]


def extension_names(services) -> list[str]:
    return [e.name for e in services.extensions.items if not e.builtin] if services.extensions else []


def enabled_names(services) -> list[str]:
    return [e.name for e in services.extensions.items if not e.builtin and e.enabled] if services.extensions else []


@dataclass
class ExtensionsTab:
    table: gr.Dataframe
    enabled: gr.CheckboxGroup
    apply: gr.Button
    update: gr.Button
    errors: gr.Dataframe
    source: gr.Textbox
    name: gr.Textbox
    install: gr.Button
    upload: gr.File
    status: gr.HTML


def create_ui(services) -> ExtensionsTab:
    """Build the tab (call inside a ``gr.Tab``)."""
    locked = services.extensions is not None and not services.extensions.install_allowed
    with gr.Column():
        status = gr.HTML(elem_id=f"{PREFIX}_status")
        if locked:
            gr.Markdown("Installing, updating and enabling extensions is off: Easel runs with --listen or --share "
                        "(start it with --enable-insecure-extension-access to allow it).")
        table = gr.Dataframe(table_rows(services), headers=TABLE_HEADERS, interactive=False, elem_id=f"{PREFIX}_table")
        enabled = gr.CheckboxGroup(extension_names(services), value=enabled_names(services), label="Enabled",
                                   elem_id=f"{PREFIX}_enabled", interactive=not locked)
        with gr.Row():
            apply = gr.Button("Apply and reload extensions", variant="primary", elem_id=f"{PREFIX}_apply",
                              interactive=not locked)
            update = gr.Button("Update (git pull)", elem_id=f"{PREFIX}_update", interactive=not locked)
        with gr.Accordion("Install", open=False):
            source = gr.Textbox(label="Git URL or folder on this machine", elem_id=f"{PREFIX}_source",
                                interactive=not locked)
            name = gr.Textbox(label="Name (optional)", elem_id=f"{PREFIX}_name", interactive=not locked)
            install = gr.Button("Install", elem_id=f"{PREFIX}_install", interactive=not locked)
            upload = gr.File(label="Or install a .zip", file_types=[".zip"], elem_id=f"{PREFIX}_zip",
                             interactive=not locked)
        errors = gr.Dataframe(error_rows(services), headers=ERROR_HEADERS, interactive=False,
                              label="Errors of extensions (this run)", elem_id=f"{PREFIX}_errors")
    return ExtensionsTab(table, enabled, apply, update, errors, source, name, install, upload, status)


def _refreshed(services, message: str, error: bool = False) -> tuple:
    css = "easel-error" if error else "easel-ok"
    return (f"<p class='{css}'>{html.escape(message)}</p>", table_rows(services),
            gr.update(choices=extension_names(services), value=enabled_names(services)), error_rows(services))


def _guarded(services, action) -> tuple:
    if services.extensions is None:
        return _refreshed(services, "extensions are not loaded in this app", error=True)
    if not services.extensions.install_allowed:
        return _refreshed(services, "not allowed: Easel runs with --listen or --share without"
                                    " --enable-insecure-extension-access", error=True)
    try:
        return _refreshed(services, action())
    except (manage.ExtensionError, SettingsError, OSError) as err:
        return _refreshed(services, str(err).splitlines()[0] if str(err) else type(err).__name__, error=True)


def apply_enabled(services, chosen: list[str]) -> str:
    names = extension_names(services)
    disabled = manage.set_enabled(services, {n: n in (chosen or []) for n in names})
    manage.reload(services)
    return (f"Saved; {len(names) - len(disabled)} of {len(names)} extension(s) enabled and reloaded (their scripts and"
            " hooks apply now; their tabs and settings appear after a restart)")


def update_all(services) -> str:
    lines = [manage.update(e) for e in services.extensions.items if not e.builtin and (e.path / ".git").exists()]
    return "; ".join(lines) or "no extension is a git checkout"


def bind_events(tab: ExtensionsTab, services) -> None:
    outputs = [tab.status, tab.table, tab.enabled, tab.errors]
    tab.apply.click(lambda chosen: _guarded(services, lambda: apply_enabled(services, chosen)),
                    inputs=[tab.enabled], outputs=outputs)
    tab.update.click(lambda: _guarded(services, lambda: update_all(services)), outputs=outputs)
    def from_source(source: str, name: str):
        source = (source or "").strip()
        if source and not manage.URL.match(source) and not services.access.allow_server_paths:
            return _refreshed(services, "source: a folder on this machine needs Easel started with --allow-server-paths;"
                                        " give a git URL or upload a .zip", error=True)
        return _guarded(services, lambda: manage.install(services.settings, source, name or None))

    tab.install.click(from_source, inputs=[tab.source, tab.name], outputs=outputs)

    def from_zip(file):
        if not file:
            return _refreshed(services, "choose a .zip file", error=True)
        path = file if isinstance(file, str) else getattr(file, "name", str(file))
        return _guarded(services, lambda: manage.install(services.settings, path))

    tab.upload.upload(from_zip, inputs=[tab.upload], outputs=outputs)
