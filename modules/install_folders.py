"""Installing a diffusers pipeline repo whole (``owner/name`` with ``model_index.json`` and no single file).

Only what Easel loads is fetched: ``model_index.json`` and, for each component it names (but the
safety checker, which Easel never loads), its configs, tokenizer files and ``.safetensors``
weights: the full-precision files when the repo has them, else the ``fp16`` variant (saved under
the plain name, as diffusers reads it). ``.bin``/``.ckpt`` weights, ONNX/Flax files, single-file
copies at the top and folders the pipeline does not name are skipped. A component with pickle
weights only is refused. Every file goes through ``installer.download`` (Range resume, the hub's
sha256, the size limit), into a temporary folder renamed into ``models/Stable-diffusion/NAME`` at
the end.

Resuming and locking: the temporary folder is ``models/.downloads/HASH-NAME.folder``, HASH naming the
repo and the commit ``model_index.json`` resolved to (every file is then fetched from that commit).
While an install writes it, it holds ``models/.downloads/NAME.folder.lock`` (``flock``): a second
install of the same repo (or of another with the same NAME), in this process or another, is refused
with AlreadyInstalling (409) and touches nothing. A dropped connection, a killed process or a server
shutdown leaves the folder: the next install of the repo at the same commit resumes it (a file left
by an earlier run is kept only when its size, and its sha256 where the hub gives one, match; a
``.part`` file continues with a Range). Only a complete folder, each file checked, is renamed into
place, so a half-done install never shows up in the checkpoint list. A cancel, a sha256 mismatch, a
pipeline over the size limit or of an unknown kind removes the temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from modules.install_download import check_space, download, install_lock
from modules.install_sources import resolve_hub, safe_file_name
from modules.install_types import (
    AlreadyInstalling,
    Cancelled,
    DownloadFailed,
    GiB,
    InstallCancelled,
    Installed,
    InstallError,
    InstallRequest,
    InstallTarget,
    Progress,
    RepoEntry,
    Resolved,
    Source,
)

SKIPPED_COMPONENTS = ("safety_checker",)  # loaded with safety_checker=None (modules.model_loading)
CONFIG_SUFFIXES = (".json", ".txt", ".model")  # configs, tokenizer vocab/merges, sentencepiece models
VARIANT_RE = re.compile(r"\.fp16(?=\.safetensors|\.json$)")
PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusionInpaintPipeline")


class PartProgress:
    """The Progress of one file among several: its bytes count on top of the files before it."""

    def __init__(self, whole: Progress, base: int) -> None:
        self._whole, self._base = whole, base

    @property
    def stage(self) -> str:
        return self._whole.stage

    @stage.setter
    def stage(self, value: str) -> None:
        self._whole.stage = value

    @property
    def done_bytes(self) -> int:
        return self._whole.done_bytes - self._base

    @done_bytes.setter
    def done_bytes(self, value: int) -> None:
        self._whole.done_bytes = self._base + value

    @property
    def total_bytes(self) -> int | None:
        return self._whole.total_bytes

    @total_bytes.setter
    def total_bytes(self, value: int | None) -> None:
        pass  # the whole's total is the sum of the files, set once


def components(model_index: dict[str, Any]) -> list[str]:
    """The folders ``model_index.json`` names (entries ``[library, class]`` that are not null)."""
    return [name for name, value in model_index.items()
            if re.fullmatch(r"[A-Za-z0-9][\w-]*", name) and isinstance(value, list) and len(value) == 2
            and value[0] and value[1] and name not in SKIPPED_COMPONENTS]  # plain folder names only: no "..", no "/"


def select_files(listing: list[RepoEntry], folders: list[str]) -> list[tuple[RepoEntry, str]]:
    """(repo file, local path) of what to fetch: each component's configs and safetensors weights (the
    plain ones, else the fp16 variant saved under the plain name, with its shard index)."""
    chosen: list[tuple[RepoEntry, str]] = []
    for folder in folders:
        entries = [e for e in listing if e.path.startswith(f"{folder}/") and e.path.count("/") == 1]
        weights = [e for e in entries if e.path.endswith(".safetensors")]
        plain = [e for e in weights if not VARIANT_RE.search(e.path)]
        use = plain or [e for e in weights if VARIANT_RE.search(e.path)]
        if not use and any(e.path.endswith((".bin", ".ckpt", ".pt", ".pth")) for e in entries):
            raise InstallError(f"{folder}: this repo has only pickle (.bin) weights for it; the installer takes "
                               ".safetensors only for diffusers folders")
        variant = not plain
        for entry in entries:
            path = entry.path
            if ".index." in path:  # a sharded model's index: the one of the chosen weights
                if ".safetensors.index" in path and bool(VARIANT_RE.search(path)) == variant:
                    chosen.append((entry, VARIANT_RE.sub("", path)))
            elif path.endswith(CONFIG_SUFFIXES):
                chosen.append((entry, path))
        chosen += [(e, VARIANT_RE.sub("", e.path)) for e in use]
    return chosen


def pipeline_name(source: Source) -> str:
    return safe_file_name(source.text.split("/")[-1])


def work_folder(target: InstallTarget, repo: str, commit: str, name: str) -> Path:
    """The temporary folder of ``repo`` at ``commit``: the same repo and commit resume the same folder."""
    digest = hashlib.sha256(f"{repo}@{commit}".encode()).hexdigest()[:16]
    return target.downloads_dir / f"{digest}-{name}.folder"


def remove_other_work(target: InstallTarget, name: str, keep: Path) -> None:
    """Older temporary folders of this NAME (another commit, another repo of the same name): removed."""
    for path in target.downloads_dir.glob("*.folder"):
        if path != keep and path.is_dir() and path.name.split("-", 1)[-1] == f"{name}.folder":
            shutil.rmtree(path, ignore_errors=True)


def install_diffusers_repo(source: Source, listing: list[RepoEntry], request: InstallRequest, target: InstallTarget,
                           client: Any, progress: Progress, cancelled: Cancelled) -> Installed:
    """Fetch the pipeline's files into a temporary folder (locked, resumable), check it, rename it into place."""
    folder = target.folders["checkpoint"]
    name = pipeline_name(source)
    dest = folder / name
    if dest.exists():
        raise InstallError(f"{name} already exists in {folder}; delete or rename it first")
    with install_lock(target.downloads_dir / f"{name}.folder", f"{name} (from {source.text})"):
        if dest.exists():  # another install finished it while we waited for the lock
            raise AlreadyInstalling(f"{name} was just installed by another install")
        index_file = resolve_hub(source, target, "model_index.json")
        commit = index_file.commit or source.revision or "main"
        pinned = replace(source, revision=commit) if index_file.commit else source
        work = work_folder(target, source.text, commit, name)
        remove_other_work(target, name, work)
        try:
            files, model_index, total = fetch_pipeline(pinned, listing, work, target, client, progress, cancelled)
            check_complete(work, files)
            progress.stage = "installing"
            folder.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                raise InstallError(f"{name} already exists in {folder}; delete or rename it first")
            shutil.move(str(work), dest)  # a rename on the same disk
        except (DownloadFailed, AlreadyInstalling):
            raise  # the files fetched so far stay for the next try
        except InstallError:  # cancelled, a sha256 mismatch, over the limit, not a pipeline: start afresh next time
            shutil.rmtree(work, ignore_errors=True)
            raise
    progress.stage = "done"
    return Installed("checkpoint", name, dest, total, "", f"diffusers folder ({model_index['_class_name']}, "
                                                          f"{len(files)} files)")


def fetch_pipeline(source: Source, listing: list[RepoEntry], work: Path, target: InstallTarget, client: Any,
                   progress: Progress, cancelled: Cancelled) -> tuple[list[tuple[RepoEntry, str]], dict[str, Any], int]:
    """``model_index.json``, then each file Easel loads, into ``work``: (files, model index, total bytes)."""
    index = fetch(source, "model_index.json", work / "model_index.json", target, client, Progress(), cancelled)
    model_index = json.loads(index.read_text())
    if model_index.get("_class_name") not in PIPELINE_CLASSES:
        raise InstallError(f"{source.text} is a {model_index.get('_class_name')!r}, not a Stable Diffusion "
                           f"pipeline ({', '.join(PIPELINE_CLASSES)})")
    files = select_files(listing, components(model_index))
    total = index.stat().st_size + sum(entry.size for entry, _ in files)
    if total > target.max_bytes:
        raise InstallError(f"the pipeline's files are {total / GiB:.1f} GiB, over the {target.max_bytes / GiB:.1f} "
                           "GiB limit")
    have = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
    check_space(target.downloads_dir, total, min(have, total), target)
    progress.stage, progress.total_bytes, done = "downloading", total, index.stat().st_size
    for entry, local in files:
        fetch(source, entry.path, work / local, target, client, PartProgress(progress, done), cancelled)
        done += entry.size
    return files, model_index, total


def check_complete(work: Path, files: list[tuple[RepoEntry, str]]) -> None:
    """Every chosen file is in ``work`` at the listed size, and nothing else is (leftovers of an
    earlier run are removed): only such a folder is renamed into place."""
    wanted = {local: entry.size for entry, local in files}
    wanted["model_index.json"] = (work / "model_index.json").stat().st_size
    for path in sorted(work.rglob("*"), reverse=True):
        local = path.relative_to(work).as_posix()
        if path.is_file() and local not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    for local, size in wanted.items():
        path = work / local
        if not path.is_file() or path.stat().st_size != size:
            raise DownloadFailed(f"{local} is missing or incomplete in the download; try again to resume it")


def fetch(source: Source, path: str, local: Path, target: InstallTarget, client: Any, progress: Any,
          cancelled: Cancelled) -> Path:
    """One repo file into ``local`` (resumed if partly there), its sha256 checked when the hub gives one.
    A file left complete by an earlier run is kept when its size and sha256 match, else fetched again."""
    from modules.checkpoints import file_sha256

    resolved = resolve_hub(source, target, path)
    if cancelled():
        raise InstallCancelled("the install was cancelled")
    local.parent.mkdir(parents=True, exist_ok=True)
    part = local.with_name(local.name + ".part")
    if local.exists():
        size_ok = resolved.size is None or local.stat().st_size == resolved.size
        if size_ok and (resolved.sha256 is None or file_sha256(local) == resolved.sha256):
            progress.done_bytes = local.stat().st_size
            return local
        local.unlink()  # from another commit, or damaged: fetched again
    download(Resolved(resolved.url, local.name, resolved.size, resolved.sha256, resolved.headers, resolved.key),
             part, target, client, progress, cancelled)
    if resolved.sha256 and file_sha256(part) != resolved.sha256:
        part.unlink()
        raise InstallError(f"sha256 mismatch for {path} in {source.text}; the file was deleted")
    os.replace(part, local)
    return local
