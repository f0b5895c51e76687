"""The Settings tab: output folders, file name pattern, checkpoint cache, memory mode, live preview,
default sampler and steps. Saved to config.json and applied at once where possible; a bad value
shows its error and nothing is saved."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules import samplers
from modules.config import Settings, SettingsError, save_settings
from modules.settings_update import validate_change
from webui.widgets import Fields, named_values

PREFIX = "settings"
# Settings read once at start-up; saving them takes effect at the next start.
RESTART_NEEDED = ("memory_mode",)


@dataclass
class SettingsTab:
    fields: Fields
    save: gr.Button
    result: gr.HTML
    error: gr.Textbox


def create_ui(services) -> SettingsTab:
    """Build the tab (call inside a ``gr.Tab``), filled from the current settings."""
    s = services.settings
    with gr.Column():
        save = gr.Button("Apply settings", variant="primary", elem_id=f"{PREFIX}_submit")
        error = gr.Textbox(label="Error", visible=False, interactive=False, elem_id=f"{PREFIX}_error")
        result = gr.HTML(elem_id=f"{PREFIX}_result")
        with gr.Accordion("Saving images", open=True):
            fields: Fields = {
                "outdir_txt2img_samples": gr.Textbox(s.outdir_txt2img_samples, label="Output folder for txt2img",
                                                     elem_id=f"{PREFIX}_outdir_txt2img_samples"),
                "outdir_img2img_samples": gr.Textbox(s.outdir_img2img_samples, label="Output folder for img2img",
                                                     elem_id=f"{PREFIX}_outdir_img2img_samples"),
                "outdir_extras_samples": gr.Textbox(s.outdir_extras_samples, label="Output folder for extras",
                                                    elem_id=f"{PREFIX}_outdir_extras_samples"),
                "samples_filename_pattern": gr.Textbox(s.samples_filename_pattern, label="File name pattern",
                                                       info="tokens: [number] [seed] [date] [datetime] [width] "
                                                            "[height] [prompt_words]",
                                                       elem_id=f"{PREFIX}_samples_filename_pattern"),
                "save_to_dirs": gr.Checkbox(s.save_to_dirs, label="Save into a folder per date",
                                            elem_id=f"{PREFIX}_save_to_dirs"),
            }
        with gr.Accordion("Models and memory", open=True):
            fields["sd_checkpoints_limit"] = gr.Number(s.sd_checkpoints_limit, precision=0,
                                                       label="Checkpoints kept in memory (1-16)",
                                                       elem_id=f"{PREFIX}_sd_checkpoints_limit")
            fields["memory_mode"] = gr.Radio(["normal", "medvram", "lowvram"], value=s.memory_mode,
                                             label="Memory mode (applies at the next start)",
                                             elem_id=f"{PREFIX}_memory_mode")
        with gr.Accordion("Generation", open=True):
            fields["show_progress_every_n_steps"] = gr.Number(
                s.show_progress_every_n_steps, precision=0, label="Live preview every N steps (0 = off)",
                elem_id=f"{PREFIX}_show_progress_every_n_steps")
            fields["default_sampler"] = gr.Dropdown(list(samplers.SAMPLER_NAMES), value=s.default_sampler,
                                                    label="Default sampler", elem_id=f"{PREFIX}_default_sampler")
            fields["default_steps"] = gr.Number(s.default_steps, precision=0, label="Default steps (1-150)",
                                                elem_id=f"{PREFIX}_default_steps")
    return SettingsTab(fields, save, result, error)


def validate(services, values: dict[str, Any]) -> Settings:
    """The new settings, or SettingsError naming the bad value (nothing is changed).

    The checks are the API's too (``modules.settings_update.validate_change``); an emptied box is
    refused here, since the form always sends every field."""
    missing = [name for name, value in values.items() if value is None or value == ""]
    if missing:
        raise SettingsError(f"invalid settings: {', '.join(missing)}: a value is required", field=missing[0])
    return validate_change(services.settings, values, services.access)


def apply(services, values: dict[str, Any]) -> str:
    """Validate, save config.json, hand the settings to the services; returns a summary line."""
    current = services.settings
    new = validate(services, values)
    save_settings(new)
    services.update_settings(new)
    changed = [name for name in values if getattr(new, name) != getattr(current, name)]
    later = [name for name in changed if name in RESTART_NEEDED]
    text = f"Saved {len(changed)} changed setting(s) to {new.config_file}"
    if later:
        text += f"; {', '.join(later)} applies at the next start"
    return text + "."


def bind_events(tab: SettingsTab, services) -> None:
    """Apply settings: an error box for bad values, a summary line otherwise."""
    def on_save(data: dict):
        values = named_values(tab.fields, data)
        try:
            summary = apply(services, values)
        except SettingsError as err:
            gr.Warning(str(err))
            return {tab.error: gr.update(value=str(err), visible=True), tab.result: ""}
        return {tab.error: gr.update(value="", visible=False),
                tab.result: f"<p class='easel-ok'>{html.escape(summary)}</p>"}

    tab.save.click(on_save, inputs=set(tab.fields.values()), outputs=[tab.error, tab.result], api_name="settings_apply")
