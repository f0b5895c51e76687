"""The Models tab: install a model from a Hugging Face repo id or a URL (progress, cancel), list the
installed ones with size and hash, delete one (after a confirmation).

Installs go through the services' download worker (``modules.install_jobs``), as the API's do: the
tab only builds an ``InstallRequest`` and shows the job's state.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.installer import MODEL_TYPES, InstallError, InstallRequest, delete_installed, list_installed
from modules.schemas import RequestError, parse_request
from modules.training.job import refresh_lists

PREFIX = "models"
AUTOMATIC = "Automatic (from the contents)"
COLUMNS = ["type", "name", "size", "short hash"]


@dataclass
class ModelsTab:
    source: gr.Textbox
    model_type: gr.Dropdown
    sha256: gr.Textbox
    allow_pickle: gr.Checkbox
    install: gr.Button
    cancel: gr.Button
    status: gr.HTML
    recent: gr.HTML
    job_id: gr.State
    table: gr.Dataframe
    hashes: gr.Checkbox
    refresh: gr.Button
    choice: gr.Dropdown
    delete: gr.Button
    confirm_row: gr.Row
    confirm: gr.Button
    keep: gr.Button
    delete_status: gr.HTML


def downloads_notice(services) -> str:
    if services.installer.target.allow_downloads:
        return ""
    return ("<p class='easel-error'>Downloads are off: Easel was started without <code>--allow-downloads</code>. "
            "Restart with <code>./launch.sh --allow-downloads</code> to install from the hub or a URL, or install a "
            "file on this machine with <code>./launch.sh install PATH</code>.</p>")


def create_ui(services) -> ModelsTab:
    """Build the tab (call inside a ``gr.Tab``)."""
    gr.HTML(downloads_notice(services), elem_id=f"{PREFIX}_notice")
    with gr.Row():
        source = gr.Textbox(label="Hugging Face repo id or URL", elem_id=f"{PREFIX}_source", scale=4,
                            placeholder="owner/name/FILE.safetensors, owner/name@revision, or https://...")
        model_type = gr.Dropdown([AUTOMATIC, *MODEL_TYPES], value=AUTOMATIC, label="Type",
                                 elem_id=f"{PREFIX}_type", scale=1)
    with gr.Row():
        sha256 = gr.Textbox(label="sha256 (optional; the hub's is always checked)", elem_id=f"{PREFIX}_sha256", scale=3)
        allow_pickle = gr.Checkbox(False, label="Allow pickle-format files (.ckpt/.pt/.bin, read with the safe loader)",
                                   elem_id=f"{PREFIX}_allow_pickle", scale=2)
    with gr.Row():
        install = gr.Button("Install", variant="primary", elem_id=f"{PREFIX}_install")
        cancel = gr.Button("Cancel", elem_id=f"{PREFIX}_cancel")
    status = gr.HTML(elem_id=f"{PREFIX}_status", elem_classes=["easel-progress"])
    recent = gr.HTML(recent_installs_html(services), elem_id=f"{PREFIX}_recent")
    job_id = gr.State(None)
    gr.Markdown("### Installed models")
    with gr.Row():
        hashes = gr.Checkbox(False, label="Show hashes (computed once per file, slow for large files)",
                             elem_id=f"{PREFIX}_hashes")
        refresh = gr.Button("Refresh", elem_id=f"{PREFIX}_refresh", scale=0)
    table = gr.Dataframe(headers=COLUMNS, value=installed_rows(services, False), interactive=False,
                         elem_id=f"{PREFIX}_table")
    with gr.Row():
        choice = gr.Dropdown(model_choices(services), label="Model to delete", elem_id=f"{PREFIX}_choice", scale=4)
        delete = gr.Button("Delete…", variant="stop", elem_id=f"{PREFIX}_delete", scale=1)
    with gr.Row(visible=False) as confirm_row:
        confirm = gr.Button("Yes, delete the file", variant="stop", elem_id=f"{PREFIX}_confirm")
        keep = gr.Button("No, keep it", elem_id=f"{PREFIX}_keep")
    delete_status = gr.HTML(elem_id=f"{PREFIX}_delete_status")
    return ModelsTab(source, model_type, sha256, allow_pickle, install, cancel, status, recent, job_id, table, hashes,
                     refresh, choice, delete, confirm_row, confirm, keep, delete_status)


# --------------------------------------------------------------------------- what the events do


def install_request(source: str, model_type: str, sha256: str, allow_pickle: bool) -> InstallRequest:
    """The typed request from the tab's fields (a RequestError names a bad one)."""
    return parse_request(InstallRequest, {"source": (source or "").strip(), "sha256": (sha256 or "").strip() or None,
                                          "type": None if model_type == AUTOMATIC else model_type,
                                          "allow_pickle": bool(allow_pickle)})


def progress_html(snapshot: dict[str, Any]) -> str:
    """One line: state, bytes, a progress bar; the result or the error at the end."""
    state, done, total = snapshot["state"], snapshot["done_bytes"], snapshot["total_bytes"]
    if state == "failed":
        return f"<span class='easel-error'>Install failed: {html.escape(snapshot['error'] or '')}</span>"
    if state == "cancelled":
        return "Install cancelled; the partial file was removed."
    if state == "done":
        r = snapshot["result"]
        return (f"Installed {html.escape(r['type'])} <b>{html.escape(r['name'])}</b> ({r['size'] / 2**20:.1f} MiB, "
                f"sha256 {r['sha256'][:10]}…). {html.escape(r['note'])}")
    size = f"{done / 2**20:.1f} of {total / 2**20:.1f} MiB" if total else f"{done / 2**20:.1f} MiB"
    bar = f"<progress value='{done}' max='{total}'></progress>" if total else ""
    return f"{html.escape(snapshot['stage'])}: {size} {bar}"


def run_install(services, source: str, model_type: str, sha256: str, allow_pickle: bool, poll_seconds: float = 0.3):
    """Submit, then stream (job id, status HTML) until the install ends; errors are shown, never raised."""
    try:
        job = services.installer.submit(install_request(source, model_type, sha256, allow_pickle), from_client=True)
    except (InstallError, RequestError) as err:
        yield None, f"<span class='easel-error'>{html.escape(str(err))}</span>"
        return
    while not job.wait(poll_seconds):
        yield job.id, progress_html(job.snapshot())
    yield None, progress_html(job.snapshot())


def recent_installs_html(services, count: int = 5) -> str:
    """The latest installs (from this tab, another browser tab or the API), newest first."""
    jobs = services.installer.jobs()[-count:][::-1]
    if not jobs:
        return ""
    snapshots = [job.snapshot() for job in jobs]  # the source with any token in it masked
    rows = "".join(f"<li><code>{html.escape(snap['source'])}</code>: {progress_html(snap)}</li>" for snap in snapshots)
    return f"<details><summary>Recent installs ({len(jobs)})</summary><ul>{rows}</ul></details>"


def cancel_install(services, job_id: str | None) -> str:
    if not job_id:
        return "No install is running."
    services.installer.cancel(job_id)
    return "Cancelling…"


def human_size(size: int) -> str:
    """``1.4 KiB``, ``26.0 MiB``, ``6.46 GiB``."""
    if size >= 2**30:
        return f"{size / 2**30:.2f} GiB"
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def installed_rows(services, hashes: bool) -> list[list[Any]]:
    digest = services.checkpoints.file_short_hash if hashes else None
    return [[r["type"], r["name"], human_size(r["size"]), r["sha256"] or ""]
            for r in list_installed(services.installer.target, digest)]


def model_choices(services) -> list[str]:
    """``type: name`` of every installed model file."""
    return [f"{r['type']}: {r['name']}" for r in list_installed(services.installer.target)]


def delete_model(services, choice: str | None) -> str:
    """Delete the chosen ``type: name`` file and refresh the lists; a message either way."""
    if not choice or ": " not in choice:
        return "<span class='easel-error'>Choose a model to delete.</span>"
    kind, name = choice.split(": ", 1)
    try:
        path = delete_installed(services.installer.target, kind, name)
    except InstallError as err:
        return f"<span class='easel-error'>{html.escape(str(err))}</span>"
    refresh_lists(services)
    return f"Deleted {html.escape(path.name)}."


def bind_events(tab: ModelsTab, services) -> None:
    """Install with streamed progress, cancel, refresh the list, delete after confirming."""

    def refreshed(hashes: bool):
        return installed_rows(services, hashes), gr.update(choices=model_choices(services), value=None)

    def refreshed_all(hashes: bool):
        return *refreshed(hashes), recent_installs_html(services)

    def on_install(source, model_type, sha256, allow_pickle, hashes):
        for job_id, line in run_install(services, source, model_type, sha256, allow_pickle):
            yield job_id, line, gr.update(), gr.update(), gr.update()
        yield None, gr.update(), *refreshed_all(hashes)

    tab.install.click(on_install, inputs=[tab.source, tab.model_type, tab.sha256, tab.allow_pickle, tab.hashes],
                      outputs=[tab.job_id, tab.status, tab.table, tab.choice, tab.recent], concurrency_limit=None)
    tab.cancel.click(lambda job_id: cancel_install(services, job_id), inputs=[tab.job_id], outputs=[tab.status])
    tab.refresh.click(refreshed_all, inputs=[tab.hashes], outputs=[tab.table, tab.choice, tab.recent])
    tab.hashes.change(refreshed, inputs=[tab.hashes], outputs=[tab.table, tab.choice])
    tab.delete.click(lambda choice: gr.update(visible=bool(choice)), inputs=[tab.choice], outputs=[tab.confirm_row])
    tab.keep.click(lambda: gr.update(visible=False), outputs=[tab.confirm_row])

    def on_confirm(choice, hashes):
        message = delete_model(services, choice)
        return message, gr.update(visible=False), *refreshed(hashes)

    tab.confirm.click(on_confirm, inputs=[tab.choice, tab.hashes],
                      outputs=[tab.delete_status, tab.confirm_row, tab.table, tab.choice])
