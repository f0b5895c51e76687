"""Downloading one file: a ``.part`` file named from its source (so a new try resumes it with an
HTTP Range), one install at a time per file, the size limit and free disk checked first, a dropped
connection resumed, week-old leftovers removed."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modules.install_sources import login_hint
from modules.install_types import (
    RETRIES,
    STALE_PART_DAYS,
    AlreadyInstalling,
    Cancelled,
    DownloadFailed,
    GiB,
    InstallCancelled,
    InstallError,
    InstallTarget,
    Progress,
    Resolved,
)


def remove_stale_parts(target: InstallTarget, days: float = STALE_PART_DAYS) -> list[Path]:
    """Unfinished downloads (``.part`` files, pipeline folders) not touched for ``days``: removed."""
    folder = target.downloads_dir
    if not folder.is_dir():
        return []
    cutoff = time.time() - days * 86400
    stale = [p for p in folder.iterdir() if p.stat().st_mtime < cutoff and p.name.endswith((".part", ".folder", ".lock"))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return stale


def part_path(target: InstallTarget, resolved: Resolved) -> Path:
    """The temporary file of a download, named from its source so that a new try resumes it."""
    digest = hashlib.sha256(resolved.key.encode()).hexdigest()[:16]
    return target.downloads_dir / f"{digest}-{resolved.name}.part"


@contextmanager
def install_lock(path: Path, what: str) -> Iterator[None]:
    """Hold ``path`` (a ``.part`` file or a pipeline's folder) for one install: another one, in this
    process or another (the CLI while the server fetches, a second Serve replica), is refused with
    AlreadyInstalling instead of writing into it too. The lock is ``PATH.lock``, held with ``flock``,
    so a killed install never leaves it held. Without ``fcntl`` (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    while True:
        handle = open(lock, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AlreadyInstalling(f"{what} is being installed by another install right now (in this server or "
                                    "another process); wait for it to finish") from None
        if lock.exists() and os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino:
            break  # else the holder removed the file between our open and flock: lock the new one
        handle.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


def check_space(folder: Path, size: int | None, already: int, target: InstallTarget) -> None:
    """The size limit, and enough free disk for the rest of the file plus the reserve."""
    if size is None:
        return
    if size > target.max_bytes:
        raise InstallError(f"the file is {size / GiB:.1f} GiB, over the {target.max_bytes / GiB:.1f} GiB limit")
    free = shutil.disk_usage(folder).free
    if size - already + target.reserve_bytes > free:
        raise InstallError(f"not enough free disk in {folder}: the file needs {(size - already) / GiB:.2f} GiB more "
                           f"and {target.reserve_bytes / GiB:.1f} GiB stay free; {free / GiB:.2f} GiB are free")


def download(resolved: Resolved, part: Path, target: InstallTarget, client: Any, progress: Progress,
             cancelled: Cancelled) -> None:
    """Fetch ``resolved`` into ``part``, resuming what is there with a Range request, and again
    after a dropped connection (up to RETRIES times)."""
    import httpx

    part.parent.mkdir(parents=True, exist_ok=True)
    progress.stage, progress.total_bytes = "downloading", resolved.size
    for attempt in range(RETRIES + 1):
        if cancelled():
            raise InstallCancelled("the install was cancelled")
        have = part.stat().st_size if part.exists() else 0
        check_space(part.parent, resolved.size, have, target)
        if resolved.size is not None and have == resolved.size:
            progress.done_bytes = have
            return
        try:
            if fetch_once(resolved, part, have, target, client, progress, cancelled):
                return
        except (httpx.TransportError, httpx.RemoteProtocolError) as err:
            if attempt == RETRIES:
                raise DownloadFailed(f"the download failed {RETRIES + 1} times ({type(err).__name__}: {err}); "
                                   "try again to resume it") from None
    raise InstallError(f"{resolved.name}: the server kept answering with no usable bytes; try again later")


def fetch_once(resolved: Resolved, part: Path, have: int, target: InstallTarget, client: Any, progress: Progress,
               cancelled: Cancelled) -> bool:
    """One GET from byte ``have``; True when the file is complete."""
    headers = {**resolved.headers, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with client.stream("GET", resolved.url, headers=headers) as response:
        if response.status_code == 416 and have:  # asked past the end: start again
            part.unlink()
            return False
        if response.status_code >= 500 or response.status_code == 429:  # the server's trouble: try again later
            raise DownloadFailed(f"{resolved.name}: the server answered {response.status_code} "
                                 f"{response.reason_phrase}; what was fetched is kept, try again to resume")
        if response.status_code >= 400:
            raise InstallError(f"{resolved.name}: the server answered {response.status_code} {response.reason_phrase}"
                               f"{login_hint(response.status_code)}")
        resumed = response.status_code == 206
        length = response.headers.get("content-length")
        total = (have if resumed else 0) + int(length) if length and length.isdigit() else resolved.size
        check_space(part.parent, total, have if resumed else 0, target)
        written = have if resumed else 0
        progress.total_bytes, progress.done_bytes = total, written
        with open(part, "ab" if resumed else "wb") as f:
            for chunk in response.iter_bytes():  # as received: a drop keeps all that came
                if cancelled():
                    raise InstallCancelled("the install was cancelled")
                written += len(chunk)
                if written > target.max_bytes:
                    raise InstallError(f"{resolved.name} is over the {target.max_bytes / GiB:.1f} GiB limit")
                f.write(chunk)
                progress.done_bytes = written
    expected = resolved.size if resolved.size is not None else total
    if expected is not None and written < expected:
        import httpx

        raise httpx.RemoteProtocolError(f"the connection closed at byte {written} of {expected}")
    return True
