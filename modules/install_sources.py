"""Where an install comes from: parsing a source (repo id, URL, local path), the checks on it
(downloads allowed, public hosts only for clients, server paths), safe file names, and resolving
it to one file to download (through ``huggingface_hub`` for the hub, ``httpx`` for URLs)."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from modules.install_types import (
    DOWNLOADS_OFF,
    GENERIC_STEMS,
    PICKLE_SUFFIXES,
    SAFE_SUFFIX,
    DownloadFailed,
    InstallError,
    InstallTarget,
    RepoEntry,
    Resolved,
    Source,
)

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
        status = err.response.status_code if err.response is not None else 0
        error = DownloadFailed if status >= 500 or status == 429 else InstallError  # the hub's trouble: try again
        raise error(f"the hub refused {source.text}: {str(err).splitlines()[0]}") from None
    except OSError as err:  # httpx's network errors too (no connection, timeout): what was fetched stays
        raise DownloadFailed(f"cannot reach the hub for {source.text}: {type(err).__name__}: {err}") from None


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
    return Resolved(meta.location, local_hub_name(source.text, filename), meta.size, sha, headers, key,
                    meta.commit_hash)


def local_hub_name(repo: str, filename: str) -> str:
    """The file's name, or the repo's for diffusers' generic names (``diffusion_pytorch_model``,
    ``pytorch_lora_weights``, ...), so ``<lora:NAME>`` and the lists show what it is."""
    path = Path(filename)
    if path.stem.lower() in GENERIC_STEMS:
        return safe_file_name(repo.split("/")[-1] + path.suffix)
    return safe_file_name(path.name)


def same_host(a: str, b: str) -> bool:
    return urlparse(a).netloc == urlparse(b).netloc


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
