"""Saved images under an fsspec URL instead of the data folder (the serve command's ``--outputs-url``).

``file:///shared/outputs``, ``s3://bucket/prefix``, ``gs://...``, ``memory://x`` (tests): any URL
fsspec opens (s3 and gs need their own package, ``s3fs`` / ``gcsfs``). A local outputs folder maps
to the same place under the URL: ``<data>/outputs/txt2img-images/2026-12-05`` becomes
``URL/txt2img-images/2026-12-05``; a folder elsewhere in the data folder keeps its path relative to
it, one outside it its whole path.

Each file appears whole or not at all: on an object store (s3, gs, azure, memory) it is one put,
elsewhere it is written under a hidden temporary name (``.NAME.tmp``) and then moved into place.
File names end in the writer's ``tag`` (a Serve replica's id), so replicas sharing the URL never
choose the same name; within one process the saver's lock serialises naming and writing.
"""

from __future__ import annotations

import io
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from modules.images import ImageSaveError

OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})  # a put is atomic


class OutputsUrlError(ValueError):
    """The URL cannot be opened (unknown protocol, its package not installed, malformed)."""


def open_url(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, root path in it) of ``url``; OutputsUrlError naming the flag otherwise."""
    if "://" not in url:
        raise OutputsUrlError(f"--outputs-url {url!r}: give a URL such as file:///shared/outputs or s3://bucket/prefix")
    import fsspec.core

    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:  # unknown protocol; its package (s3fs, gcsfs, ...) missing
        raise OutputsUrlError(f"--outputs-url {url!r}: {err}") from None
    return fs, root.rstrip("/") or "/"


class UrlOutputs:
    """An :class:`modules.images.ImageOutputs` writing under an fsspec URL."""

    def __init__(self, url: str, data_dir: Path, tag: str = "") -> None:
        self.fs, self.root = open_url(url)
        self.url = url.rstrip("/")
        self.data_dir = Path(os.path.normpath(data_dir))
        self.tag = tag
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
        self.single_put = bool(protocols & OBJECT_STORES)

    def place_of(self, folder: Path) -> str:
        """The path, relative to the URL, standing for the local outputs ``folder`` ('' for the URL itself)."""
        folder = Path(os.path.normpath(folder))
        for base in (self.data_dir / "outputs", self.data_dir):
            if folder.is_relative_to(base):
                relative = folder.relative_to(base).as_posix()
                break
        else:
            relative = folder.relative_to(folder.anchor).as_posix()
        return "" if relative == "." else relative

    def fs_path(self, place: str, name: str = "") -> str:
        """The filesystem's path of ``place/name``."""
        return "/".join(p for p in (self.root.rstrip("/"), place, name) if p) or "/"

    def url_of(self, place: str, name: str = "") -> str:
        """The URL of ``place/name``, on the operator's URL."""
        return "/".join(p for p in (self.url, place, name) if p)

    def save(self, folder: Path, write: Callable[[BinaryIO], None],
             free_name: Callable[[Iterable[str], str], str], lock: threading.Lock) -> str:
        """Encode with ``write``, name with ``free_name`` (under ``lock``) and store one file; its URL."""
        place = self.place_of(folder)
        buffer = io.BytesIO()
        write(buffer)
        try:
            with lock:
                name = free_name(self.names(self.fs_path(place)), self.tag)
                self.put(self.fs_path(place, name), buffer.getvalue())
        except Exception as err:  # noqa: BLE001 - any store's failure (OSError, botocore's, ...) is the save's
            cause = err if isinstance(err, OSError) else OSError(f"{type(err).__name__}: {err}")
            raise ImageSaveError(self.url_of(place), cause) from err
        return self.url_of(place, name)

    def names(self, folder: str) -> list[str]:
        """The file names already in the filesystem's ``folder`` (none when it does not exist yet)."""
        try:
            return [path.rstrip("/").rsplit("/", 1)[-1] for path in self.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []

    def put(self, path: str, data: bytes) -> None:
        """Store ``data`` at ``path`` so that it appears whole or not at all."""
        if self.single_put:
            self.fs.pipe_file(path, data)
            return
        folder, name = path.rsplit("/", 1)
        self.fs.makedirs(folder, exist_ok=True)
        temp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            self.fs.pipe_file(temp, data)
            self.fs.mv(temp, path)
        except BaseException:
            try:
                self.fs.rm(temp)
            except (OSError, FileNotFoundError):
                pass
            raise
