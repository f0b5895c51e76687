"""Installing models from a Hugging Face repo id, a URL or a local path, into Easel's model folders.

``install(request, target, ...)`` takes one straight path:

1. ``parse_source``: the text is a URL (``https://...``; a hub ``/resolve/`` URL counts as a repo
   id), a local path (``/``, ``./``, ``~``, ``file://``) or a repo id ``owner/name[/file][@revision]``;
2. ``resolve``: a hub file's URL, size and sha256 come from ``huggingface_hub`` (it honours
   ``HF_ENDPOINT`` and ``HF_TOKEN``); a plain URL's file name from ``Content-Disposition``;
3. ``check_name``: ``.safetensors`` always; ``.ckpt/.pt/.pth/.bin`` only with ``allow_pickle``,
   and then only read through ``checkpoints.load_pickle_safely`` (``weights_only``): nothing from
   a download is ever executed;
4. ``download``: into ``models/.downloads/`` (a temporary ``.part`` file named from the source, so
   a new try resumes with an HTTP ``Range``), after checking the size limit and the free disk;
   a dropped connection resumes where it stopped (one left untouched for a week is removed at the
   next install);
5. the sha256 is checked (the hub's, or the one the user gave): a mismatch deletes the file;
6. ``detect_kind`` reads the tensors' names and shapes with the existing detectors (checkpoints,
   LoRA, VAE, ControlNet, embedding): the contents choose the folder, not the name or ``type``;
7. the file is renamed into that folder (never over another file) and the lists are refreshed.

A repo id without a file takes the repo's one top-level ``.safetensors``; a diffusers pipeline repo
with none is installed whole as a folder (``modules.install_folders``); several files: name one.

Downloads are off unless the operator started Easel with ``--allow-downloads`` (launch.sh sets
``HF_HUB_OFFLINE=1`` otherwise); local paths install without it. Clients (UI, API) never name a
destination, and name a server path only when the operator allowed it (``--allow-server-paths``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import torch
from pydantic import ConfigDict, Field, field_validator

from modules.checkpoints import (
    UNET_IN_KEY,
    CheckpointError,
    detect_architecture,
    file_sha256,
    load_pickle_safely,
)
from modules.schemas import RequestError, RequestModel

ModelType = Literal["checkpoint", "lora", "vae", "controlnet", "embedding"]
MODEL_TYPES: tuple[str, ...] = ("checkpoint", "lora", "vae", "controlnet", "embedding")
SAFE_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
GENERIC_STEMS = ("diffusion_pytorch_model", "model", "pytorch_lora_weights", "learned_embeds", "pytorch_model")
DOWNLOADS_DIR = ".downloads"  # inside models/: the .part files of unfinished downloads
RETRIES = 5  # a dropped connection is resumed this many times before the install fails
STALE_PART_DAYS = 7  # unfinished downloads untouched this long are removed (at the next install)
GiB = 1 << 30
DOWNLOADS_OFF = ("downloads are off: Easel was started without --allow-downloads (launch.sh sets HF_HUB_OFFLINE=1, "
                 "so nothing is fetched from the network). Restart with `./launch.sh --allow-downloads` (or run "
                 "`./launch.sh install --allow-downloads SOURCE`), or install from a local file")


class InstallError(RequestError):
    """A model cannot be installed; the message says what was wrong and what would work."""


class DownloadFailed(InstallError):
    """The connection failed again and again; what was fetched is kept, so a new try resumes."""


class InstallCancelled(InstallError):
    """The install was cancelled; its partial file was removed."""


class InstallRequest(RequestModel):
    """What a client asks to install. It never names a destination: the file's contents choose it."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(..., min_length=1, max_length=2048,
                        description="a Hugging Face repo id (owner/name[/file][@revision]), an http(s) URL, or a local path")
    type: ModelType | None = Field(None, description="expected type; the contents decide, this is used only when "
                                                     "they cannot tell")
    sha256: str | None = Field(None, description="expected sha256 of the file (hex); the hub's is used when known")
    file: str | None = Field(None, max_length=512, description="file inside the repo (repo ids only)")
    revision: str | None = Field(None, max_length=256, description="branch, tag or commit (repo ids only)")
    allow_pickle: bool = Field(False, description="allow .ckpt/.pt/.pth/.bin (read with the safe weights-only "
                                                  "loader; refused if they hold anything but tensors)")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("sha256 must be 64 hex digits")
        return value


@dataclass(frozen=True)
class InstallTarget:
    """Where installs go (Easel's model folders) and the limits; built from the settings by the caller."""

    data_dir: Path
    folders: dict[str, Path]  # model type -> the folder Easel reads that type from
    allow_downloads: bool = False  # the operator's --allow-downloads
    allow_server_paths: bool = False  # the operator's --allow-server-paths (clients naming local files)
    max_bytes: int = 40 * GiB  # largest file accepted
    reserve_bytes: int = 1 * GiB  # free disk left after the download
    endpoint: str | None = None  # hub endpoint (None: huggingface_hub's, from HF_ENDPOINT)
    allow_private_hosts: bool = False  # let clients make the server fetch from its own network (tests)

    @property
    def downloads_dir(self) -> Path:
        return self.data_dir / "models" / DOWNLOADS_DIR


def target_from_settings(settings: Any, allow_downloads: bool = False, allow_server_paths: bool = False) -> InstallTarget:
    """Easel's model folders from the settings (the LoRA and embeddings folders are settings)."""
    models = settings.models_dir
    folders = {"checkpoint": models / "Stable-diffusion", "lora": settings.path(settings.lora_dir),
               "vae": models / "VAE", "controlnet": models / "ControlNet",
               "embedding": settings.path(settings.embeddings_dir)}
    return InstallTarget(Path(settings.data_dir), folders, allow_downloads, allow_server_paths)


@dataclass(frozen=True)
class Source:
    """A parsed source: ``kind`` "hub", "url" or "path"."""

    kind: str
    text: str  # URL, path, or repo id
    file: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class Resolved:
    """A remote file ready to download."""

    url: str
    name: str  # file name (no folders)
    size: int | None
    sha256: str | None
    headers: dict[str, str]
    key: str  # names the .part file: the same source resumes the same file


@dataclass(frozen=True)
class Installed:
    """The result of an install."""

    type: str
    name: str
    path: Path
    size: int
    sha256: str
    note: str = ""  # e.g. "you asked for a LoRA; its contents are a checkpoint"

    def as_dict(self, data_dir: Path | None = None) -> dict[str, Any]:
        """For clients: ``path`` relative to ``data_dir`` (the server's own folders are not shown)."""
        path = self.path
        if data_dir is not None:
            path = path.relative_to(data_dir) if data_dir in path.parents else Path(path.parent.name) / path.name
        return {"type": self.type, "name": self.name, "path": path.as_posix(), "size": self.size,
                "sha256": self.sha256, "note": self.note}


@dataclass
class Progress:
    """Live state of one install, written by the installer, read by clients."""

    stage: str = "queued"  # queued | resolving | downloading | verifying | installing | done
    done_bytes: int = 0
    total_bytes: int | None = None


Cancelled = Callable[[], bool]


# --------------------------------------------------------------------------- sources

_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def parse_source(text: str, file: str | None = None, revision: str | None = None,
                 endpoint: str | None = None) -> Source:
    """A URL, a local path or a hub repo id (``owner/name[/path/in/repo][@revision]``)."""
    text = text.strip()
    if text.startswith("file://"):
        return Source("path", unquote(urlparse(text).path))
    if re.match(r"^https?://", text):
        hub = hub_url_parts(text, endpoint)
        if hub:
            repo, rev, path = hub
            return Source("hub", repo, file or path, revision or rev)
        return Source("url", text)
    if re.match(r"^[a-z][a-z0-9+.-]*://", text, re.I):
        raise InstallError(f"source: {text.split('://')[0]}:// is not supported; use https://, a repo id or a local path")
    if text.startswith(("/", "./", "../", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", text):
        return Source("path", text)
    repo_text, _, rev = text.partition("@")
    parts = repo_text.split("/")
    repo = "/".join(parts[:2])
    if len(parts) < 2 or not _REPO_RE.match(repo):
        raise InstallError(f"source: {text!r} is not a repo id (owner/name), an http(s):// URL or a local path "
                           "(start it with / or ./)")
    in_repo = "/".join(parts[2:]) or None
    if in_repo and file:
        raise InstallError("source names a file inside the repo and file is given too; give one of them")
    return Source("hub", repo, file or in_repo, revision or rev or None)


def hub_url_parts(url: str, endpoint: str | None) -> tuple[str, str | None, str | None] | None:
    """(repo id, revision, file) of a URL on the hub endpoint: a file's ``/owner/name/resolve|blob/REV/FILE``,
    or a repo page ``/owner/name`` (``/tree/REV``); None for any other URL."""
    from huggingface_hub import constants

    base = urlparse(endpoint or constants.ENDPOINT)
    parsed = urlparse(url)
    if (parsed.scheme, parsed.netloc) != (base.scheme, base.netloc):
        return None
    path = unquote(parsed.path)
    m = re.match(r"^/([^/]+/[^/]+)/(?:resolve|blob)/([^/]+)/(.+)$", path)
    if m:
        return m.group(1), m.group(2), m.group(3)
    m = re.match(r"^/([^/]+/[^/]+?)(?:/tree/([^/]+))?/?$", path)
    return (m.group(1), m.group(2), None) if m and not path.startswith("/api/") else None


def check_downloads_allowed(source: Source, target: InstallTarget) -> None:
    """Downloads need --allow-downloads; a hub source also needs huggingface_hub to be online."""
    if source.kind == "path":
        return
    if not target.allow_downloads:
        raise InstallError(DOWNLOADS_OFF)
    if source.kind == "hub":
        from huggingface_hub import constants

        if constants.is_offline_mode():
            raise InstallError("downloads from the hub are off: HF_HUB_OFFLINE=1 is set in this process's "
                               "environment; start Easel through ./launch.sh --allow-downloads, or unset HF_HUB_OFFLINE")


def host_addresses(host: str) -> list[str]:
    """The IP addresses ``host`` resolves to (none when it does not resolve)."""
    try:
        return [info[4][0] for info in socket.getaddrinfo(host, None)]
    except (socket.gaierror, UnicodeError):
        return []


def check_public_url(url: str, target: InstallTarget) -> None:
    """A client's URL (and every redirect) must lead to a public address, so that an install cannot
    probe this machine or its private network; the hub endpoint the operator set is always allowed."""
    if target.allow_private_hosts:
        return
    from huggingface_hub import constants

    host = urlparse(url).hostname or ""
    if host == urlparse(target.endpoint or constants.ENDPOINT).hostname:
        return
    for text in host_addresses(host):
        address = ipaddress.ip_address(text.split("%")[0])
        if not address.is_global or address.is_multicast:
            raise InstallError(f"source: {host} is an address of this machine or a private network ({text}); "
                               "installs from clients fetch only from public hosts (the operator can run "
                               "./launch.sh install on the server)")


def local_path(source: Source, target: InstallTarget, from_client: bool) -> Path:
    """The local file a path source names; clients may name one only with --allow-server-paths."""
    if from_client and not target.allow_server_paths:
        raise InstallError("source: paths on the server are not accepted from clients (the server was started "
                           "without --allow-server-paths); give a repo id or an https:// URL, or run "
                           "`./launch.sh install PATH` on the server")
    path = Path(source.text).expanduser()
    if not path.is_file():
        raise InstallError(f"source: {path} is not a file (a diffusers folder cannot be installed this way yet)")
    return path


# --------------------------------------------------------------------------- names


def safe_file_name(name: str) -> str:
    """The last part of ``name`` with characters that have a meaning on a file system replaced."""
    base = re.split(r"[\\/]", name.strip())[-1]
    base = re.sub(r"[^\w.\- ()+\[\]]", "_", base).strip(" .")
    if not base or base in (".", ".."):
        raise InstallError(f"cannot make a file name from {name!r}")
    return base[:200]


def check_name(name: str, allow_pickle: bool) -> None:
    """``.safetensors``, or a pickle format with allow_pickle; anything else is refused."""
    suffix = Path(name).suffix.lower()
    if suffix == SAFE_SUFFIX:
        return
    if suffix in PICKLE_SUFFIXES:
        if allow_pickle:
            return
        raise InstallError(f"{name}: {suffix} files are Python pickles, which can run code when loaded; they are "
                           "refused unless you allow pickle-format files (allow_pickle / --allow-pickle), and then "
                           "read only with the safe weights-only loader. Prefer a .safetensors file")
    raise InstallError(f"{name}: not a model file Easel installs; expected .safetensors "
                       f"(or {', '.join(PICKLE_SUFFIXES)} with allow_pickle)")


def name_from_disposition(header: str | None) -> str | None:
    """The file name of a ``Content-Disposition`` header (``filename*=UTF-8''...`` first)."""
    if not header:
        return None
    m = re.search(r"filename\*\s*=\s*[^']*'[^']*'([^;]+)", header, re.I)
    if m:
        return unquote(m.group(1).strip().strip('"'))
    m = re.search(r'filename\s*=\s*"([^"]+)"', header, re.I) or re.search(r"filename\s*=\s*([^;]+)", header, re.I)
    return m.group(1).strip() if m else None


# --------------------------------------------------------------------------- resolving


@contextmanager
def hub_errors(source: Source) -> Iterator[None]:
    """huggingface_hub's errors as InstallErrors that say what to do."""
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except RepositoryNotFoundError:
        raise InstallError(f"repo {source.text!r} not found on the hub (or it is private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise InstallError(f"revision {source.revision!r} not found in {source.text}") from None
    except EntryNotFoundError:
        raise InstallError(f"{source.file!r} not found in {source.text}") from None
    except HfHubHTTPError as err:
        raise InstallError(f"the hub refused {source.text}: {str(err).splitlines()[0]}") from None
    except OSError as err:  # httpx's network errors too (no connection, timeout)
        raise InstallError(f"cannot reach the hub for {source.text}: {type(err).__name__}: {err}") from None


def resolve_hub(source: Source, target: InstallTarget, path: str | None = None) -> Resolved:
    """URL, size and sha256 of one file in a hub repo (``path``, else ``source.file``), through huggingface_hub."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    filename = path or source.file
    assert filename, "a hub file to resolve"
    with hub_errors(source):
        url = hf_hub_url(source.text, filename, revision=source.revision, endpoint=target.endpoint)
        meta = get_hf_file_metadata(url, endpoint=target.endpoint)
    sha = meta.etag if meta.etag and re.fullmatch(r"[0-9a-f]{64}", meta.etag) else None  # LFS files: the sha256
    headers = build_hf_headers() if same_host(meta.location, url) else {}
    key = f"hub:{source.text}@{meta.commit_hash or source.revision or 'main'}/{filename}"
    return Resolved(meta.location, local_hub_name(source.text, filename), meta.size, sha, headers, key)


def local_hub_name(repo: str, filename: str) -> str:
    """The file's name, or the repo's for diffusers' generic names (``diffusion_pytorch_model``,
    ``pytorch_lora_weights``, ...), so ``<lora:NAME>`` and the lists show what it is."""
    path = Path(filename)
    if path.stem.lower() in GENERIC_STEMS:
        return safe_file_name(repo.split("/")[-1] + path.suffix)
    return safe_file_name(path.name)


def same_host(a: str, b: str) -> bool:
    return urlparse(a).netloc == urlparse(b).netloc


@dataclass(frozen=True)
class RepoEntry:
    """One file of a hub repo: its path, size and (LFS files) sha256."""

    path: str
    size: int
    sha256: str | None


def repo_listing(source: Source, target: InstallTarget) -> list[RepoEntry]:
    """Every file of the repo at the revision, through huggingface_hub."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    with hub_errors(source):
        tree = HfApi(endpoint=target.endpoint).list_repo_tree(source.text, recursive=True, revision=source.revision)
        return [RepoEntry(f.path, f.size, f.lfs.sha256 if f.lfs else None) for f in tree if isinstance(f, RepoFile)]


def choose_repo_file(source: Source, listing: list[RepoEntry]) -> str | None:
    """The one model file at the top of a repo; None for a diffusers folder without one (installed
    whole, see ``modules.install_folders``); a repo with several asks for ``file``."""
    top = [e.path for e in listing if "/" not in e.path]
    safe = [f for f in top if f.lower().endswith(SAFE_SUFFIX)]
    if len(safe) == 1:
        return safe[0]
    if not safe and "model_index.json" in top:
        return None
    choices = safe or [f for f in top if f.lower().endswith(PICKLE_SUFFIXES)]
    if not choices:
        raise InstallError(f"{source.text} has no model file at its top level; name one: owner/name/path/FILE.safetensors")
    raise InstallError(f"{source.text} holds several model files; name one with file or owner/name/FILE: "
                       f"{', '.join(choices[:12])}")


def login_hint(status: int) -> str:
    """What to do when a file host asks for credentials."""
    if status not in (401, 403):
        return ""
    return ("; the file needs a login: for Civitai add ?token=YOUR_API_KEY to the URL, for a Hugging Face URL "
            "set HF_TOKEN (or give the repo id)")


def resolve_url(source: Source, client: Any) -> Resolved:
    """A plain URL's final address, file name (Content-Disposition, else the path) and size."""
    import httpx

    try:
        with client.stream("GET", source.text, headers={"Accept-Encoding": "identity"}) as response:
            if response.status_code >= 400:
                raise InstallError(f"{source.text}: the server answered {response.status_code} "
                                   f"{response.reason_phrase}{login_hint(response.status_code)}")
            name = name_from_disposition(response.headers.get("content-disposition"))
            final = str(response.url)
            size = response.headers.get("content-length")
    except httpx.HTTPError as err:
        raise InstallError(f"{source.text}: {type(err).__name__}: {err}") from None
    name = name or unquote(Path(urlparse(final).path).name)
    return Resolved(final, safe_file_name(name), int(size) if size and size.isdigit() else None, None, {},
                    f"url:{source.text}")


# --------------------------------------------------------------------------- downloading


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
def part_lock(part: Path) -> Iterator[None]:
    """Hold ``part`` for one install: another (the CLI while the server fetches the same file) is
    refused instead of writing into it too. Without ``fcntl`` (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    part.parent.mkdir(parents=True, exist_ok=True)
    lock = part.with_name(part.name + ".lock")
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InstallError(f"{part.name.split('-', 1)[-1].removesuffix('.part')} is being downloaded by "
                               "another install right now; wait for it to finish") from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


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


# --------------------------------------------------------------------------- detecting


def tensor_meta(path: Path, name: str) -> dict[str, Any]:
    """The tensors of ``path``, read as the format ``name``'s suffix says: shapes only (on the meta
    device) from a .safetensors header; a pickle format whole, with the safe weights-only loader
    (refused if it holds anything that could run code)."""
    if Path(name).suffix.lower() == SAFE_SUFFIX:
        header = read_safetensors_header(path, name)
        return {key: torch.empty(value["shape"], device="meta") for key, value in header.items()
                if key != "__metadata__" and isinstance(value, dict) and "shape" in value}
    try:
        data = load_pickle_safely(path)
    except CheckpointError as err:
        raise InstallError(f"{name} was refused: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise InstallError(f"{name} holds a {type(data).__name__}, not tensors")
    return data


def read_safetensors_header(path: Path, name: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= min(100 << 20, path.stat().st_size - 8):
                raise ValueError("bad header length")
            header = json.loads(f.read(size))
        if not isinstance(header, dict):
            raise ValueError("the header is not an object")
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
        if 8 + size + max(ends, default=0) != path.stat().st_size:
            raise ValueError("its tensors do not fill the file: truncated or damaged")
        return header
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise InstallError(f"{name} is not a .safetensors file ({err}); it may be an HTML page or a "
                           "different format with the wrong name") from None


def detect_kind(data: dict[str, Any]) -> tuple[str | None, str]:
    """(model type or None, a detail such as the architecture), from the tensors' names and shapes."""
    from modules.controlnet.models import detect_family
    from modules.embeddings import EmbeddingError, embedding_from_data

    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if UNET_IN_KEY in tensors:
        try:
            return "checkpoint", detect_architecture(tensors)
        except CheckpointError as err:
            raise InstallError(f"a Stable Diffusion checkpoint Easel cannot use: {err}") from None
    try:
        return "controlnet", detect_family(tensors)
    except ValueError:
        pass
    flat = [k.replace(".", "_") for k in tensors]
    if any(re.search(r"lora_(down|up|A|B)|hada_|lokr_", k) for k in flat):
        return "lora", ""
    if any(k.startswith(("encoder.", "first_stage_model.encoder.", "decoder.")) and "conv_in" in k for k in tensors):
        return "vae", ""
    try:
        embedding = embedding_from_data(data, Path("embedding"))
        return "embedding", f"{embedding.vectors} vectors"
    except (EmbeddingError, RuntimeError, TypeError):
        pass
    return None, ""


def choose_type(detected: str | None, detail: str, requested: str | None, name: str) -> tuple[str, str]:
    """The contents decide; ``requested`` is used only when they cannot tell. Returns (type, note)."""
    if detected is None:
        if requested is None:
            raise InstallError(f"{name}: cannot tell what kind of model this is from its tensors; give the type "
                               f"({', '.join(MODEL_TYPES)}) if you know it")
        return requested, f"type {requested} as given (the contents did not tell)"
    what = f"{detected} ({detail})" if detail else detected
    if requested and requested != detected:
        return detected, f"you asked for a {requested}; its contents are a {what}, so it went to the {detected} folder"
    return detected, f"detected: {what}"


# --------------------------------------------------------------------------- installing


def place(file: Path, folder: Path, name: str, sha: str) -> tuple[Path, bool]:
    """Move ``file`` into ``folder`` as ``name`` (temp name + rename); an existing file of the same
    contents is kept (True: already there), one of other contents is never overwritten."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / name
    if dest.exists():
        if dest.is_file() and dest.stat().st_size == file.stat().st_size and file_sha256(dest) == sha:
            file.unlink()
            return dest, True
        raise InstallError(f"{dest.name} already exists in {folder} with other contents; delete or rename it first")
    tmp = folder / f".{name}.installing"
    shutil.move(str(file), tmp)  # a rename inside the data folder; a copy if the folder is on another disk
    os.replace(tmp, dest)
    return dest, False


def install(request: InstallRequest, target: InstallTarget, progress: Progress | None = None,
            cancelled: Cancelled = lambda: False, from_client: bool = True, client: Any = None) -> Installed:
    """Install one model file (the numbered steps in the module docstring). ``client``: an httpx.Client."""
    import httpx

    progress = progress or Progress()
    source = parse_source(request.source, request.file, request.revision, target.endpoint)
    check_downloads_allowed(source, target)
    remove_stale_parts(target)
    if source.kind == "path":
        path = local_path(source, target, from_client)
        name = safe_file_name(path.name)
        check_name(name, request.allow_pickle)
        return finish_local(path, name, request, target, progress)
    own = client is None
    hooks = {"request": [lambda r: check_public_url(str(r.url), target)]} if from_client else {}
    client = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30, read=60), event_hooks=hooks)
    try:
        progress.stage = "resolving"
        if source.kind == "hub" and not source.file:
            listing = repo_listing(source, target)
            filename = choose_repo_file(source, listing)
            if filename is None:
                from modules.install_folders import install_diffusers_repo

                return install_diffusers_repo(source, listing, request, target, client, progress, cancelled)
            source = replace(source, file=filename)
        resolved = resolve_hub(source, target) if source.kind == "hub" else resolve_url(source, client)
        check_name(resolved.name, request.allow_pickle)
        expected = request.sha256 or resolved.sha256
        if request.sha256 and resolved.sha256 and request.sha256 != resolved.sha256:
            raise InstallError(f"sha256: you gave {request.sha256}, the hub says {resolved.sha256} for {resolved.name}")
        found = existing_copy(target, resolved.name, resolved.size, expected)
        if found is not None:
            progress.stage = "done"
            return found
        part = part_path(target, resolved)
        with part_lock(part):
            try:
                download(resolved, part, target, client, progress, cancelled)
                return finish(part, resolved.name, expected, request, target, progress)
            except InstallCancelled:
                part.unlink(missing_ok=True)
                raise
    finally:
        if own:
            client.close()


def existing_copy(target: InstallTarget, name: str, size: int | None, sha: str | None) -> Installed | None:
    """The installed file of this name, size and sha256, if one is there (then nothing is downloaded)."""
    if sha is None or size is None:
        return None
    for kind, folder in target.folders.items():
        path = folder / name
        if path.is_file() and path.stat().st_size == size and file_sha256(path) == sha:
            return Installed(kind, name, path, size, sha, "already installed (same sha256): nothing downloaded")
    return None


def finish_local(path: Path, name: str, request: InstallRequest, target: InstallTarget, progress: Progress) -> Installed:
    """Copy a local file into the downloads folder, then finish as a download."""
    target.downloads_dir.mkdir(parents=True, exist_ok=True)
    size = path.stat().st_size
    check_space(target.downloads_dir, size, 0, target)
    part = target.downloads_dir / f"local-{name}.part"
    progress.stage, progress.total_bytes = "downloading", size
    shutil.copyfile(path, part)
    progress.done_bytes = size
    return finish(part, name, request.sha256, request, target, progress)


def finish(part: Path, name: str, expected_sha: str | None, request: InstallRequest, target: InstallTarget,
           progress: Progress) -> Installed:
    """Verify, detect and place a complete ``part`` file; on any failure it is deleted."""
    try:
        progress.stage = "verifying"
        sha = file_sha256(part)
        if expected_sha and sha != expected_sha:
            raise InstallError(f"sha256 mismatch for {name}: expected {expected_sha}, got {sha}; the file was "
                               "deleted (a wrong or damaged download)")
        progress.stage = "installing"
        detected, detail = detect_kind(tensor_meta(part, name))
        kind, note = choose_type(detected, detail, request.type, name)
        dest, existed = place(part, target.folders[kind], name, sha)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    progress.stage = "done"
    return Installed(kind, dest.name, dest, dest.stat().st_size, sha,
                     note + (" (already installed: same file)" if existed else ""))


# --------------------------------------------------------------------------- installed models


def diffusers_folders(folder: Path) -> list[Path]:
    """Diffusers model folders below ``folder``: a pipeline's ``model_index.json``, a ControlNet's ``config.json``."""
    marks = [*folder.rglob("model_index.json"), *folder.rglob("config.json")]
    roots = {p.parent for p in marks if p.name == "model_index.json" or is_controlnet_config(p)}
    return sorted(r for r in roots if not any(other in r.parents for other in roots))


def is_controlnet_config(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("_class_name") == "ControlNetModel"
    except (OSError, ValueError, AttributeError):
        return False


def list_installed(target: InstallTarget, sha256: Callable[[Path], str] | None = None) -> list[dict[str, Any]]:
    """Every model in the model folders: type, name, size and (with ``sha256``, single files) hash.
    A diffusers folder is one entry (its name is the folder's, its size the sum of its files)."""
    rows = []
    suffixes = (SAFE_SUFFIX, *PICKLE_SUFFIXES)
    for kind, folder in target.folders.items():
        if not folder.is_dir():
            continue
        dirs = diffusers_folders(folder) if kind in ("checkpoint", "controlnet") else []
        for d in dirs:
            size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
            rows.append({"type": kind, "name": d.relative_to(folder).as_posix(), "size": size, "sha256": None})
        for path in sorted(folder.rglob("*")):
            inside = path.relative_to(folder).parts
            if (path.is_file() and path.suffix.lower() in suffixes and "annotators" not in inside
                    and not any(d in path.parents for d in dirs)):
                rows.append({"type": kind, "name": path.relative_to(folder).as_posix(), "size": path.stat().st_size,
                             "sha256": sha256(path) if sha256 else None})
    return sorted(rows, key=lambda r: (MODEL_TYPES.index(r["type"]), r["name"].lower()))


def delete_installed(target: InstallTarget, kind: str, name: str) -> Path:
    """Delete one model (a file, or a diffusers folder) by type and name as ``list_installed`` gives
    them; nothing outside the type's folder, nothing that is not a listed model."""
    if kind not in target.folders:
        raise InstallError(f"type: {kind!r} is not one of {', '.join(MODEL_TYPES)}")
    folder = target.folders[kind]
    from modules.access import is_inside

    listed = {row["name"] for row in list_installed(target) if row["type"] == kind}
    if not is_inside(folder, name) or name not in listed:
        raise InstallError(f"{name!r} is not a {kind} in {folder.name}")
    path = folder / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    return path
