"""Installing models from a Hugging Face repo id, a URL or a local path, into Easel's model folders.

``install(request, target, ...)`` takes one straight path (the steps live in ``install_sources``,
``install_download`` and ``install_detect``; the types in ``install_types``):

1. ``parse_source``: the text is a URL (``https://...``; a hub ``/resolve/`` URL counts as a repo
   id), a local path (``/``, ``./``, ``~``, ``file://``) or a repo id ``owner/name[/file][@revision]``;
2. ``resolve_hub`` / ``resolve_url``: a hub file's URL, size and sha256 come from ``huggingface_hub`` (it honours
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
7. ``place``: the file is renamed into that folder (never over another file); the caller refreshes
   the lists (``modules.install_jobs``). A file already installed with the same sha256 is not
   downloaded again.

A repo id without a file takes the repo's one top-level ``.safetensors``; a diffusers pipeline repo
with none is installed whole as a folder (``modules.install_folders``); several files: name one.

Downloads are off unless the operator started Easel with ``--allow-downloads`` (launch.sh sets
``HF_HUB_OFFLINE=1`` otherwise); local paths install without it. Clients (UI, API) never name a
destination, and name a server path only when the operator allowed it (``--allow-server-paths``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from modules.checkpoints import file_sha256
from modules.install_detect import choose_type, detect_kind, tensor_meta
from modules.install_download import check_space, download, install_lock, part_path, remove_stale_parts
from modules.install_sources import (
    check_downloads_allowed,
    check_name,
    check_public_url,
    choose_repo_file,
    local_path,
    parse_source,
    repo_listing,
    resolve_hub,
    resolve_url,
    safe_file_name,
)
from modules.install_types import (
    MODEL_TYPES,
    PICKLE_SUFFIXES,
    SAFE_SUFFIX,
    Cancelled,
    InstallCancelled,
    Installed,
    InstallError,
    InstallRequest,
    InstallTarget,
    Progress,
    target_from_settings,
)

__all__ = [  # what clients (UI, API, CLI) use
    "MODEL_TYPES", "InstallCancelled", "InstallError", "InstallRequest", "InstallTarget", "Installed", "Progress",
    "delete_installed", "install", "list_installed", "target_from_settings",
]

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
        with install_lock(part, resolved.name):
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
