"""Textual-inversion embeddings in the ``embeddings`` folder: reading the file formats, listing.

An embedding is used by its file name without extension (``embeddings/my-style.pt`` →
``a photo of my-style``); ``modules.prompts`` puts its vectors in place of the name's tokens.
Formats, as A1111 reads them:

- A1111 ``.pt``: ``{"string_to_param": {"*": tensor [n, width]}, "step", "sd_checkpoint", ...}``,
  read with PyTorch's ``weights_only`` loader: a file that needs other objects (old files that
  pickled a ``ParameterDict``) is refused with a message, never unpickled;
- ``.safetensors``: one tensor (kohya's ``emb_params``), or ``clip_l`` and ``clip_g`` (SDXL);
- diffusers ``.bin`` (``{token: tensor}``, one token) through the same safe loader.

The folder is listed again at every job; a file is read once and again only when its size or
modification time changes, so a new or edited embedding is used at once without a restart.
Files that cannot be read are kept aside with their error: using one in a prompt is an error.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules.checkpoints import CLIP_KEYS, CheckpointError, CheckpointInfo, HashCache, load_pickle_safely

EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin")
SHORT_HASH_CHARS = 12  # A1111's TI hashes in the infotext: the first 12 hex digits of the sha256
SDXL_KEYS = ("clip_l", "clip_g")


class EmbeddingError(ValueError):
    """An embedding file cannot be read or does not fit; the message names it and says why."""


@dataclass(frozen=True)
class Embedding:
    """One embedding file: its vectors and what A1111's trainer wrote about it."""

    name: str
    path: Path
    tensors: dict[str, torch.Tensor]  # {"": [n, width]}, or {"clip_l": [n, 768], "clip_g": [n, 1280]}
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def shape(self) -> int:
        """A1111's ``shape``: the vector width (clip_l + clip_g widths for SDXL)."""
        return sum(t.shape[-1] for t in self.tensors.values())

    @property
    def vectors(self) -> int:
        """Vectors per token: how many token positions the embedding takes."""
        return next(iter(self.tensors.values())).shape[0]

    @property
    def is_sdxl(self) -> bool:
        return set(self.tensors) == set(SDXL_KEYS)

    def single(self) -> torch.Tensor | None:
        """The [n, width] vectors of a one-encoder embedding; None for SDXL's pair."""
        return None if self.is_sdxl else self.tensors[""]


def _rows(value: Any, path: Path) -> torch.Tensor:
    """A float32 [n, width] tensor from one stored vector or matrix."""
    if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2) or value.numel() == 0:
        described = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise EmbeddingError(f"{path.name}: expected a [vectors, width] tensor, found {described}")
    value = value.detach().to(torch.float32)
    return value.unsqueeze(0) if value.ndim == 1 else value


def embedding_from_data(data: Any, path: Path) -> Embedding:
    """An Embedding from a loaded file's contents (A1111's ``create_embedding_from_data``)."""
    name = path.stem
    if not isinstance(data, dict):
        raise EmbeddingError(f"{path.name} holds a {type(data).__name__}, not an embedding")
    if "string_to_param" in data:  # A1111 / original textual inversion
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise EmbeddingError(f"{path.name}: 'string_to_param' must hold exactly one term")

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) else None

        step = data.get("step")
        return Embedding(name, path, {"": _rows(next(iter(params.values())), path)},
                         step if isinstance(step, int) else None, text("sd_checkpoint"), text("sd_checkpoint_name"))
    if all(key in data for key in SDXL_KEYS):
        tensors = {key: _rows(data[key], path) for key in SDXL_KEYS}
        if tensors["clip_l"].shape[0] != tensors["clip_g"].shape[0]:
            raise EmbeddingError(f"{path.name}: clip_l and clip_g hold different numbers of vectors")
        return Embedding(name, path, tensors)
    tensors = [value for value in data.values() if isinstance(value, torch.Tensor)]
    if len(data) == 1 and len(tensors) == 1:  # kohya's {"emb_params": t}, diffusers' {token: t}
        return Embedding(name, path, {"": _rows(tensors[0], path)})
    keys = ", ".join(sorted(map(str, data))[:5])
    raise EmbeddingError(
        f"{path.name} is not a textual-inversion embedding: expected 'string_to_param', 'emb_params', "
        f"'clip_l'+'clip_g' or one token's tensor, found keys {keys}"
    )


def read_embedding(path: Path) -> Embedding:
    """Read one embedding file; EmbeddingError says what is wrong with a bad one."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            try:
                data: Any = load_file(str(path))
            except Exception as err:  # safetensors raises several types for a damaged file
                raise EmbeddingError(f"{path.name} is not a readable .safetensors file: {err}") from None
        else:
            data = load_pickle_safely(path)
    except CheckpointError as err:
        raise EmbeddingError(str(err)) from None
    return embedding_from_data(data, path)


@dataclass(frozen=True)
class EmbeddingScan:
    """The folder's embeddings: readable ones by name, unreadable ones with their error."""

    embeddings: dict[str, Embedding]
    broken: dict[str, str]


class EmbeddingLibrary:
    """The embeddings of one folder, read lazily and re-read when a file changes."""

    def __init__(self, folder: Path, hashes: HashCache) -> None:
        self.folder = folder
        self._hashes = hashes
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple[int, float], Embedding | str]] = {}

    def scan(self) -> EmbeddingScan:
        """Every embedding file under the folder (sub-folders too); the first of two equal names wins."""
        files = []
        if self.folder.is_dir():
            files = sorted((p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in EMBEDDING_SUFFIXES),
                           key=lambda p: p.relative_to(self.folder).as_posix().lower())
        embeddings: dict[str, Embedding] = {}
        broken: dict[str, str] = {}
        with self._lock:
            fresh: dict[Path, tuple[tuple[int, float], Embedding | str]] = {}
            for path in files:
                try:
                    stat = path.stat()
                except OSError:  # removed while we looked
                    continue
                stamp = (stat.st_size, stat.st_mtime)
                cached = self._cache.get(path)
                if cached is None or cached[0] != stamp:
                    try:
                        cached = (stamp, read_embedding(path))
                    except EmbeddingError as err:
                        cached = (stamp, str(err))
                fresh[path] = cached
                entry = cached[1]
                if path.stem in embeddings or path.stem in broken:
                    continue
                if isinstance(entry, Embedding):
                    embeddings[path.stem] = entry
                else:
                    broken[path.stem] = entry
            self._cache = fresh
        return EmbeddingScan(embeddings, broken)

    def short_hash(self, embedding: Embedding) -> str:
        """A1111's short hash of an embedding: the first 12 hex digits of the file's sha256."""
        return self._hashes.sha256(embedding.path)[:SHORT_HASH_CHARS]


# --------------------------------------------------------------------------- the A1111 API listing


def checkpoint_text_width(info: CheckpointInfo) -> int:
    """The embedding width a checkpoint takes (A1111's expected ``shape``: 768 SD 1.x, 1024 SD 2.x,
    2048 SDXL), read from its configs or its file header; -1 when that cannot be told cheaply."""
    try:
        if info.kind == "diffusers":
            width = 0
            for sub in ("text_encoder", "text_encoder_2"):
                config = info.path / sub / "config.json"
                if config.exists():
                    width += int(json.loads(config.read_text())["hidden_size"])
            return width or -1
        if info.path.suffix.lower() != ".safetensors":
            return -1
        from safetensors import safe_open

        with safe_open(str(info.path), "pt") as f:
            keys = set(f.keys())
            sdxl = ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
                    "conditioner.embedders.1.model.token_embedding.weight")
            if all(k in keys for k in sdxl):
                return sum(f.get_slice(k).get_shape()[1] for k in sdxl)
            for key in (*CLIP_KEYS, "cond_stage_model.model.token_embedding.weight"):
                if key in keys:
                    return f.get_slice(key).get_shape()[1]
    except (OSError, KeyError, ValueError, TypeError):
        pass
    return -1


def describe(embedding: Embedding) -> dict[str, Any]:
    """One embedding in A1111's ``/sdapi/v1/embeddings`` shape."""
    return {
        "step": embedding.step,
        "sd_checkpoint": embedding.sd_checkpoint,
        "sd_checkpoint_name": embedding.sd_checkpoint_name,
        "shape": embedding.shape,
        "vectors": embedding.vectors,
    }


def listing(scan: EmbeddingScan, expected_shape: int) -> dict[str, dict[str, Any]]:
    """A1111's ``{"loaded": {...}, "skipped": {...}}``: skipped are those of another width than
    ``expected_shape`` (-1: none is skipped). Unreadable files are in neither."""
    out: dict[str, dict[str, Any]] = {"loaded": {}, "skipped": {}}
    for name, embedding in scan.embeddings.items():
        fits = expected_shape == -1 or embedding.shape == expected_shape
        out["loaded" if fits else "skipped"][name] = describe(embedding)
    return out
