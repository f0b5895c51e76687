"""A1111's styles editor, under each tab's Styles dropdown: create, edit and delete the styles of
``styles.csv`` in the data folder, and apply the chosen styles to the prompt boxes (the styles
then leave the dropdown, as A1111's "apply styles" button does)."""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from modules.schemas import RequestError
from modules.styles import STYLES_FILE, Style, apply_styles, delete_style, load_styles, put_style


@dataclass
class StylesEditor:
    name: gr.Dropdown
    prompt: gr.Textbox
    negative: gr.Textbox
    save: gr.Button
    delete: gr.Button
    apply: gr.Button
    status: gr.HTML


def create_ui(prefix: str, names: list[str]) -> StylesEditor:
    """The editor's components, in a closed accordion."""
    with gr.Accordion("Edit styles", open=False, elem_id=f"{prefix}_styles_edit"):
        name = gr.Dropdown(names, value=None, allow_custom_value=True, label="Style (choose one, or type a new name)",
                           elem_id=f"{prefix}_style_name")
        prompt = gr.Textbox(label="Style prompt ({prompt} marks where your prompt goes)", lines=2,
                            elem_id=f"{prefix}_style_prompt")
        negative = gr.Textbox(label="Style negative prompt", lines=2, elem_id=f"{prefix}_style_neg_prompt")
        with gr.Row():
            save = gr.Button("Save style", size="sm", elem_id=f"{prefix}_style_save")
            delete = gr.Button("Delete style", size="sm", elem_id=f"{prefix}_style_delete")
        apply = gr.Button("Apply styles to prompt", size="sm", elem_id=f"{prefix}_style_apply")
        status = gr.HTML(elem_id=f"{prefix}_style_status")
    return StylesEditor(name, prompt, negative, save, delete, apply, status)


def bind_events(editor: StylesEditor, services, prompt: gr.Textbox, negative: gr.Textbox, chosen: gr.Dropdown) -> None:
    """Choosing a style fills the editor; Save, Delete and Apply (``chosen`` is the tab's Styles dropdown)."""
    def path():
        return services.settings.data_dir / STYLES_FILE

    def lists(styles) -> dict:
        names = sorted(styles)
        return {editor.name: gr.update(choices=names), chosen: gr.update(choices=names)}

    def ok(text: str) -> str:
        return f"<p class='easel-ok'>{html.escape(text)}</p>"

    def failed(err: Exception) -> dict:
        gr.Warning(str(err))
        return {editor.status: f"<p class='easel-error'>{html.escape(str(err))}</p>"}

    def on_choose(name: str):
        style = load_styles(path()).get(name)
        if style is None:
            return gr.update(), gr.update()
        return style.prompt, style.negative_prompt

    def on_save(name: str, text: str, negative_text: str):
        try:
            style = Style((name or "").strip(), text or "", negative_text or "")
            put_style(path(), style)
        except (ValueError, OSError) as err:
            return failed(err)
        return {**lists(load_styles(path())), editor.name: gr.update(choices=sorted(load_styles(path())),
                                                                     value=style.name),
                editor.status: ok(f"Saved style {style.name} to {STYLES_FILE}.")}

    def on_delete(name: str, selected: list[str]):
        try:
            delete_style(path(), (name or "").strip())
        except (ValueError, OSError) as err:
            return failed(err)
        styles = load_styles(path())
        return {**lists(styles), editor.name: gr.update(choices=sorted(styles), value=None),
                editor.prompt: "", editor.negative: "",
                chosen: gr.update(choices=sorted(styles), value=[s for s in selected or [] if s in styles]),
                editor.status: ok(f"Deleted style {name}.")}

    def on_apply(text: str, negative_text: str, selected: list[str]):
        try:
            new_prompt, new_negative = apply_styles(text or "", negative_text or "", list(selected or []),
                                                    load_styles(path()))
        except RequestError as err:
            return failed(err)
        return {prompt: new_prompt, negative: new_negative, chosen: gr.update(value=[]),
                editor.status: ok(f"Applied {len(selected or [])} style(s) to the prompt.")}

    outputs = [editor.name, editor.prompt, editor.negative, editor.status, chosen]
    editor.name.input(on_choose, inputs=[editor.name], outputs=[editor.prompt, editor.negative], queue=False)
    editor.save.click(on_save, inputs=[editor.name, editor.prompt, editor.negative], outputs=outputs)
    editor.delete.click(on_delete, inputs=[editor.name, chosen], outputs=outputs)
    editor.apply.click(on_apply, inputs=[prompt, negative, chosen], outputs=[prompt, negative, chosen, editor.status])
