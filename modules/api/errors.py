"""Exceptions to HTTP answers: bad input is a 4xx with a message, never a 500.

Every error body has ``detail`` (the message) and ``error`` (the exception's type name); a 422
keeps FastAPI's shape, where ``detail`` is a list whose ``loc`` names the field (a NaN or Infinity
the client sent comes back as the string "NaN", "Infinity" or "-Infinity": JSON has no such numbers).

A generation whose images could not be saved (disk full, folder not writable) is not an error of
the job: the answer is 507 Insufficient Storage with the usual body (images and info) plus
``detail`` and ``error`` (``not_saved_response``).
"""

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from modules.checkpoints import CheckpointError
from modules.images import ImageTooLarge
from modules.install_types import AlreadyInstalling
from modules.jobs import JobCancelled, JobTooLarge, QueueFull, one_line_error
from modules.schemas import RequestError

QUEUE_FULL_RETRY_AFTER_S = 5
NOT_SAVED_STATUS = 507  # Insufficient Storage (RFC 4918): the images came out but could not be stored
NOT_SAVED_RESPONSES: dict[int | str, dict[str, Any]] = {NOT_SAVED_STATUS: {
    "description": "the images were made but could not be saved (disk full, folder not writable): the body is "
                   "the usual answer, images included, plus `detail` (why and where) and `error`"}}


def error_body(exc: BaseException, message: str | None = None) -> dict[str, str]:
    return {"detail": message if message is not None else str(exc), "error": type(exc).__name__}


class JobNotFound(LookupError):
    """No job with the requested id (never submitted, or forgotten long ago)."""


class ModelNotInstalled(LookupError):
    """A route needs a model that is not installed (the message names it and what would be needed)."""


class JobFailed(RuntimeError):
    """A job failed on the worker for a reason that is not the request's fault."""


# Exceptions whose answer is just the error body with this status code (QueueFull and any other
# exception have handlers of their own below).
STATUS_CODES: tuple[tuple[type[Exception], int], ...] = (
    (RequestError, 400),
    (AlreadyInstalling, 409),  # a RequestError too: the most specific handler answers
    (CheckpointError, 404),
    (JobNotFound, 404),
    (ModelNotInstalled, 404),
    (ImageTooLarge, 413),  # an input image over max_input_pixels (or the request's share of max_queue_mb)
    (JobTooLarge, 413),  # a job whose inputs alone are over max_queue_mb (a retry cannot help)
    (JobCancelled, 409),
    (JobFailed, 500),
)


def status_handler(status_code: int):
    """An exception handler that answers ``error_body(exc)`` with ``status_code``."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=status_code)

    return handler


def json_safe(value: Any) -> Any:
    """``value`` with every NaN/Infinity float replaced by its name ("NaN", "Infinity", "-Infinity"),
    so that strict JSON can carry it (Starlette refuses non-finite floats, which made a 500 of a 422)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def not_saved_response(answer: BaseModel, save_errors: list[str]) -> JSONResponse:
    """507 with ``answer`` (the route's usual body: images, info, ...) plus ``detail`` naming why and
    where the images could not be saved, and ``error`` = "ImageSaveError"."""
    body = answer.model_dump(mode="json")
    body.update(detail="; ".join(dict.fromkeys(save_errors)), error="ImageSaveError")
    return JSONResponse(body, status_code=NOT_SAVED_STATUS)


def install_error_handlers(app: FastAPI) -> None:
    """Map the core's exceptions to status codes on ``app``."""
    for exc_class, status_code in STATUS_CODES:
        app.add_exception_handler(exc_class, status_handler(status_code))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own 422 shape, with inputs that strict JSON can carry."""
        return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        retry = QUEUE_FULL_RETRY_AFTER_S
        services = getattr(request.app.state, "services", None)
        current = services.queue.current() if services is not None else None
        eta = current.progress.snapshot().eta_seconds if current is not None else None
        if eta:
            retry = max(1, math.ceil(eta))
        return JSONResponse(error_body(exc), status_code=429, headers={"Retry-After": str(retry)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(exc, one_line_error(exc)), status_code=500)
