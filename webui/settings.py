"""The Settings tab: output folders, file name pattern, checkpoint cache, memory mode, batched queue, live preview,
default sampler, steps and size, sampler parameters, token merging. Saved to config.json and applied at once where possible; a bad
value shows its error and nothing is saved.

The tab shows the saved settings, read when the page loads (not those of the server's start), and
remembers what it showed: Apply writes only the fields the user changed since, so a page opened
before another client's change never writes stale values back over it. "Reload UI" reloads the
page: every tab then starts from the saved defaults (see ``webui.defaults``)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules import samplers
from modules.config import TOKEN_MERGING_MAX, Settings, SettingsError, save_settings
from modules.settings_update import validate_change
from webui.widgets import Fields, named_values, updates_where_changed

PREFIX = "settings"
# Settings read once at start-up; saving them takes effect at the next start.
RESTART_NEEDED = ("memory_mode",)
RELOAD_PAGE_JS = "() => { window.location.reload(); }"


@dataclass
class SettingsTab:
    fields: Fields
    save: gr.Button
    reload: gr.Button
    result: gr.HTML
    error: gr.Textbox
    shown: gr.State  # {name: value} the page shows as saved: what Apply compares the form with


def create_ui(services) -> SettingsTab:
    """Build the tab (call inside a ``gr.Tab``), filled from the current settings."""
    s = services.settings
    with gr.Column():
        with gr.Row():
            save = gr.Button("Apply settings", variant="primary", elem_id=f"{PREFIX}_submit")
            reload = gr.Button("Reload UI", elem_id=f"{PREFIX}_reload_ui")
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
            fields["batch_queue_jobs"] = gr.Checkbox(
                s.batch_queue_jobs, label="Batched queue: run waiting txt2img jobs with the same model, size, sampler,"
                                          " steps and CFG as one batch (same images, more images per second)",
                elem_id=f"{PREFIX}_batch_queue_jobs")
            fields["batch_queue_max"] = gr.Number(s.batch_queue_max, precision=0,
                                                  label="Batched queue: most images in one batch (1-64)",
                                                  elem_id=f"{PREFIX}_batch_queue_max")
        with gr.Accordion("Generation (new defaults reach the tabs at the next page load: Reload UI)", open=True):
            fields["show_progress_every_n_steps"] = gr.Number(
                s.show_progress_every_n_steps, precision=0, label="Live preview every N steps (0 = off)",
                elem_id=f"{PREFIX}_show_progress_every_n_steps")
            fields["default_sampler"] = gr.Dropdown(list(samplers.SAMPLER_NAMES), value=s.default_sampler,
                                                    label="Default sampler", elem_id=f"{PREFIX}_default_sampler")
            fields["default_steps"] = gr.Number(s.default_steps, precision=0, label="Default steps (1-150)",
                                                elem_id=f"{PREFIX}_default_steps")
            with gr.Row():
                fields["default_width"] = gr.Number(s.default_width, precision=0, step=8,
                                                    label="Default width (0 = the checkpoint's native size)",
                                                    elem_id=f"{PREFIX}_default_width")
                fields["default_height"] = gr.Number(s.default_height, precision=0, step=8,
                                                     label="Default height (0 = the checkpoint's native size)",
                                                     elem_id=f"{PREFIX}_default_height")
        with gr.Accordion("Sampler parameters", open=False):
            fields.update(sampler_parameter_fields(s))
        with gr.Accordion("Optimizations", open=False):
            fields.update(token_merging_fields(s))
    return SettingsTab(fields, save, reload, result, error, gr.State(saved_values(s, fields)))


# A1111's "Sampler parameters" section: (setting, label, is an integer)
SAMPLER_PARAMETERS = (
    ("eta_ancestral", "Eta for ancestral and SDE samplers (noise amount; 1 = A1111's default)", False),
    ("eta_ddim", "Eta for DDIM (0 = deterministic)", False),
    ("eta_noise_seed_delta", "Eta noise seed delta (ENSD; added to the seeds of the step noise)", True),
    ("s_churn", "Sigma churn (Euler, Heun, DPM2)", False),
    ("s_tmin", "Sigma tmin (churn from this sigma up)", False),
    ("s_tmax", "Sigma tmax (churn up to this sigma; 0 = no bound)", False),
    ("s_noise", "Sigma noise (scale of added noise)", False),
    ("sigma_min", "Schedule min sigma (0 = the model's)", False),
    ("sigma_max", "Schedule max sigma (0 = the model's)", False),
    ("rho", "Schedule rho for Karras and Polyexponential (0 = the schedule's own)", False),
    ("uni_pc_order", "UniPC order", True),
)


def sampler_parameter_fields(s: Settings) -> Fields:
    """The sampler parameters (``modules.samplers.SamplerSettings``), one box each."""
    fields: Fields = {}
    for name, label, integer in SAMPLER_PARAMETERS:
        fields[name] = gr.Number(getattr(s, name), precision=0 if integer else None, label=label,
                                 elem_id=f"{PREFIX}_{name}")
    fields["always_discard_next_to_last_sigma"] = gr.Checkbox(
        s.always_discard_next_to_last_sigma, label="Always discard next-to-last sigma",
        elem_id=f"{PREFIX}_always_discard_next_to_last_sigma")
    fields["sgm_noise_multiplier"] = gr.Checkbox(
        s.sgm_noise_multiplier, label="SGM noise multiplier (initial noise as SDXL's reference code)",
        elem_id=f"{PREFIX}_sgm_noise_multiplier")
    return fields


# A1111's token merging options (modules.token_merging): (setting, label)
TOKEN_MERGING = (
    ("token_merging_ratio", "Token merging ratio (faster attention, changed images; 0 = off)"),
    ("token_merging_ratio_img2img", "Token merging ratio for img2img (0 = the one above)"),
    ("token_merging_ratio_hr", "Token merging ratio for the hires pass (0 = the first pass's)"),
)


def token_merging_fields(s: Settings) -> Fields:
    """A1111's token merging sliders (0 to 0.9)."""
    return {name: gr.Slider(0.0, TOKEN_MERGING_MAX, value=getattr(s, name), step=0.1, label=label,
                            elem_id=f"{PREFIX}_{name}")
            for name, label in TOKEN_MERGING}


def saved_values(settings: Settings, fields: Fields) -> dict[str, Any]:
    """``{name: value}`` of ``settings`` for the tab's fields."""
    return {name: getattr(settings, name) for name in fields}


def validate(services, values: dict[str, Any]) -> Settings:
    """The new settings, or SettingsError naming the bad value (nothing is changed).

    The checks are the API's too (``modules.settings_update.validate_change``); an emptied box is
    refused here."""
    missing = [name for name, value in values.items() if value is None or value == ""]
    if missing:
        raise SettingsError(f"invalid settings: {', '.join(missing)}: a value is required", field=missing[0])
    return validate_change(services.settings, values, services.access)


def user_changes(values: dict[str, Any], shown: dict[str, Any] | None) -> dict[str, Any]:
    """The form's values that differ from what the page showed as saved (all of them without ``shown``)."""
    if shown is None:
        return dict(values)
    return {name: value for name, value in values.items() if name not in shown or value != shown[name]}


def apply(services, values: dict[str, Any], shown: dict[str, Any] | None = None) -> str:
    """Validate the user's changes (``values`` that differ from ``shown``), save config.json, hand the
    settings to the services; returns a summary line naming how many settings changed."""
    changes = user_changes(values, shown)
    if not changes:
        return "Nothing to save: no setting was changed."
    current = services.settings
    new = validate(services, changes)
    changed = [name for name in changes if getattr(new, name) != getattr(current, name)]
    if not changed:
        return "Nothing to save: the settings already hold these values."
    save_settings(new)
    services.update_settings(new)
    later = [name for name in changed if name in RESTART_NEEDED]
    text = f"Saved {len(changed)} changed setting(s) to {new.config_file}: {', '.join(changed)}"
    if later:
        text += f"; {', '.join(later)} applies at the next start"
    return text + "."


def bind_events(tab: SettingsTab, services, demo: gr.Blocks) -> None:
    """Page load fills the saved values; Apply (an error box for bad values; else a summary line,
    and the form shows the settings as saved now, other clients' changes included); Reload UI."""
    def on_load():
        saved = saved_values(services.settings, tab.fields)
        return {**updates_where_changed(tab.fields, saved), tab.shown: saved}

    demo.load(on_load, outputs=[*tab.fields.values(), tab.shown], queue=False, show_progress="hidden")

    def on_save(data: dict):
        values = named_values(tab.fields, data)
        try:
            summary = apply(services, values, data[tab.shown])
        except SettingsError as err:
            gr.Warning(str(err))
            return {tab.error: gr.update(value=str(err), visible=True), tab.result: ""}
        saved = saved_values(services.settings, tab.fields)  # other clients' changes included
        return {tab.error: gr.update(value="", visible=False),
                tab.result: f"<p class='easel-ok'>{html.escape(summary)}</p>",
                tab.shown: saved, **{tab.fields[name]: value for name, value in saved.items()}}

    tab.save.click(on_save, inputs={*tab.fields.values(), tab.shown},
                   outputs=[tab.error, tab.result, tab.shown, *tab.fields.values()], api_name="settings_apply")
    tab.reload.click(None, js=RELOAD_PAGE_JS)
