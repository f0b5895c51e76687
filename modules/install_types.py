"""The installer's types: the request a client sends, where installs go, the parsed source, the
result and the live progress (see ``modules.installer``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

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


class AlreadyInstalling(InstallError):
    """Another install (in this server or another process) is writing the same file or folder right
    now; the API answers 409."""


class InstallStopped(DownloadFailed):
    """The server is shutting down; what was fetched is kept, so the next install resumes it."""


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
    commit: str | None = None  # a hub file's commit (its repo revision pinned)


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


@dataclass(frozen=True)
class RepoEntry:
    """One file of a hub repo: its path, size and (LFS files) sha256."""

    path: str
    size: int
    sha256: str | None
