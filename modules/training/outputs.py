"""Where a training's result goes, and writing it without ever leaving half a file.

Full DreamBooth writes ``models/Stable-diffusion/NAME.safetensors`` (with ``NAME.yaml`` when the
base had a companion config), LoRA ``models/Lora/NAME.safetensors``, textual inversion
``embeddings/NAME.safetensors``. A file is written under a hidden temporary name in the same
folder and renamed into place, so the folder holds either the old file or the complete new one.
An existing model of that name is replaced only with ``overwrite``. A disk without room for the
file is a clear error before anything is written (and if it fills up while writing, the temporary
file is removed and the same error is raised).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from modules.config import Settings
from modules.training.config import MODEL_SUFFIXES

DISK_MARGIN = 16 << 20  # bytes kept free beyond the file itself


class OutputExists(ValueError):
    """A model of the output name is already there and overwrite was not asked."""


class DiskFull(OSError):
    """There is not enough free disk space for the result."""


def output_folder(settings: Settings, method: str) -> Path:
    if method == "dreambooth":
        return settings.checkpoint_dirs[0]
    if method == "lora":
        return settings.path(settings.lora_dir)
    return settings.path(settings.embeddings_dir)


def output_path(settings: Settings, method: str, name: str) -> Path:
    return output_folder(settings, method) / f"{name}.safetensors"


def state_path(settings: Settings, method: str, name: str) -> Path:
    """The resumable state of a training (in ``cache/train-state/``: the LoRA and embedding folders
    list every ``.pt`` below them, so a state file there would show up as a LoRA or an embedding)."""
    return settings.cache_dir / "train-state" / f"{method}-{name}" / "state.pt"


def check_name_free(path: Path, overwrite: bool) -> None:
    """OutputExists unless ``overwrite`` when a model file of that name (any model suffix) exists."""
    if overwrite:
        return
    for suffix in MODEL_SUFFIXES:
        existing = path.with_suffix(suffix)
        if existing.exists():
            raise OutputExists(f"output_name: {existing} already exists; choose another name, or set overwrite to "
                               f"replace it")


def disk_free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def write_atomically(path: Path, write: Callable[[Path], None], estimate_bytes: int, overwrite: bool,
                     free_bytes: Callable[[Path], int] = disk_free_bytes) -> Path:
    """Call ``write(temporary path)`` and rename the result to ``path``.

    Refuses (OutputExists) when ``path`` exists and ``overwrite`` is False, and (DiskFull) when the
    folder has less than ``estimate_bytes`` plus a margin free; on any failure the temporary file
    is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise OutputExists(f"{path} already exists; choose another name, or set overwrite to replace it")
    free = free_bytes(path.parent)
    if free < estimate_bytes + DISK_MARGIN:
        raise DiskFull(errno.ENOSPC, _full_message(path, estimate_bytes, free))
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        write(temp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes the file private; a model is not
        os.replace(temp, path)
    except OSError as err:
        temp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(errno.ENOSPC, _full_message(path, estimate_bytes, None)) from None
        raise
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def _full_message(path: Path, needed: int, free: int | None) -> str:
    have = f"only {free / 2**20:.1f} MiB are free" if free is not None else "the disk filled up while writing"
    return (f"not enough disk space to write {path.name} in {path.parent}: it needs about {needed / 2**20:.1f} MiB "
            f"and {have}; nothing was written. Free some space and resume the training (its state is kept)")
