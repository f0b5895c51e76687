"""The ``/easel/v1/jobs`` routes: submit a job and get its id at once, then poll or cancel it.

The request bodies are the core requests with Easel's own defaults (``width``/``height`` None =
the model's native size, 20 steps, images saved), images as base64 text. A full queue answers
429 with ``Retry-After``. A finished job whose images could not be saved (disk full, folder not
writable) answers its status with 507: the body is the usual status, result included, plus
``detail`` and ``error``.
"""

from typing import Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from modules.images import encode_image_base64
from modules.jobs import Job, JobState
from modules.schemas import ExtrasRequest, GenerationResult, Img2ImgRequest, OutpaintRequest, Txt2ImgRequest
from modules.services import Services

from .convert import (
    InputBudget,
    build_core_request,
    controlnet_units_of,
    decode_field,
    encode_images,
    field_error,
    info_dict,
)
from .errors import NOT_SAVED_RESPONSES, JobNotFound, not_saved_response
from .models import JobCancelResponse, JobCreated, JobProgress, JobResult, JobStatus, JobSubmission

PREFIX = "/easel/v1"
TAG = "easel jobs (asynchronous)"
CORE_TYPES: dict[str, type] = {
    "txt2img": Txt2ImgRequest, "img2img": Img2ImgRequest, "outpaint": OutpaintRequest, "extras": ExtrasRequest,
}


def decoded_images(kind: str, request: Any, budget: InputBudget) -> dict[str, Any]:
    """The request's base64 image fields (ControlNet units' too) decoded within ``budget``; a bad one is a
    422 naming ``request.<field>``, one too large a 413."""
    units = {"controlnet_units": controlnet_units_of(request, budget, ("request",))} if kind != "extras" else {}
    if kind in ("img2img", "outpaint"):
        if not request.init_images:
            raise field_error(("request", "init_images"), "at least one image is required (base64 or a data: URL)")
        images = [decode_field(text, ("request", "init_images", i), budget) for i, text in enumerate(request.init_images)]
        mask = decode_field(request.mask, ("request", "mask"), budget) if kind == "img2img" and request.mask else None
        latent = request.latent_mask if mask is not None else None
        latent = decode_field(latent, ("request", "latent_mask"), budget) if latent else None
        return {"init_images": images, "mask": mask, "latent_mask": latent, **units}
    if kind == "extras":
        return {"image": decode_field(request.image, ("request", "image"), budget)}
    return units


def find_job(services: Services, job_id: str) -> Job:
    try:
        return services.queue.get(job_id)
    except KeyError as err:
        raise JobNotFound(err.args[0] if err.args else f"no job with id {job_id!r}") from None


def position_of(services: Services, job: Job) -> int:
    try:
        return services.queue.position(job.id)
    except KeyError:
        return -1


def job_result(job: Job) -> JobResult | None:
    """Images and info of a finished generation; None while it runs or when it has none."""
    if job.state is not JobState.done or job.result is None:
        return None
    result = job.result
    if isinstance(result, GenerationResult):
        return JobResult(images=encode_images(result), info=info_dict(result, job.request, job.started))
    if hasattr(result, "save"):  # a single PIL image
        return JobResult(images=[encode_image_base64(result)], info={})
    return JobResult(images=[], info={"value": str(result)})


def job_status(services: Services, job: Job, with_preview: bool = True) -> JobStatus:
    if with_preview:  # a client that shows previews: keep them coming (jobs.PreviewWatch)
        services.queue.preview_watch.touch()
    snap = job.progress.snapshot()
    preview = None
    if with_preview and snap.preview is not None and job.state is JobState.running:
        preview = encode_image_base64(snap.preview)
    return JobStatus(
        id=job.id, kind=job.kind, state=job.state.value, position=position_of(services, job),
        progress=JobProgress(step=snap.step, total=snap.total, fraction=snap.fraction, eta=snap.eta_seconds),
        preview=preview, error=job.error, result=job_result(job), interrupted=job.interrupted,
        created=job.created, started=job.started, finished=job.finished,
    )


def create_jobs_router(services: Services) -> APIRouter:
    """The asynchronous job routes, bound to ``services``."""
    router = APIRouter(prefix=PREFIX, tags=[TAG])

    @router.post("/jobs", status_code=202, response_model=JobCreated)
    def submit_job(submission: JobSubmission, response: Response) -> JobCreated:
        """Queue a job and return its id at once (202). 429 with Retry-After when the queue is full."""
        kind = submission.type
        core = build_core_request(CORE_TYPES[kind], submission.request, services.settings,
                                  decoded_images(kind, submission.request, InputBudget.of(services.settings)),
                                  where=("request",))
        job = services.submit(kind, core)
        response.headers["Location"] = f"{PREFIX}/jobs/{job.id}"
        return JobCreated(id=job.id, kind=job.kind, state=job.state.value, position=position_of(services, job))

    @router.get("/jobs", response_model=list[JobCreated])
    async def list_jobs() -> list[JobCreated]:
        """The running job, then the queued ones in order."""
        current = services.queue.current()
        jobs = ([current] if current is not None else []) + services.queue.pending()
        return [JobCreated(id=j.id, kind=j.kind, state=j.state.value, position=position_of(services, j)) for j in jobs]

    @router.get("/jobs/{job_id}", response_model=JobStatus, responses=NOT_SAVED_RESPONSES)
    async def get_job(job_id: str, preview: bool = Query(True, description="include the live preview")
                      ) -> JobStatus | JSONResponse:
        """State, queue position, progress, live preview, error, and the result once done (images are
        encoded in the thread pool: the event loop stays free)."""
        job = find_job(services, job_id)
        status = await run_in_threadpool(job_status, services, job, preview)
        save_errors = getattr(job.result, "save_errors", None) if job.state is JobState.done else None
        return not_saved_response(status, save_errors) if save_errors else status

    @router.delete("/jobs/{job_id}", response_model=JobCancelResponse)
    async def cancel_job(job_id: str) -> JobCancelResponse:
        """Cancel: a queued job is removed at once (state cancelled); a running one is interrupted: it stops
        after its current step and ends done with what it made (``interrupted`` true, the last image partial)."""
        job = find_job(services, job_id)
        cancelled = services.queue.cancel(job.id)
        return JobCancelResponse(id=job.id, state=job.state.value, cancelled=cancelled)

    return router
