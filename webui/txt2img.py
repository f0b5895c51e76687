"""The txt2img tab: prompt, sampler, size, seed, hires fix, refiner, ControlNet units and the X/Y plot script.

The ControlNet tab is this tab built again with the prefix "controlnet" and its units open on top
(see webui/controlnet.py)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules import upscalers
from modules.schemas import ControlNetUnit, Txt2ImgRequest, parse_request
from webui import extension_scripts, extra_networks, xyplot
from webui.controlnet_units import controlnet_accordion
from webui.hints import BUNDLED_EXAMPLES, BUNDLED_MODEL, bundled_hint, selected_model_name
from webui.runner import Batch
from webui.tab import GenerationTab, bind_common
from webui.widgets import (
    Fields,
    given,
    output_panel,
    refiner_section,
    sampler_row,
    schedule_choices,
    seed_row,
    size_batch_cfg,
    size_warning_line,
    tab_defaults,
    top_row,
)

PREFIX = "txt2img"


def hires_section(prefix: str, services) -> Fields:
    """The hires fix accordion: its checkbox, upscaler, scale or target size, steps, denoise, sampler."""
    names = [u.name for u in upscalers.list_upscalers(services.settings.models_dir)]
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{prefix}_hires"):
        enable = gr.Checkbox(label="Enable hires. fix", value=False, elem_id=f"{prefix}_enable_hr")
        with gr.Row():
            upscaler = gr.Dropdown(names, value="Latent" if "Latent" in names else names[0], label="Upscaler",
                                   elem_id=f"{prefix}_hr_upscaler")
            steps = gr.Slider(0, 150, value=0, step=1, label="Hires steps (0 = same)", elem_id=f"{prefix}_hires_steps")
            denoise = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="Denoising strength",
                                elem_id=f"{prefix}_denoising_strength")
        with gr.Row():
            scale = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by", elem_id=f"{prefix}_hr_scale")
            resize_x = gr.Slider(0, 2048, value=0, step=8, label="Resize width to (0 = by scale)",
                                 elem_id=f"{prefix}_hr_resize_x")
            resize_y = gr.Slider(0, 2048, value=0, step=8, label="Resize height to (0 = by scale)",
                                 elem_id=f"{prefix}_hr_resize_y")
        with gr.Row():
            hr_sampler = gr.Dropdown(["Use same sampler", *_sampler_names()], value="Use same sampler",
                                     label="Hires sampling method", elem_id=f"{prefix}_hr_sampler")
            hr_scheduler = gr.Dropdown(["Use same scheduler", *schedule_choices()], value="Use same scheduler",
                                       label="Hires schedule type", elem_id=f"{prefix}_hr_scheduler")
        hr_prompt = gr.Textbox(label="Hires prompt (empty = same)", lines=1, elem_id=f"{prefix}_hr_prompt")
        hr_negative = gr.Textbox(label="Hires negative prompt (empty = same)", lines=1,
                                 elem_id=f"{prefix}_hr_neg_prompt")
    return {
        "enable_hr": enable, "hr_upscaler": upscaler, "hr_second_pass_steps": steps, "denoising_strength": denoise,
        "hr_scale": scale, "hr_resize_x": resize_x, "hr_resize_y": resize_y, "hr_sampler_name": hr_sampler,
        "hr_scheduler": hr_scheduler, "hr_prompt": hr_prompt, "hr_negative_prompt": hr_negative,
    }


def _sampler_names() -> list[str]:
    from modules.samplers import SAMPLER_NAMES

    return list(SAMPLER_NAMES)


def create_ui(services, prefix: str = PREFIX, controlnet_first: bool = False) -> GenerationTab:
    """Build the tab's components (call inside a ``gr.Tab``). ``controlnet_first``: the ControlNet
    units open above the settings (the ControlNet tab) instead of a closed accordion below them."""
    defaults = tab_defaults(services)
    top = top_row(prefix, services, example=not controlnet_first)
    if not controlnet_first and selected_model_name(services) == BUNDLED_MODEL:
        gr.Examples([[text] for text in BUNDLED_EXAMPLES], inputs=[top.prompt.fields["prompt"]],
                    label=bundled_hint(services.native_size()), elem_id=f"{prefix}_examples")
    cards = None if controlnet_first else extra_networks.create_ui(prefix, services)
    with gr.Row():
        with gr.Column():
            if controlnet_first:
                units = controlnet_accordion(services, prefix, open=True)
            fields: Fields = {**top.prompt.fields, "styles": top.styles}
            fields.update(sampler_row(prefix, defaults["sampler_name"], defaults["steps"]))
            fields.update(size_batch_cfg(prefix, defaults["width"], defaults["height"]))
            warning = size_warning_line(prefix)
            seed = seed_row(prefix)
            fields.update(seed.fields)
            fields.update(hires_section(prefix, services))
            fields.update(refiner_section(prefix, services))
            if not controlnet_first:
                units = controlnet_accordion(services, prefix)
            script = xyplot.create_ui(prefix, services)
            ext_scripts = extension_scripts.create_ui(services, False, prefix)
        with gr.Column():
            panel = output_panel(prefix, top.generate, top.interrupt, top.skip)
    return GenerationTab(prefix, fields, panel, seed, top.prompt.read_params,
                         counters=top.prompt.counters, extra={"xyplot": script, "extension_scripts": ext_scripts, "cards": cards},
                         units=units, size_warning=warning)


def build_request(values: dict[str, Any], units: list[ControlNetUnit] | None = None) -> Txt2ImgRequest:
    """The typed request from the tab's named values and its enabled ControlNet units; bad values
    raise RequestError naming the field."""
    data = given(values)
    if data.get("hr_sampler_name") == "Use same sampler":
        data["hr_sampler_name"] = None
    if data.get("hr_scheduler") == "Use same scheduler":
        data["hr_scheduler"] = None
    data["controlnet_units"] = list(units or [])
    return parse_request(Txt2ImgRequest, data)


def make_batch(values: dict[str, Any], script: dict[str, Any], services,
               units: list[ControlNetUnit] | None = None) -> Batch:
    """One txt2img job, or the X/Y plot's jobs (shown as a labelled grid) when the script is on."""
    base = build_request(values, units)
    if not script.get("xy_enabled"):
        return Batch([("txt2img", base)])
    return xyplot.plan_batch("txt2img", base, script, services)


def bind_events(tab: GenerationTab, services) -> None:
    """Wire Generate (with the X/Y plot), Interrupt/Skip, seed and read-parameters buttons."""
    script: Fields = tab.extra["xyplot"]
    ext_scripts: extension_scripts.ScriptsUi = tab.extra["extension_scripts"]

    def batch(values: dict[str, Any]) -> Batch:
        planned = make_batch(tab.field_values(values), {k: v for k, v in values.items() if k in script}, services,
                             tab.units.build(values))
        return extension_scripts.with_scripts(planned, ext_scripts, values)

    bind_common(tab, services, batch, extra_inputs={**script, **ext_scripts.fields})
