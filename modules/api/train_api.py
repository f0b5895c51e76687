"""The ``/easel/v1/train`` routes: start a DreamBooth / LoRA / textual-inversion training, poll it, cancel it.

``POST /easel/v1/train`` takes the training options (``modules.training.config.TrainOptions``) with
the instance images as base64 text and/or ``instance_dir``, a folder on the server; it answers 202
with the job id once every check that can be made before the job has passed. ``GET`` gives the
state, queue position, step, loss history, latest sample images (base64 PNG), warnings and the
output path; ``POST .../cancel`` stops it (its state is kept: the same request resumes it).

A training owns the worker while it runs: generation submitted meanwhile waits in the queue
(``jobs_waiting`` counts the jobs behind it; each has its own ``position``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from modules.images import encode_image_base64
from modules.jobs import Job
from modules.services import Services
from modules.training import job as training
from modules.training import outputs
from modules.training.config import TrainOptions

from .errors import JobNotFound
from .jobs_api import find_job, position_of

PREFIX = "/easel/v1/train"
TAG = "easel training (asynchronous)"


class TrainBody(TrainOptions):
    """The training options, with the instance images as base64 text (3 to 30, with those of ``instance_dir``)."""

    instance_images: list[str] = Field(default_factory=list, description="base64 images (raw or data: URLs)")
    instance_captions: list[str] = Field(default_factory=list, max_length=30, description=(
        "a caption per instance image, in the same order ('' for none); [filewords] in the prompts stands for it"))
    warnings: list[str] = Field(default_factory=list, description="ignored: the server's advice comes back in the answer")


class TrainCreated(BaseModel):
    id: str
    state: str
    position: int = Field(description="0 running, 1.. place in line, -1 finished")
    warnings: list[str]
    output_path: str


class TrainStatus(BaseModel):
    id: str
    state: str = Field(description="queued, running, done, failed, cancelled")
    position: int = Field(description="0 running, 1.. place in line, -1 finished")
    jobs_waiting: int = Field(description="jobs queued behind this training while it runs")
    phase: str = Field(description="queued, preparing, class images, training, saving, done")
    step: int
    total: int
    losses: list[float] = Field(description="the loss of every step so far (the last 2000)")
    samples: list[str] = Field(description="latest sample images, base64 PNG")
    sample_step: int
    warnings: list[str]
    output_path: str | None = Field(None, description="the written file, once done")
    resumed_from: int = Field(description="the step a saved state was resumed at (0: started fresh)")
    error: str | None = None


class TrainCancelled(BaseModel):
    id: str
    state: str
    cancelled: bool = Field(description="False when the training had already finished")


def find_training(services: Services, job_id: str) -> Job:
    job = find_job(services, job_id)
    if job.kind != training.KIND:
        raise JobNotFound(f"job {job_id!r} is a {job.kind} job, not a training; see /easel/v1/jobs/{job_id}")
    return job


def train_status(services: Services, job: Job) -> TrainStatus:
    snap = training.status_of(job)
    position = position_of(services, job)
    return TrainStatus(
        id=job.id, state=job.state.value, position=position,
        jobs_waiting=len(services.queue.pending()) if position == 0 else 0,
        phase=snap.phase, step=snap.step, total=snap.total, losses=snap.losses,
        samples=[encode_image_base64(image) for image in snap.samples], sample_step=snap.sample_step,
        warnings=snap.warnings, output_path=snap.output_path, resumed_from=snap.resumed_from, error=job.error,
    )


def create_train_router(services: Services) -> APIRouter:
    """The training routes, bound to ``services``."""
    router = APIRouter(prefix=PREFIX, tags=[TAG])

    @router.post("", status_code=202, response_model=TrainCreated)
    def start(body: TrainBody, response: Response) -> TrainCreated:
        """Check and queue a training; 400 names what is wrong (too few readable images, an existing output, ...)."""
        values: dict[str, Any] = body.model_dump(exclude={"instance_images", "warnings"})
        request = training.build_request(services, values, uploads=body.instance_images, folder=body.instance_dir)
        job = training.submit(services, request)
        response.headers["Location"] = f"{PREFIX}/{job.id}"
        out = outputs.output_path(services.settings, request.method, request.output_name)
        return TrainCreated(id=job.id, state=job.state.value, position=position_of(services, job),
                            warnings=request.warnings, output_path=str(out))

    @router.get("/{job_id}", response_model=TrainStatus)
    def state(job_id: str) -> TrainStatus:
        """Status, progress, loss history, latest samples, warnings and output of one training."""
        return train_status(services, find_training(services, job_id))

    @router.post("/{job_id}/cancel", response_model=TrainCancelled)
    def cancel(job_id: str) -> TrainCancelled:
        """Stop a training; what it trained so far is saved and the same request resumes it."""
        job = find_training(services, job_id)
        cancelled = services.queue.cancel(job.id)
        return TrainCancelled(id=job.id, state=job.state.value, cancelled=cancelled)

    return router
