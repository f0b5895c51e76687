"""A1111-style fixture: an always-on script rewriting p.all_prompts, an option, a route, a tab."""

from pathlib import Path

import gradio as gr

from modules import paths, script_callbacks, scripts, shared
from modules.processing import Processed, StableDiffusionProcessing  # noqa: F401 - must import
from modules.ui_components import FormRow, InputAccordion

assert Path(paths.models_path).name == "models" and (Path(scripts.basedir()) / "scripts" / "rewriter.py").is_file()


class Rewriter(scripts.Script):
    def title(self):
        return "Prompt rewriter"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with InputAccordion(False, label="Prompt rewriter") as enabled:
            with FormRow():
                suffix = gr.Textbox(value=" by the rewriter", label="Suffix")
        return [enabled, suffix]

    def process(self, p, enabled, suffix):
        if not enabled:
            return
        p.all_prompts = [f"{prompt}{suffix} {i}" for i, prompt in enumerate(p.all_prompts)]
        p.extra_generation_params["Rewriter"] = suffix.strip()
        p.extra_generation_params["Rewriter word"] = shared.opts.rewriter_word


def on_ui_settings():
    section = ("rewriter", "Prompt rewriter")
    shared.opts.add_option("rewriter_word", shared.OptionInfo("cat", "Word the rewriter records", section=section)
                           .info("any word").needs_reload_ui())


def on_app_started(demo, app):
    @app.get("/rewriter/ping")
    def ping():
        return {"word": shared.opts.rewriter_word, "flag": shared.cmd_opts.rewriter_flag}


def on_ui_tabs():
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown("Rewriter tab", elem_id="rewriter_markdown")
    return [(tab, "Rewriter", "rewriter_tab")]


script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_app_started(on_app_started)
script_callbacks.on_ui_tabs(on_ui_tabs)


def on_infotext_pasted(infotext, params):
    if "Rewriter" in params:  # a parameter of this extension read back: the steps it implies
        params["Steps"] = "1"


script_callbacks.on_infotext_pasted(on_infotext_pasted)
