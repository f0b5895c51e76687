"""The download worker: model installs run here, beside the device queue, never in it.

Why a separate worker and not a job in ``modules.jobs``' queue: an install is network and disk
work (a 7 GB SDXL checkpoint can take an hour on a slow line) and touches no device. In the
device queue it would hold up every generation queued after it for that long; here it runs in
its own thread while generation goes on. Installs run one at a time (``workers=1``), so two of
them never compete for the same line and disk, and the free-disk check of one sees the other's
finished file. What an install changes on the device side is only the model lists, refreshed
through ``on_installed`` when a file is in place (the lists swap under their own locks).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from modules.install_sources import check_downloads_allowed, check_public_url, local_path, parse_source
from modules.install_types import (
    AlreadyInstalling,
    InstallCancelled,
    Installed,
    InstallError,
    InstallRequest,
    InstallStopped,
    InstallTarget,
    Progress,
)
from modules.installer import install

KEEP_FINISHED = 100  # finished installs remembered for GET


@dataclass
class InstallJob:
    """One install: its request, live progress and outcome."""

    request: InstallRequest
    data_dir: Path | None = None  # results show paths relative to it
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = "queued"  # queued | running | done | failed | cancelled
    progress: Progress = field(default_factory=Progress)
    result: Installed | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)
    done_event: threading.Event = field(default_factory=threading.Event, repr=False)

    def snapshot(self) -> dict[str, Any]:
        """The job's state for clients (the API's GET answer)."""
        p = self.progress
        fraction = p.done_bytes / p.total_bytes if p.total_bytes else None
        return {"id": self.id, "source": shown_source(self.request.source), "state": self.state, "stage": p.stage,
                "done_bytes": p.done_bytes, "total_bytes": p.total_bytes,
                "progress": round(fraction, 4) if fraction is not None else None,
                "result": self.result.as_dict(self.data_dir) if self.result else None,
                "error": self.error.replace(self.request.source, shown_source(self.request.source)) if self.error else None}

    def wait(self, timeout: float | None = None) -> bool:
        return self.done_event.wait(timeout)


SECRET_KEYS = ("token", "key", "api_key", "apikey", "auth", "signature", "sig")


def shown_source(text: str) -> str:
    """The source as clients see it: secrets in a URL's query (Civitai's ``?token=``) and user:password
    in its address replaced by ``***``."""
    parts = urlsplit(text)
    if not parts.scheme or (not parts.query and "@" not in parts.netloc):
        return text
    query = urlencode([(k, "***" if k.lower() in SECRET_KEYS else v) for k, v in parse_qsl(parts.query)], safe="*")
    netloc = "***@" + parts.netloc.rsplit("@", 1)[1] if "@" in parts.netloc else parts.netloc
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Installer:
    """Queues installs on one download thread; ``on_installed`` refreshes the model lists."""

    def __init__(self, target: InstallTarget, on_installed: Callable[[Installed], None] = lambda _: None,
                 workers: int = 1) -> None:
        self.target = target
        self._on_installed = on_installed
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="easel-install")
        self._jobs: OrderedDict[str, InstallJob] = OrderedDict()
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def submit(self, request: InstallRequest, from_client: bool = True) -> InstallJob:
        """Queue an install; a source that cannot work (bad text, downloads off) fails now, as an InstallError;
        one already queued or running (the same repo, file and revision, or URL) as AlreadyInstalling."""
        source = parse_source(request.source, request.file, request.revision, self.target.endpoint)
        check_downloads_allowed(source, self.target)
        if source.kind == "path":
            local_path(source, self.target, from_client)
        if source.kind == "url" and from_client:
            check_public_url(source.text, self.target)
        job = InstallJob(request, self.target.data_dir)
        with self._lock:
            busy = next((j for j in self._jobs.values() if j.state in ("queued", "running")
                         and parse_source(j.request.source, j.request.file, j.request.revision,
                                          self.target.endpoint) == source), None)
            if busy is not None:
                raise AlreadyInstalling(f"source: {shown_source(request.source)} is already being installed (install "
                                        f"{busy.id}, {busy.state}); follow it with GET {busy.id} or cancel it first")
            self._jobs[job.id] = job
            self._forget_old()
        self._pool.submit(self._run, job, from_client)
        return job

    def get(self, job_id: str) -> InstallJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[InstallJob]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> InstallJob | None:
        """Ask an install to stop; its partial file is removed. A finished one is left as it is."""
        job = self.get(job_id)
        if job is not None and job.state in ("queued", "running"):
            job.cancel_event.set()
            if job.state == "queued":
                self._end(job, "cancelled", "cancelled before it started")
        return job

    def close(self) -> None:
        """Stop at shutdown: running installs stop keeping what they fetched (the next install of the same
        source resumes it), queued ones are dropped."""
        self._closing.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _stopped(self, job: InstallJob) -> bool:
        """The install's ``cancelled`` callback: True when its client cancelled it (its files are removed);
        at shutdown it raises InstallStopped instead, which keeps them."""
        if self._closing.is_set():
            raise InstallStopped("the server is shutting down; what was fetched is kept for the next install")
        return job.cancel_event.is_set()

    def _run(self, job: InstallJob, from_client: bool) -> None:
        if job.cancel_event.is_set() or self._closing.is_set():
            return
        job.state = "running"
        try:
            job.result = install(job.request, self.target, job.progress, lambda: self._stopped(job), from_client)
            self._on_installed(job.result)
            self._end(job, "done", None)
        except InstallCancelled:
            self._end(job, "cancelled", "cancelled")
        except InstallError as err:
            self._end(job, "failed", str(err))
        except Exception as err:  # a bug or an OS error: the job fails, the worker lives on
            self._end(job, "failed", f"{type(err).__name__}: {err}")

    def _end(self, job: InstallJob, state: str, error: str | None) -> None:
        job.state, job.error, job.finished = state, error, time.time()
        job.done_event.set()

    def _forget_old(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.done_event.is_set()]
        for job_id in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job_id]
