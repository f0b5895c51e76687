"""Exceptions to HTTP answers: bad input is a 4xx with a message, never a 500.

Every error body has ``detail`` (the message) and ``error`` (the exception's type name); a 422
keeps FastAPI's shape, where ``detail`` is a list whose ``loc`` names the field.
"""

import math

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from modules.checkpoints import CheckpointError
from modules.jobs import JobCancelled, QueueFull, one_line_error
from modules.schemas import RequestError

QUEUE_FULL_RETRY_AFTER_S = 5


def error_body(exc: BaseException, message: str | None = None) -> dict[str, str]:
    return {"detail": message if message is not None else str(exc), "error": type(exc).__name__}


class JobNotFound(LookupError):
    """No job with the requested id (never submitted, or forgotten long ago)."""


class JobFailed(RuntimeError):
    """A job failed on the worker for a reason that is not the request's fault."""


def install_error_handlers(app: FastAPI) -> None:
    """Map the core's exceptions to status codes on ``app``."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=400)

    @app.exception_handler(CheckpointError)
    async def checkpoint_error(request: Request, exc: CheckpointError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=404)

    @app.exception_handler(JobNotFound)
    async def job_not_found(request: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=404)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        retry = QUEUE_FULL_RETRY_AFTER_S
        services = getattr(request.app.state, "services", None)
        current = services.queue.current() if services is not None else None
        eta = current.progress.snapshot().eta_seconds if current is not None else None
        if eta:
            retry = max(1, math.ceil(eta))
        return JSONResponse(error_body(exc), status_code=429, headers={"Retry-After": str(retry)})

    @app.exception_handler(JobCancelled)
    async def job_cancelled(request: Request, exc: JobCancelled) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=409)

    @app.exception_handler(JobFailed)
    async def job_failed(request: Request, exc: JobFailed) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=500)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(exc, one_line_error(exc)), status_code=500)
