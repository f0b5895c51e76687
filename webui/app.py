"""The whole web UI: the top bar (checkpoint and VAE), the tabs, and the events between tabs
(Send to img2img / inpaint / outpaint / extras, PNG Info -> txt2img / img2img)."""

from __future__ import annotations

import gradio as gr

from webui import (
    controlnet,
    extensions,
    extra_networks,
    extras,
    img2img,
    inpaint,
    models,
    outpaint,
    pnginfo,
    settings,
    train,
    txt2img,
)
from webui.brushes import editor_update
from webui.tab import GenerationTab
from webui.top_bar import TopBar, checkpoint_titles, selected_title, top_bar
from webui.widgets import gallery_image, style_names, tab_defaults, updates_where_changed

TITLE = "Easel"
DEFAULT_FIELDS = ("sampler_name", "steps", "width", "height")  # set from the saved settings at page load
CSS = extra_networks.CSS + """
.easel-progress progress { height: 14px; }
.easel-error { color: #c00; }
.easel-token-counter-box { text-align: right; font-size: 0.8em; opacity: 0.75; margin-top: -6px; }
.easel-token-counter-multi { font-weight: bold; }
.easel-warning { color: #b36b00; font-size: 0.9em; }
@media (max-width: 640px) {
  /* a phone: the checkpoint dropdown takes the whole row, so its name is readable */
  #quicksettings { flex-wrap: wrap !important; }
  #quicksettings > .form:has(#sd_model_checkpoint) { min-width: 100% !important; flex-basis: 100% !important; }
  /* the editors' tool column sits beside the picture, not over its left edge */
  #inpaint_editor .pixi-target, #inpaint_editor .pixi-target-crop,
  #img2img_sketch .pixi-target, #img2img_sketch .pixi-target-crop {
    left: 48px !important; width: calc(100% - 48px) !important; }
}
"""


def bind_page_load(demo: gr.Blocks, services, tabs: list[GenerationTab], checkpoint: gr.Dropdown) -> None:
    """At each page load: the saved defaults (sampler, steps, size) into the generation tabs, the styles
    list, and the checkpoint list and choice as they are now; only what differs from the page as built
    is sent."""
    names = (*DEFAULT_FIELDS, "styles")
    outputs = [tab.fields[name] for tab in tabs for name in names if name in tab.fields]

    def on_load():
        defaults = tab_defaults(services)
        updates: dict = {checkpoint: gr.update()}  # never empty: Gradio takes {} for one value
        styles = style_names(services)  # styles saved from another page since this one was built
        for tab in tabs:
            updates.update(updates_where_changed(tab.fields, defaults))
            if "styles" in tab.fields and styles != [choice[0] for choice in tab.fields["styles"].choices]:
                updates[tab.fields["styles"]] = gr.update(choices=styles)
        titles, current = checkpoint_titles(services), selected_title(services)
        if titles != [choice[0] for choice in checkpoint.choices] or current != checkpoint.value:
            updates[checkpoint] = gr.update(choices=titles, value=current)
        return updates

    demo.load(on_load, outputs=[*outputs, checkpoint], queue=False, show_progress="hidden")


def bind_send(source_send: gr.Button, source, tabs: gr.Tabs, target_id: str, target_image,
              target: GenerationTab | None) -> None:
    """A "Send to" button: the selected image (and its parameters) to another tab, which opens."""
    background = target.extra.get("background") if target else None  # an editor's picture, kept on clear
    outputs = [target_image, tabs, *(target.infotext_outputs() if target else []), *([background] if background else [])]

    def send(gallery, selected, infotexts):
        text = infotexts[selected] if infotexts and 0 <= (selected or 0) < len(infotexts) else ""
        image = gallery_image(gallery, selected)
        updates = {target_image: image, tabs: gr.Tabs(selected=target_id)}
        if isinstance(target_image, gr.ImageEditor):  # the brush sized to the picture sent
            updates[target_image] = editor_update(target_image, image)
        if background:
            updates[background] = image
        if target and text:
            updates.update(target.sent_updates(text))
        return updates

    source_send.click(send, inputs=[source.gallery, source.selected, source.infotexts], outputs=outputs)


def create_ui(services) -> gr.Blocks:
    """Build the Blocks app on ``services`` (call ``.queue().launch()`` on it, see webui.server)."""
    ui_event = extensions.collect(services)  # extensions' tabs and options (A1111 builds them before the page)
    with gr.Blocks(title=TITLE) as demo:
        top = top_bar(services)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                t2i = txt2img.create_ui(services)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                i2i = img2img.create_ui(services)
            with gr.Tab("inpaint", id="inpaint", elem_id="tab_inpaint"):
                inp = inpaint.create_ui(services)
            with gr.Tab("outpaint", id="outpaint", elem_id="tab_outpaint"):
                out = outpaint.create_ui(services)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                ext = extras.create_ui(services)
            with gr.Tab("ControlNet", id="controlnet", elem_id="tab_controlnet"):
                cn = controlnet.create_ui(services)
            train.add_tab(services)  # the Train tab (DreamBooth, LoRA, textual inversion), bound
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = pnginfo.create_ui(services)
            with gr.Tab("Models", id="models", elem_id="tab_models"):
                mdl = models.create_ui(services)
            extensions.render_tabs(services, ui_event)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                sett = settings.create_ui(services)
                ext_options = extensions.create_options_ui(services, ui_event.options)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                exts = extensions.create_ui(services)
        txt2img.bind_events(t2i, services)
        img2img.bind_events(i2i, services)
        inpaint.bind_events(inp, services)
        outpaint.bind_events(out, services)
        extras.bind_events(ext, services)
        controlnet.bind_events(cn, services)
        pnginfo.bind_events(png, services)
        settings.bind_events(sett, services, demo)
        models.bind_events(mdl, services)
        extensions.bind_options(ext_options, services)
        extensions.bind_events(exts, services)
        bind_cross_tab(tabs, t2i, i2i, inp, out, ext, png, cn)
        bind_page_load(demo, services, [t2i, i2i, inp, out, cn], top.checkpoint)
        bind_extra_networks(services, top, [t2i, i2i])
    return demo


def bind_extra_networks(services, top: TopBar, tabs: list[GenerationTab]) -> None:
    """Each tab's extra-networks cards (into its prompt and its ControlNet unit 0), and the timer
    that keeps the cards and the checkpoint list current."""
    panels = []
    for tab in tabs:
        ui = tab.extra["cards"]
        unit_model = tab.units.units[0].fields["model"] if tab.units and tab.units.units else None
        extra_networks.bind_events(ui, services, tab.fields["prompt"], tab.panel.gallery, tab.panel.selected, top,
                                   unit_model)
        panels.append(ui)
    extra_networks.bind_auto_refresh(services, top, panels)


def bind_cross_tab(tabs: gr.Tabs, t2i: GenerationTab, i2i: GenerationTab, inp: GenerationTab,
                   out: GenerationTab, ext: extras.ExtrasTab, png: pnginfo.PngInfoTab, cn: GenerationTab) -> None:
    """Send-to buttons of every output panel, and PNG Info's send buttons (parameters, ControlNet
    units included, fill the target tab)."""
    targets = {"img2img": (i2i.image, i2i), "inpaint": (inp.image, inp), "outpaint": (out.image, out),
               "extras": (ext.image, None)}
    for source in (t2i.panel, i2i.panel, inp.panel, out.panel, ext.panel, cn.panel):
        for target_id, button in source.send.items():
            image, target = targets[target_id]
            bind_send(button, source, tabs, target_id, image, target)

    png.send_txt2img.click(lambda text: {**t2i.infotext_updates(text), tabs: gr.Tabs(selected="txt2img")},
                           inputs=[png.parameters], outputs=[tabs, *t2i.infotext_outputs()])

    def to_img2img(text: str, path: str | None):
        updates = {**i2i.infotext_updates(text), tabs: gr.Tabs(selected="img2img")}
        if path:
            updates[i2i.image] = path
        return updates

    png.send_img2img.click(to_img2img, inputs=[png.parameters, png.image],
                           outputs=[tabs, i2i.image, *i2i.infotext_outputs()])
