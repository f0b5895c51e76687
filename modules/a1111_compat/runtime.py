"""The running app the A1111 adapters view, and what is happening on this thread.

A1111 extensions read ``shared.opts`` and register callbacks without being handed anything, so
the adapter needs one pointer to the running app's services: ``bind(services)``, set by the
loader. It is the only module-level state of the compatibility layer and the core never reads
it. While an extension's files are imported, ``loading`` names it (its callbacks are registered
as its hooks); while a job runs extension scripts, ``job`` holds its context (``shared.sd_model``,
``process_images`` inside a dropdown script's ``run``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_bound: dict[str, Any] = {}
_local = threading.local()


def bind(services: Any) -> None:
    """Make ``services`` the app that ``shared``, ``script_callbacks`` and ``process_images`` act on."""
    _bound["services"] = services


def services() -> Any:
    """The app of the job running on this thread, else the bound one."""
    job = getattr(_local, "job", None)
    if job is not None:
        return job[3]
    s = _bound.get("services")
    if s is None:
        raise RuntimeError("no Easel app is running: A1111 extension modules work once Easel has loaded extensions")
    return s


def bound() -> Any | None:
    job = getattr(_local, "job", None)
    return job[3] if job is not None else _bound.get("services")


@contextmanager
def loading(extension: Any) -> Iterator[None]:
    """While an extension's files are imported, its callbacks and scripts are attributed to it."""
    previous = getattr(_local, "loading", None)
    _local.loading = extension
    try:
        yield
    finally:
        _local.loading = previous


def current_extension() -> Any | None:
    return getattr(_local, "loading", None)


@contextmanager
def in_job(ctx: Any, proceed: Any, kind: str, services: Any) -> Iterator[None]:
    previous = getattr(_local, "job", None)
    _local.job = (ctx, proceed, kind, services)
    try:
        yield
    finally:
        _local.job = previous


def current_job() -> tuple[Any, Any, str] | None:
    job = getattr(_local, "job", None)
    return job[:3] if job is not None else None
