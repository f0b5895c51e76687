"""Widgets shared by the tabs: sampler row, seed row, the output panel (gallery, infotext,
progress, live preview, Generate/Interrupt/Skip) and the named-field helpers.

Every tab keeps its inputs in a ``dict[str, Component]`` keyed by the request field name. Event
handlers take ``inputs=set(fields.values())`` (Gradio then passes one ``{component: value}``
dict) and turn it back into ``{field name: value}`` with :func:`named_values`; outputs are
returned as ``{component: update}`` dicts. Nothing depends on the order of components.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules import samplers
from modules.infotext import infotext_to_fields, parse_infotext
from modules.schemas import MAX_SEED
from modules.styles import STYLES_FILE, load_styles
from webui import styles_editor
from webui.hints import prompt_placeholder, selected_model_name
from webui.tokens import counter_html

Fields = dict[str, Any]  # field name -> gradio component
RANDOM_SEED = -1
# Buttons carry words, not emoji (an emoji renders as an empty box without an emoji font); their
# tooltips are set by webui/javascript/shortcuts.js.
LABEL_RANDOM = "Random"
LABEL_REUSE = "Reuse"
LABEL_READ_PARAMS = "Read params"  # A1111's "read generation parameters" (↙️)
LABEL_REFRESH = "Refresh"


def named_values(fields: Fields, data: dict) -> dict[str, Any]:
    """``{field name: value}`` from the ``{component: value}`` dict Gradio passes for a set input."""
    return {name: data[comp] for name, comp in fields.items() if comp in data}


def updates_where_changed(fields: Fields, values: dict[str, Any]) -> dict:
    """``{component: value}`` for the named components whose value as built differs from ``values``.

    For page-load events: a new page shows the values the UI was built with, so only what changed
    since (a saved setting) is sent, and nothing the user may already be typing is touched."""
    return {fields[name]: value for name, value in values.items() if name in fields and fields[name].value != value}


def tab_defaults(services) -> dict[str, Any]:
    """The generation tabs' defaults from the saved settings: sampler, steps and size (0 in a size
    setting: the selected checkpoint's native size)."""
    s = services.settings
    native = services.native_size() if not (s.default_width and s.default_height) else 0
    return {"sampler_name": s.default_sampler, "steps": s.default_steps,
            "width": s.default_width or native, "height": s.default_height or native}


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The values that are set: a component the page never rendered (a closed accordion) sends None,
    and the request's default then applies."""
    return {name: value for name, value in values.items() if value is not None}


def style_names(services) -> list[str]:
    """Names in the data folder's styles.csv (empty when there is none)."""
    return sorted(load_styles(services.settings.data_dir / STYLES_FILE))


def schedule_choices() -> list[str]:
    """Schedule type labels for the dropdown (A1111 order)."""
    return [item["label"] for item in samplers.scheduler_list()]


# ---------------------------------------------------------------------------------------------
# Input rows


def sampler_row(prefix: str, default_sampler: str, default_steps: int) -> Fields:
    """Sampler, schedule type and steps; returns their components by field name."""
    with gr.Row():
        sampler = gr.Dropdown(list(samplers.SAMPLER_NAMES), value=default_sampler, label="Sampling method",
                              elem_id=f"{prefix}_sampling")
        scheduler = gr.Dropdown(schedule_choices(), value=samplers.AUTOMATIC, label="Schedule type",
                                elem_id=f"{prefix}_scheduler")
        steps = gr.Slider(1, 150, value=default_steps, step=1, label="Sampling steps", elem_id=f"{prefix}_steps")
    return {"sampler_name": sampler, "scheduler": scheduler, "steps": steps}


@dataclass
class SeedRow:
    fields: Fields
    random_button: gr.Button
    reuse_button: gr.Button


def refiner_section(prefix: str, services) -> Fields:
    """The refiner accordion (A1111's): a checkpoint that takes over at a fraction of the steps."""
    titles = ["None", *(services.checkpoints.title(info) for info in services.checkpoints.list())]
    with gr.Accordion("Refiner", open=False, elem_id=f"{prefix}_refiner"):
        with gr.Row():  # titles, as the infotext's Refiner (pasted parameters) names them
            checkpoint = gr.Dropdown(titles, value="None", label="Checkpoint", allow_custom_value=True,
                                     elem_id=f"{prefix}_refiner_checkpoint")
            switch_at = gr.Slider(0.01, 0.99, value=0.8, step=0.01, label="Switch at",
                                  elem_id=f"{prefix}_refiner_switch_at")
    return {"refiner_checkpoint": checkpoint, "refiner_switch_at": switch_at}


def seed_row(prefix: str) -> SeedRow:
    """Seed with random (-1) and reuse-last buttons, plus variation seed and strength."""
    with gr.Row():
        seed = gr.Number(label="Seed", value=RANDOM_SEED, precision=0, minimum=-1, maximum=MAX_SEED,
                         elem_id=f"{prefix}_seed", scale=4)
        random_button = gr.Button(LABEL_RANDOM, elem_id=f"{prefix}_random_seed", scale=0, min_width=80, size="sm")
        reuse_button = gr.Button(LABEL_REUSE, elem_id=f"{prefix}_reuse_seed", scale=0, min_width=80, size="sm")
    with gr.Accordion("Variation seed", open=False):
        with gr.Row():
            subseed = gr.Number(label="Variation seed", value=RANDOM_SEED, precision=0, minimum=-1,
                                maximum=MAX_SEED, elem_id=f"{prefix}_subseed")
            strength = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Variation strength",
                                 elem_id=f"{prefix}_subseed_strength")
    return SeedRow({"seed": seed, "subseed": subseed, "subseed_strength": strength}, random_button, reuse_button)


def size_batch_cfg(prefix: str, width: int = 512, height: int = 512) -> Fields:
    """Width, height, batch count and size, CFG scale."""
    with gr.Row():
        with gr.Column():
            width = gr.Slider(8, 2048, value=width, step=8, label="Width", elem_id=f"{prefix}_width")
            height = gr.Slider(8, 2048, value=height, step=8, label="Height", elem_id=f"{prefix}_height")
        with gr.Column():
            n_iter = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{prefix}_batch_count")
            batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{prefix}_batch_size")
    cfg = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id=f"{prefix}_cfg_scale")
    return {"width": width, "height": height, "n_iter": n_iter, "batch_size": batch_size, "cfg_scale": cfg}


def size_warning_line(prefix: str) -> gr.HTML:
    """The one line under the size sliders that warns of a size far from the checkpoint's native one
    (filled by ``webui.hints.size_warning`` as width and height change)."""
    return gr.HTML("", elem_id=f"{prefix}_size_warning", container=False, padding=False)


@dataclass
class PromptRow:
    fields: Fields
    read_params: gr.Button
    counters: dict[str, gr.HTML]  # prompt field name -> its token counter


def token_counter(elem_id: str) -> gr.HTML:
    """The ``n/75`` under a prompt box (filled by ``webui.tokens.counter_html`` as the prompt changes)."""
    return gr.HTML(counter_html(""), elem_id=elem_id, elem_classes=["easel-token-counter-box"], container=False,
                   padding=False)


def prompt_row(prefix: str, placeholder: str | None = None) -> PromptRow:
    """Prompt and negative prompt with their token counters, and the read-generation-parameters button.
    ``placeholder``: the prompt box's (default: the shortcuts)."""
    with gr.Row():
        with gr.Column(scale=8):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{prefix}_prompt",
                                placeholder=placeholder or prompt_placeholder(None, LABEL_READ_PARAMS))
            prompt_counter = token_counter(f"{prefix}_token_counter")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}_neg_prompt")
            negative_counter = token_counter(f"{prefix}_neg_token_counter")
        read_params = gr.Button(LABEL_READ_PARAMS, elem_id=f"{prefix}_read_params", scale=0, min_width=80, size="sm")
    return PromptRow({"prompt": prompt, "negative_prompt": negative}, read_params,
                     {"prompt": prompt_counter, "negative_prompt": negative_counter})


@dataclass
class TopRow:
    """A generation tab's top row: prompts (with Read params), Generate/Interrupt/Skip and the styles."""

    prompt: PromptRow
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    styles: gr.Dropdown


def top_row(prefix: str, services, example: bool = False) -> TopRow:
    """The prompt row on the left; Generate/Interrupt/Skip, the styles dropdown and the styles
    editor on the right (the editor's events are bound here: they touch only this row).
    ``example``: the prompt's placeholder is an example the selected model knows (the bundled one's)."""
    with gr.Row():
        with gr.Column(scale=6):
            model = selected_model_name(services) if example else None
            prompt = prompt_row(prefix, prompt_placeholder(model, LABEL_READ_PARAMS))
        with gr.Column(scale=2):
            generate, interrupt, skip = generate_buttons(prefix)
            styles = gr.Dropdown(style_names(services), value=[], multiselect=True, label="Styles",
                                 elem_id=f"{prefix}_styles")
            editor = styles_editor.create_ui(prefix, style_names(services))
    styles_editor.bind_events(editor, services, prompt.fields["prompt"], prompt.fields["negative_prompt"], styles)
    return TopRow(prompt, generate, interrupt, skip, styles)


# ---------------------------------------------------------------------------------------------
# Output panel


@dataclass
class OutputPanel:
    """Generate/Interrupt/Skip, progress, live preview, gallery, infotext, error box and the state."""

    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    infotext: gr.Textbox
    error: gr.Textbox
    job_id: gr.State
    infotexts: gr.State
    seeds: gr.State
    selected: gr.State
    send: dict[str, gr.Button] = field(default_factory=dict)

    def job_outputs(self) -> list:
        return [self.generate, self.interrupt, self.skip, self.progress, self.preview, self.gallery,
                self.infotext, self.error, self.job_id, self.infotexts, self.seeds, self.selected]


SEND_TARGETS = ("img2img", "inpaint", "outpaint", "extras")


def generate_buttons(prefix: str) -> tuple[gr.Button, gr.Button, gr.Button]:
    """Generate, and Interrupt/Skip (hidden until a job runs)."""
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate")
        interrupt = gr.Button("Interrupt", visible=False, elem_id=f"{prefix}_interrupt")
        skip = gr.Button("Skip", visible=False, elem_id=f"{prefix}_skip")
    return generate, interrupt, skip


def output_panel(prefix: str, generate: gr.Button, interrupt: gr.Button, skip: gr.Button,
                 send_targets: tuple[str, ...] = SEND_TARGETS) -> OutputPanel:
    """The right-hand column of a generation tab."""
    progress = gr.HTML(progress_html(None, None), elem_id=f"{prefix}_progress")
    preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id=f"{prefix}_preview")
    gallery = gr.Gallery(label="Output", format="png", type="pil", columns=2, elem_id=f"{prefix}_gallery",
                         interactive=False, object_fit="contain")  # whole images: a 192x64 outpaint is not cropped
    send = {}
    with gr.Row():
        for target in send_targets:
            send[target] = gr.Button(f"Send to {target}", size="sm", elem_id=f"{prefix}_send_to_{target}")
    infotext = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id=f"{prefix}_infotext")
    error = gr.Textbox(label="Error", visible=False, interactive=False, elem_id=f"{prefix}_error")
    return OutputPanel(generate, interrupt, skip, progress, preview, gallery, infotext, error,
                       gr.State(""), gr.State([]), gr.State([]), gr.State(0), send)


def progress_html(step: int | None, total: int | None, eta: float | None = None, queue_position: int = 0,
                  textinfo: str = "") -> str:
    """The progress bar: step count and ETA, or the place in the queue while waiting."""
    if step is None or total is None:
        return "<div class='easel-progress' data-state='idle'></div>"
    if queue_position > 0:
        text = f"Waiting in queue: position {queue_position}"
        percent = 0
    else:
        percent = int(100 * step / total) if total else 0
        eta_text = f", ETA {eta:.0f}s" if eta is not None else ""
        text = f"Step {step}/{total}{eta_text}"
        if textinfo:
            text += f" — {textinfo}"
    return (f"<div class='easel-progress' data-state='running' data-step='{step}' data-total='{total}'>"
            f"<progress max='100' value='{percent}' style='width:100%'></progress>"
            f"<span class='easel-progress-text'>{html.escape(text)}</span></div>")


# ---------------------------------------------------------------------------------------------
# Seed buttons and infotext -> fields


def gallery_image(gallery: list | None, selected: int) -> Any:
    """The selected image of a gallery value (``[(image, caption), ...]``); None when empty."""
    if not gallery:
        return None
    item = gallery[min(max(selected or 0, 0), len(gallery) - 1)]
    return item[0] if isinstance(item, (tuple, list)) else item


def reuse_seed(seeds: list[int], selected: int) -> int:
    """The seed of the selected gallery image of the last run (-1 when there is none)."""
    if not seeds:
        return RANDOM_SEED
    return int(seeds[min(max(selected, 0), len(seeds) - 1)])


def fields_from_infotext(text: str) -> dict[str, Any]:
    """Request fields from an A1111 infotext, with a legacy sampler name split into sampler and schedule."""
    values = infotext_to_fields(parse_infotext(text or ""))
    values.pop("_unparsed", None)
    sampler = values.get("sampler_name")
    if sampler:
        try:
            values["sampler_name"], values["scheduler"] = samplers.resolve(sampler, values.get("scheduler"))
        except ValueError:
            pass  # an unknown sampler is shown as is; submitting names the problem
    return values


def infotext_updates(fields: Fields, text: str, keep_model: bool = True) -> dict:
    """``{component: value}`` for every field of the tab that the infotext sets."""
    values = fields_from_infotext(text)
    if keep_model:
        values.pop("sd_model_checkpoint", None)
    return {fields[name]: value for name, value in values.items() if name in fields}

