"""Installing a diffusers pipeline repo whole (``owner/name`` with ``model_index.json`` and no single file).

Only what Easel loads is fetched: ``model_index.json`` and, for each component it names (but the
safety checker, which Easel never loads), its configs, tokenizer files and ``.safetensors``
weights: the full-precision files when the repo has them, else the ``fp16`` variant (saved under
the plain name, as diffusers reads it). ``.bin``/``.ckpt`` weights, ONNX/Flax files, single-file
copies at the top and folders the pipeline does not name are skipped. A component with pickle
weights only is refused. Every file goes through ``installer.download`` (Range resume, the hub's
sha256, the size limit), into a temporary folder renamed into ``models/Stable-diffusion/NAME`` at
the end; a failure or a cancel removes the temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from modules.install_download import check_space, download
from modules.install_sources import resolve_hub, safe_file_name
from modules.install_types import (
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


def install_diffusers_repo(source: Source, listing: list[RepoEntry], request: InstallRequest, target: InstallTarget,
                           client: Any, progress: Progress, cancelled: Cancelled) -> Installed:
    """Fetch the pipeline's files into a temporary folder, check them, rename it into place."""
    folder = target.folders["checkpoint"]
    name = pipeline_name(source)
    dest = folder / name
    if dest.exists():
        raise InstallError(f"{name} already exists in {folder}; delete or rename it first")
    work = target.downloads_dir / f"{name}.folder"
    try:
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
        check_space(target.downloads_dir, total, 0, target)
        progress.stage, progress.total_bytes, done = "downloading", total, index.stat().st_size
        for entry, local in files:
            fetch(source, entry.path, work / local, target, client, PartProgress(progress, done), cancelled)
            done += entry.size
        progress.stage = "installing"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(str(work), dest)  # a rename on the same disk
    except DownloadFailed:
        raise  # the files fetched so far stay for the next try
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    progress.stage = "done"
    return Installed("checkpoint", name, dest, total, "", f"diffusers folder ({model_index['_class_name']}, "
                                                          f"{len(files)} files)")


def fetch(source: Source, path: str, local: Path, target: InstallTarget, client: Any, progress: Any,
          cancelled: Cancelled) -> Path:
    """One repo file into ``local`` (resumed if partly there), its sha256 checked when the hub gives one."""
    from modules.checkpoints import file_sha256

    resolved = resolve_hub(source, target, path)
    if cancelled():
        raise InstallCancelled("the install was cancelled")
    local.parent.mkdir(parents=True, exist_ok=True)
    part = local.with_name(local.name + ".part")
    if not local.exists():
        download(Resolved(resolved.url, local.name, resolved.size, resolved.sha256, resolved.headers, resolved.key),
                 part, target, client, progress, cancelled)
        if resolved.sha256 and file_sha256(part) != resolved.sha256:
            part.unlink()
            raise InstallError(f"sha256 mismatch for {path} in {source.text}; the file was deleted")
        os.replace(part, local)
    return local

