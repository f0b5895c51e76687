"""The top bar: the checkpoint dropdown (with Refresh and a status line) and the VAE dropdown.
The list keeps itself current without Refresh: see ``webui.extra_networks.bind_auto_refresh``."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

import gradio as gr

from modules.checkpoints import CheckpointError
from modules.config import make_settings, save_settings
from webui.runner import user_message
from webui.widgets import LABEL_REFRESH


@dataclass
class TopBar:
    checkpoint: gr.Dropdown
    refresh: gr.Button
    vae: gr.Dropdown
    status: gr.HTML


def checkpoint_titles(services) -> list[str]:
    """A1111 titles (``name [hash]``) of the checkpoints found in the model folders."""
    return [services.checkpoints.title(info) for info in services.checkpoints.list()]


def selected_title(services) -> str | None:
    """The title of the checkpoint new jobs run on; None when there are no checkpoints."""
    try:
        return services.checkpoints.title(services.checkpoints.get(services.selected_checkpoint))
    except CheckpointError:
        return None


def vae_choices(services) -> list[str]:
    """"Automatic", "None" and the files in models/VAE."""
    return ["Automatic", "None", *services.vae_files()]


def choose_vae(services, name: str) -> str:
    """Save the VAE choice (A1111's sd_vae option); jobs submitted from now on use it."""
    try:
        services.resolve_vae(name)
        new = make_settings(**{**services.settings.model_dump(), "sd_vae": name})
    except ValueError as err:
        gr.Warning(str(err))
        return f"<span class='easel-error'>{html.escape(str(err))}</span>"
    save_settings(new)
    services.update_settings(new)
    return f"VAE: {html.escape(name)} (used by jobs submitted from now on)"


def switch_checkpoint(services, title: str, poll_seconds: float = 0.2):
    """Queue the model switch and stream its status line; errors are shown, never raised."""
    if not title:
        return
    try:
        job = services.select_checkpoint(title)
    except (CheckpointError, ValueError, RuntimeError) as err:
        gr.Warning(str(err))
        yield f"<span class='easel-error'>{html.escape(str(err))}</span>"
        return
    started = time.monotonic()
    while not job.is_finished:
        try:
            position = services.queue.position(job.id)
        except KeyError:
            position = -1
        waiting = f" (waiting, queue position {position})" if position > 0 else ""
        yield f"Loading {html.escape(title)}{waiting}… {time.monotonic() - started:.0f}s"
        time.sleep(poll_seconds)
    try:
        loaded = job.wait(0)
    except Exception as err:  # the run's own error, one line without its type name
        message = user_message(err)
        gr.Warning(message)
        yield f"<span class='easel-error'>{html.escape(message)}</span>"
    else:
        yield f"Loaded {html.escape(str(loaded))} in {time.monotonic() - started:.1f}s"


def top_bar(services) -> TopBar:
    """Checkpoint dropdown with refresh and status; VAE dropdown."""
    with gr.Row(elem_id="quicksettings"):
        checkpoint = gr.Dropdown(checkpoint_titles(services), value=selected_title(services),
                                 label="Stable Diffusion checkpoint", elem_id="sd_model_checkpoint", scale=4)
        refresh = gr.Button(LABEL_REFRESH, elem_id="refresh_sd_model_checkpoint", scale=0, min_width=80, size="sm")
        vae = gr.Dropdown(vae_choices(services), value=services.settings.sd_vae, label="SD VAE",
                          elem_id="sd_vae", scale=2)
        status = gr.HTML(elem_id="sd_model_status")

    def on_refresh():
        services.checkpoints.refresh()
        return gr.update(choices=checkpoint_titles(services), value=selected_title(services)), \
            gr.update(choices=vae_choices(services))

    def on_choose(title: str):
        yield from switch_checkpoint(services, title)

    refresh.click(on_refresh, outputs=[checkpoint, vae])
    checkpoint.input(on_choose, inputs=[checkpoint], outputs=[status], concurrency_limit=None)
    vae.input(lambda name: choose_vae(services, name), inputs=[vae], outputs=[status])
    return TopBar(checkpoint, refresh, vae, status)

