"""What a client may touch on this machine's disk, decided in one place.

Clients (the web UI, the HTTP API, Gradio's own endpoints) name folders and files: the output,
LoRA and embeddings folders in settings, and server folders in training requests. Every such
name goes through ``ClientAccess``:

- a folder setting a client changes must stay inside the data folder: relative, no ``..``, no
  drive, and still inside once symlinks are resolved. A value the operator set (on the command
  line or in ``config.json``) may be anywhere and stays as it is while a client leaves it alone;
- a server path in a request body (training's ``instance_dir`` and ``class_dir``) is refused
  unless the operator started Easel with ``--allow-server-paths`` (the ``train`` command line,
  run by the operator, always may). The refusal is the same whether the path exists or not, so
  it reveals nothing about the server's disk.

File names built from client text (the file name pattern, training output names, prompt words)
are checked where they are made: ``modules.images.check_pattern`` and the training request's
name rule allow no path separators.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from modules.schemas import RequestError

# Settings that name a folder Easel writes or reads, which a client may change.
CLIENT_FOLDER_SETTINGS = (
    "outdir_txt2img_samples", "outdir_img2img_samples", "outdir_extras_samples", "lora_dir", "embeddings_dir",
)
# Settings a client may never change (set them on the command line or in config.json).
OPERATOR_ONLY_SETTINGS = ("data_dir", "ckpt_dirs", "extensions_dir", "disabled_extensions")  # extensions run code


def is_inside(data_dir: Path, path_text: str) -> bool:
    """True when ``path_text`` names a place inside ``data_dir``: relative, no '..', no drive, and
    inside once symlinks are resolved."""
    if not path_text.strip() or "\0" in path_text:
        return False
    for pure in (PurePosixPath(path_text), PureWindowsPath(path_text)):
        if pure.is_absolute() or pure.drive or ".." in pure.parts:
            return False
    root = data_dir.resolve()
    resolved = (root / path_text).resolve()
    return resolved == root or root in resolved.parents


@dataclass(frozen=True)
class ClientAccess:
    """The operator's choices about clients and the disk (from flags; a client never changes them)."""

    allow_server_paths: bool = False

    def folder_setting_error(self, value: object, current: object, data_dir: Path) -> str | None:
        """Why a client may not change a folder setting from ``current`` to ``value`` (None: it may)."""
        if value == current:
            return None  # the operator's own value, left as it is
        if not isinstance(value, str) or not is_inside(data_dir, value):
            return "must be a folder inside the data folder (a relative path without '..')"
        return None

    def server_folder(self, field: str, text: str) -> Path:
        """The server folder a request names in ``field``; a RequestError unless --allow-server-paths."""
        if not self.allow_server_paths:
            raise RequestError(f"{field}: folders on the server are not accepted from clients (the server was "
                               "started without --allow-server-paths); upload the images instead")
        return Path(text).expanduser()
