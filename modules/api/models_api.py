"""The ``/easel/v1/models`` routes: install models by repo id or URL, follow or cancel an install,
list and delete installed models.

Installs run on the download worker (``modules.install_jobs``), beside the generation queue, so a
long download never holds up generation. They are behind the same guard as settings (``--api-auth``)
and a client never names a destination: the file's contents choose the folder. Downloads need
the server to be started with ``--allow-downloads``; without it the POST answers 400 saying so. One
source is installed once at a time: a second POST of it while it runs answers 409.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from modules.install_jobs import Installer, InstallJob
from modules.installer import InstallRequest, delete_installed, list_installed
from modules.services import Services
from modules.training.job import refresh_lists

from .errors import JobNotFound

PREFIX = "/easel/v1/models"
TAG = "easel models (install)"


class InstallStatus(BaseModel):
    """One install's state: ``state`` queued | running | done | failed | cancelled; ``stage`` resolving |
    downloading | verifying | installing | done; ``result`` once done."""

    id: str
    source: str
    state: str
    stage: str
    done_bytes: int
    total_bytes: int | None
    progress: float | None
    result: dict[str, Any] | None
    error: str | None


class InstalledModel(BaseModel):
    type: str
    name: str
    size: int
    short_hash: str | None = None


class DeletedModel(BaseModel):
    type: str
    name: str
    deleted: bool


def installer_of(services: Services) -> Installer:
    if services.installer is None:
        raise RuntimeError("this server was built without a model installer")
    return services.installer


def find_install(installer: Installer, job_id: str) -> InstallJob:
    job = installer.get(job_id)
    if job is None:
        raise JobNotFound(f"no install with id {job_id!r}")
    return job


def create_models_router(services: Services) -> APIRouter:
    """The model routes, bound to ``services`` (and its installer)."""
    router = APIRouter(prefix=PREFIX, tags=[TAG])

    @router.post("/install", status_code=202, response_model=InstallStatus)
    def start_install(request: InstallRequest, response: Response) -> InstallStatus:
        """Queue an install (202) and return its id; follow it with GET, cancel with DELETE. 400 when the
        source cannot work (not a repo id/URL, downloads off, a server path without --allow-server-paths);
        409 when the same source is already queued or being installed (the answer names that install)."""
        job = installer_of(services).submit(request, from_client=True)
        response.headers["Location"] = f"{PREFIX}/install/{job.id}"
        return InstallStatus(**job.snapshot())

    @router.get("/install", response_model=list[InstallStatus])
    def list_installs() -> list[InstallStatus]:
        """Recent installs, oldest first."""
        return [InstallStatus(**job.snapshot()) for job in installer_of(services).jobs()]

    @router.get("/install/{job_id}", response_model=InstallStatus)
    def get_install(job_id: str) -> InstallStatus:
        """State, bytes done and total, and the result (type, name, size, sha256) or error."""
        return InstallStatus(**find_install(installer_of(services), job_id).snapshot())

    @router.delete("/install/{job_id}", response_model=InstallStatus)
    def cancel_install(job_id: str) -> InstallStatus:
        """Cancel a queued or running install (its partial file or folder is removed); a finished one is unchanged."""
        installer = installer_of(services)
        job = find_install(installer, job_id)
        installer.cancel(job.id)
        if job.state == "running":
            job.wait(10)
        return InstallStatus(**job.snapshot())

    @router.get("", response_model=list[InstalledModel])
    def installed(hashes: bool = Query(False, description="add A1111's short hash (sha256, cached; slow the "
                                                          "first time for large files)")) -> list[InstalledModel]:
        """Model files in the model folders, by type."""
        digest = services.checkpoints.file_short_hash if hashes else None
        return [InstalledModel(type=r["type"], name=r["name"], size=r["size"], short_hash=r["sha256"])
                for r in list_installed(installer_of(services).target, digest)]

    @router.delete("/{model_type}/{name:path}", response_model=DeletedModel)
    def delete_model(model_type: str, name: str) -> DeletedModel:
        """Delete one model file (its name as GET lists it); the lists are refreshed."""
        delete_installed(installer_of(services).target, model_type, name)
        refresh_lists(services)
        return DeletedModel(type=model_type, name=name, deleted=True)

    return router
