"""The Train tab: DreamBooth (full), DreamBooth-LoRA and textual inversion on the selected checkpoint.

The tab only builds a ``TrainRequest`` (``modules.training.job.build_request``) and submits it to the
job queue; a ``gr.Timer`` then polls the job's monitor once a second for the progress bar, the loss
curve (``gr.LinePlot``), the latest sample images, warnings and errors. Start trains (continuing a
saved state of the same training if one exists), Resume insists on continuing one, Cancel stops
it and keeps its state. While it trains it owns the worker: generation from the other tabs waits
in the queue, and the status line says how many jobs wait.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from modules.jobs import JobState
from modules.training import job as training
from modules.training.config import LORA_TARGETS, LR_SCHEDULERS, METHODS
from webui.widgets import Fields, given, named_values, progress_html

PREFIX = "train"
POLL_SECONDS = 1.0
METHOD_LABELS = {"dreambooth": "DreamBooth (full model)", "lora": "DreamBooth-LoRA", "textual_inversion": "Textual inversion"}
# 0 in the form = the request's default
ZERO_IS_DEFAULT = ("learning_rate", "resolution", "lora_alpha", "snr_gamma", "token_learning_rate",
                   "text_encoder_learning_rate")
EMPTY_IS_DEFAULT = ("output_name", "token", "init_lora", "instance_dir", "class_prompt", "class_dir")


@dataclass
class TrainTab:
    fields: Fields
    files: gr.File
    start: gr.Button
    resume: gr.Button
    cancel: gr.Button
    progress: gr.HTML
    status: gr.HTML
    warnings: gr.HTML
    error: gr.Textbox
    loss: gr.LinePlot
    samples: gr.Gallery
    output: gr.Textbox
    job_id: gr.State
    timer: gr.Timer

    def outputs(self) -> list:
        return [self.start, self.resume, self.cancel, self.progress, self.status, self.warnings, self.error, self.loss,
                self.samples, self.output, self.job_id, self.timer]


def empty_losses() -> pd.DataFrame:
    return pd.DataFrame({"step": pd.Series([], dtype="int64"), "loss": pd.Series([], dtype="float64")})


def create_ui(services) -> TrainTab:
    """Build the tab (call inside a ``gr.Tab``); elem ids start with ``train_``."""
    native = services.native_size()
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown("Trains on the checkpoint selected at the top. The result appears in the checkpoint list "
                        "(DreamBooth), as `<lora:NAME:1>` (LoRA) or as the word NAME in prompts (textual inversion).")
            method = gr.Radio([(label, key) for key, label in METHOD_LABELS.items()], value="lora", label="Method",
                              elem_id=f"{PREFIX}_method")
            files = gr.File(file_count="multiple", file_types=["image", ".txt"], type="filepath",
                            label="Instance images (3-30), with NAME.txt captions if you like",
                            elem_id=f"{PREFIX}_images")
            instance_dir = gr.Textbox(label="…or a folder of images on the server", elem_id=f"{PREFIX}_instance_dir")
            instance_prompt = gr.Textbox("a photo of zwx person", label="Instance prompt ([filewords]: the image's caption)",
                                         elem_id=f"{PREFIX}_instance_prompt")
            class_prompt = gr.Textbox("a photo of a person", label="Class prompt (several lines: one per class image, cycling)",
                                      lines=2, max_lines=8, elem_id=f"{PREFIX}_class_prompt")
            with gr.Row():
                token = gr.Textbox(label="Identifier (empty: the instance prompt's words the class prompt lacks)",
                                   elem_id=f"{PREFIX}_token")
                output_name = gr.Textbox(label="Output name (empty: the identifier, e.g. zwx)", elem_id=f"{PREFIX}_output_name")
            with gr.Row():
                prior = gr.Checkbox(False, label="Prior preservation", elem_id=f"{PREFIX}_prior")
                overwrite = gr.Checkbox(False, label="Overwrite an existing model", elem_id=f"{PREFIX}_overwrite")
            with gr.Accordion("Parameters", open=False, elem_id=f"{PREFIX}_parameters"):
                with gr.Row():
                    steps = gr.Number(400, precision=0, minimum=1, label="Steps", elem_id=f"{PREFIX}_steps")
                    learning_rate = gr.Number(0, label="Learning rate (0: the method's usual)", elem_id=f"{PREFIX}_lr")
                    lr_scheduler = gr.Dropdown(list(LR_SCHEDULERS), value="constant", label="LR scheduler",
                                               elem_id=f"{PREFIX}_lr_scheduler")
                    lr_warmup = gr.Number(0, precision=0, minimum=0, label="Warmup steps", elem_id=f"{PREFIX}_warmup")
                with gr.Row():
                    batch_size = gr.Number(1, precision=0, minimum=1, label="Batch size", elem_id=f"{PREFIX}_batch_size")
                    resolution = gr.Number(native, precision=0, minimum=0, step=8, label="Resolution",
                                           elem_id=f"{PREFIX}_resolution")
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id=f"{PREFIX}_seed")
                with gr.Row():
                    num_class = gr.Number(50, precision=0, minimum=1, label="Class images", elem_id=f"{PREFIX}_num_class")
                    prior_weight = gr.Number(1.0, minimum=0, label="Prior loss weight", elem_id=f"{PREFIX}_prior_weight")
                    class_dir = gr.Textbox(label="Class images folder on the server (empty: generate with the base model)",
                                           elem_id=f"{PREFIX}_class_dir")
                    class_dropout = gr.Number(0.0, minimum=0, maximum=0.99, step=0.05,
                                              label="Class caption dropout (share of class images on the empty prompt)",
                                              elem_id=f"{PREFIX}_class_caption_dropout")
                with gr.Row():
                    train_te = gr.Checkbox(False, label="Train the text encoder", elem_id=f"{PREFIX}_train_te")
                    text_lr = gr.Number(0, minimum=0, maximum=1, label="Text encoder learning rate (0: the learning rate)",
                                        elem_id=f"{PREFIX}_text_lr")
                    token_lr = gr.Number(0, minimum=0, maximum=1, label="Identifier's learning rate (DreamBooth pivotal "
                                         "tuning; 0: off; e.g. 5e-3)", elem_id=f"{PREFIX}_token_lr")
                    checkpointing = gr.Checkbox(False, label="Gradient checkpointing", elem_id=f"{PREFIX}_grad_ckpt")
                    mixed = gr.Dropdown(["no", "fp16", "bf16"], value="no", label="Mixed precision (CUDA)",
                                        elem_id=f"{PREFIX}_mixed")
                    adam8 = gr.Checkbox(False, label="8-bit Adam (CUDA + bitsandbytes)", elem_id=f"{PREFIX}_adam8")
                with gr.Row():
                    noise_offset = gr.Number(0.0, minimum=0, maximum=1, step=0.01, label="Noise offset (0: plain noise)",
                                             elem_id=f"{PREFIX}_noise_offset")
                    snr_gamma = gr.Number(0.0, minimum=0, maximum=100, label="Min-SNR gamma (0: off; e.g. 5)",
                                          elem_id=f"{PREFIX}_snr_gamma")
                    caption_dropout = gr.Number(0.0, minimum=0, maximum=0.99, step=0.05,
                                                label="Caption dropout (share trained on the empty prompt)",
                                                elem_id=f"{PREFIX}_caption_dropout")
                    ema_decay = gr.Number(0.0, minimum=0, maximum=0.9999, step=0.001, label="EMA decay (0: off; e.g. 0.999)",
                                          elem_id=f"{PREFIX}_ema_decay")
                with gr.Row():
                    rank = gr.Number(4, precision=0, minimum=1, label="LoRA rank", elem_id=f"{PREFIX}_rank")
                    alpha = gr.Number(0, minimum=0, label="LoRA alpha (0: the rank)", elem_id=f"{PREFIX}_alpha")
                    init_lora = gr.Textbox(label="Continue from LoRA", elem_id=f"{PREFIX}_init_lora")
                    lora_targets = gr.Dropdown(list(LORA_TARGETS), value="attention",
                                               label="LoRA layers (every attention / text keys and values)",
                                               elem_id=f"{PREFIX}_lora_targets")
                with gr.Row():
                    initializer = gr.Textbox("*", label="TI initializer word", elem_id=f"{PREFIX}_initializer")
                    vectors = gr.Number(1, precision=0, minimum=1, maximum=75, label="TI vectors per token",
                                        elem_id=f"{PREFIX}_vectors")
                sample_prompts = gr.Textbox(lines=2, label="Sample prompts (one per line; empty: the instance prompt)",
                                            elem_id=f"{PREFIX}_sample_prompts")
                with gr.Row():
                    sample_every = gr.Number(50, precision=0, minimum=0, label="Sample every N steps (0: at the end)",
                                             elem_id=f"{PREFIX}_sample_every")
                    save_every = gr.Number(100, precision=0, minimum=0, label="Save a resumable state every N steps",
                                           elem_id=f"{PREFIX}_save_every")
        with gr.Column(scale=2):
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id=f"{PREFIX}_start")
                resume = gr.Button("Resume", elem_id=f"{PREFIX}_resume")
                cancel = gr.Button("Cancel", visible=False, elem_id=f"{PREFIX}_cancel")
            progress = gr.HTML(progress_html(None, None), elem_id=f"{PREFIX}_progress")
            status = gr.HTML("", elem_id=f"{PREFIX}_status")
            error = gr.Textbox(label="Error", visible=False, interactive=False, elem_id=f"{PREFIX}_error")
            warnings = gr.HTML("", elem_id=f"{PREFIX}_warnings")
            loss = gr.LinePlot(empty_losses(), x="step", y="loss", title="Loss", elem_id=f"{PREFIX}_loss")
            samples = gr.Gallery(label="Latest samples", columns=2, interactive=False, elem_id=f"{PREFIX}_samples")
            output = gr.Textbox(label="Written to", interactive=False, elem_id=f"{PREFIX}_output")
    fields = {
        "method": method, "instance_dir": instance_dir, "instance_prompt": instance_prompt, "class_prompt": class_prompt,
        "token": token, "output_name": output_name, "with_prior_preservation": prior, "overwrite": overwrite, "steps": steps,
        "learning_rate": learning_rate, "lr_scheduler": lr_scheduler, "lr_warmup_steps": lr_warmup,
        "batch_size": batch_size, "resolution": resolution, "seed": seed, "num_class_images": num_class, "class_dir": class_dir,
        "prior_loss_weight": prior_weight, "class_caption_dropout": class_dropout, "train_text_encoder": train_te,
        "text_encoder_learning_rate": text_lr, "token_learning_rate": token_lr, "gradient_checkpointing": checkpointing,
        "mixed_precision": mixed, "use_8bit_adam": adam8, "noise_offset": noise_offset, "snr_gamma": snr_gamma,
        "caption_dropout": caption_dropout, "ema_decay": ema_decay,
        "lora_rank": rank, "lora_alpha": alpha, "init_lora": init_lora, "lora_targets": lora_targets,
        "initializer_token": initializer, "num_vectors": vectors, "sample_prompts": sample_prompts,
        "sample_every": sample_every, "save_every": save_every,
    }
    return TrainTab(fields, files, start, resume, cancel, progress, status, warnings, error, loss, samples, output,
                    gr.State(""), gr.Timer(POLL_SECONDS, active=False))


def request_values(values: dict[str, Any]) -> dict[str, Any]:
    """The form's values as request fields: unset ones dropped, 0 / empty ones meaning 'the default'."""
    out = dict(given(values))
    for name in ZERO_IS_DEFAULT:
        if out.get(name) in (0, 0.0):
            out.pop(name)
    for name in EMPTY_IS_DEFAULT:
        if isinstance(out.get(name), str) and not out[name].strip():
            out.pop(name)
    if "sample_prompts" in out:
        text = out["sample_prompts"]
        out["sample_prompts"] = [line.strip() for line in text.splitlines() if line.strip()] if isinstance(text, str) else text
    if out.get("method") not in METHODS:
        out.pop("method", None)
    return out


def _warnings_html(warnings: list[str]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return f"<div class='easel-warnings'><b>Warnings</b><ul>{items}</ul></div>"


def start_training(services, values: dict[str, Any], files: list[str] | None, resume: str) -> dict:
    """Build, check and submit the request; errors are shown, never raised."""
    try:
        fields = {**request_values(values), "resume": resume}
        uploads = [Path(f) for f in files or []]  # Gradio's own copies of the uploads
        request = training.build_request(services, fields, uploads=uploads, folder=fields.get("instance_dir"))
        job = training.submit(services, request)
    except Exception as err:  # RequestError, CheckpointError, QueueFull, ...
        gr.Warning(str(err))
        return {"error": gr.update(value=str(err), visible=True), "job_id": "", "timer": gr.Timer(active=False)}
    return {
        "start": gr.update(visible=False), "resume": gr.update(visible=False), "cancel": gr.update(visible=True),
        "error": gr.update(value="", visible=False), "warnings": _warnings_html(request.warnings),
        "loss": empty_losses(), "samples": [], "output": "", "job_id": job.id, "timer": gr.Timer(active=True),
        "status": f"Queued: {html.escape(request.method)} training of {html.escape(request.output_name)}",
    }


def poll(services, job_id: str) -> dict:
    """The job's progress, loss curve, samples, warnings and outcome (the timer stops once it ends)."""
    if not job_id:
        return {"timer": gr.Timer(active=False)}
    try:
        job = services.queue.get(job_id)
    except KeyError:
        return {"timer": gr.Timer(active=False), "job_id": ""}
    snap = training.status_of(job)
    position = services.queue.position(job.id) if not job.is_finished else -1
    losses = pd.DataFrame({"step": list(range(snap.step - len(snap.losses) + 1, snap.step + 1)), "loss": snap.losses})
    info = f"{snap.phase}, loss {snap.losses[-1]:.4f}" if snap.losses and snap.phase == "training" else snap.phase
    update: dict[str, Any] = {
        "progress": progress_html(snap.step, max(snap.total, 1), job.progress.snapshot().eta_seconds, max(position, 0), info),
        "loss": losses if snap.losses else empty_losses(),
        "warnings": _warnings_html(snap.warnings),
        "status": _status(services, job, position, snap),
    }
    if snap.samples:
        update["samples"] = [(image, f"step {snap.sample_step}") for image in snap.samples]
    if job.is_finished:
        update.update({"start": gr.update(visible=True), "resume": gr.update(visible=True),
                       "cancel": gr.update(visible=False), "timer": gr.Timer(active=False), "job_id": "",
                       "progress": progress_html(None, None)})
        if job.state is JobState.failed:
            gr.Warning(job.error or "the training failed")
            update["error"] = gr.update(value=job.error, visible=True)
        if job.state is JobState.done:
            update["output"] = snap.output_path or ""
    return update


def _status(services, job, position: int, snap) -> str:
    if job.state is JobState.queued:
        return f"Waiting in queue: position {position}"
    if job.state is JobState.running:
        waiting = len(services.queue.pending())
        resumed = f" (resumed at step {snap.resumed_from})" if snap.resumed_from else ""
        behind = f"; {waiting} job(s) wait for it in the queue" if waiting else ""
        return f"Training{resumed}{behind}"
    if job.state is JobState.cancelled:
        return f"Cancelled at step {snap.step}: its state is kept, press Resume to continue"
    if job.state is JobState.done:
        return f"Done: {snap.step} steps, written to {html.escape(snap.output_path or '')}"
    return "Failed"


def bind_events(tab: TrainTab, services) -> None:
    """Start, Resume, Cancel and the polling timer."""
    named = {**tab.fields, "_files": tab.files}
    components = {"start": tab.start, "resume": tab.resume, "cancel": tab.cancel, "progress": tab.progress,
                  "status": tab.status, "warnings": tab.warnings, "error": tab.error, "loss": tab.loss,
                  "samples": tab.samples, "output": tab.output, "job_id": tab.job_id, "timer": tab.timer}

    def as_updates(values: dict) -> dict:
        return {components[name]: value for name, value in values.items()}

    def on_start(data: dict, resume: str):
        values = named_values(named, data)
        files = values.pop("_files")
        return as_updates(start_training(services, values, files, resume))

    tab.start.click(lambda data: on_start(data, "auto"), inputs=set(named.values()), outputs=tab.outputs())
    tab.resume.click(lambda data: on_start(data, "yes"), inputs=set(named.values()), outputs=tab.outputs())
    def on_cancel(job_id: str) -> None:
        try:
            services.queue.cancel(job_id)
        except KeyError:  # already finished and forgotten
            pass

    tab.cancel.click(on_cancel, inputs=[tab.job_id], outputs=None, queue=False)
    tab.timer.tick(lambda job_id: as_updates(poll(services, job_id)), inputs=[tab.job_id], outputs=tab.outputs())


def add_tab(services) -> TrainTab:
    """The "Train" tab, built and bound (call inside the app's ``gr.Tabs``)."""
    with gr.Tab("Train", id="train", elem_id="tab_train"):
        tab = create_ui(services)
    bind_events(tab, services)
    return tab
