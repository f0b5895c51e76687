"""Checkpoints on disk: scanning, A1111 short hashes, safe reading and architecture detection.

A checkpoint is either a single file in the original (LDM / A1111) key layout
(``.safetensors`` or ``.ckpt``) or a diffusers folder (one holding ``model_index.json``). A
``NAME.yaml`` next to a single file is its companion config, as in A1111.

``.ckpt`` files are pickles. They are read only with ``torch.load(weights_only=True)``, which
refuses to run code; anything that loader rejects is refused with ``UnsafeCheckpointError``.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules.atomic import write_text_atomic

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt")

# Keys that tell the architectures apart (original layout).
UNET_IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"
SD2_CONTEXT_KEY = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
SDXL_KEY = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"
SDXL_REFINER_KEY = "conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight"  # bigG alone
OPENCLIP_KEY = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
CLIP_KEYS = ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
             "cond_stage_model.transformer.embeddings.token_embedding.weight")

ARCHITECTURES = ("sd1", "sd1-inpaint", "sd2", "sd2-base", "sdxl", "sdxl-refiner")


class CheckpointError(ValueError):
    """A checkpoint cannot be found, read or understood; the message says which and why."""


class UnsafeCheckpointError(CheckpointError):
    """A ``.ckpt`` pickle holds more than tensors (it could run code), so it was refused."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint found on disk."""

    name: str  # path relative to its models folder, as A1111 shows it ("sub/model.safetensors")
    path: Path
    kind: str  # "single" or "diffusers"
    config_path: Path | None  # companion NAME.yaml, if any

    @property
    def model_name(self) -> str:
        """A1111's ``sd_model_name``: the file name without folder and extension."""
        return Path(self.name).stem if self.kind == "single" else Path(self.name).name


class HashCache:
    """sha256 of files, cached in a JSON file keyed by path, size and mtime (computed once).

    ``digest`` computes the hex digest of one file (default: the whole file's sha256; the LoRA
    list uses kohya's sha256 of a .safetensors file's tensor data, in a cache file of its own).
    """

    def __init__(self, cache_file: Path, digest: Callable[[Path], str] | None = None):
        self._digest = digest or file_sha256
        self._file = cache_file
        self._lock = threading.Lock()
        self._data: dict[str, dict] = {}
        if cache_file.exists():
            try:
                self._data = json.loads(cache_file.read_text())
            except (OSError, json.JSONDecodeError):
                self._data = {}

    def cached(self, path: Path) -> str | None:
        """The cached digest of ``path``, or None when it was never computed or the file changed."""
        st = path.stat()
        with self._lock:
            hit = self._data.get(str(path.resolve()))
        if hit and hit["size"] == st.st_size and hit["mtime"] == st.st_mtime:
            return hit["sha256"]
        return None

    def store(self, path: Path, digest: str) -> None:
        """Keep ``digest`` as the digest of ``path`` as it is now (computed by the caller while reading it)."""
        st = path.stat()
        with self._lock:
            self._data[str(path.resolve())] = {"size": st.st_size, "mtime": st.st_mtime, "sha256": digest}
            self._file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self._file, json.dumps(self._data, indent=1))

    def sha256(self, path: Path) -> str:
        hit = self.cached(path)
        if hit is not None:
            return hit
        digest = self._digest(path)
        self.store(path, digest)
        return digest


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def hidden_below(root: Path, path: Path) -> bool:
    """``path`` lies in a hidden folder under ``root`` (``.downloads``: unfinished installs, never listed)."""
    return any(part.startswith(".") for part in path.relative_to(root).parts[:-1])


def scan_checkpoints(dirs: list[Path]) -> list[CheckpointInfo]:
    """Every single-file checkpoint and diffusers folder under ``dirs`` (not in hidden folders), sorted by name."""
    found: dict[str, CheckpointInfo] = {}
    for root in dirs:
        if not root.is_dir():
            continue
        diffusers_dirs = {p.parent for p in root.rglob("model_index.json") if not hidden_below(root, p)}
        for d in sorted(diffusers_dirs):
            name = d.relative_to(root).as_posix()
            found.setdefault(name, CheckpointInfo(name, d, "diffusers", None))
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() not in SINGLE_FILE_SUFFIXES or not p.is_file() or hidden_below(root, p):
                continue
            if any(parent in diffusers_dirs for parent in p.parents):
                continue  # weights inside a diffusers folder
            yaml = p.with_suffix(".yaml")
            name = p.relative_to(root).as_posix()
            found.setdefault(name, CheckpointInfo(name, p, "single", yaml if yaml.exists() else None))
    return sorted(found.values(), key=lambda c: c.name.lower())


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def _safetensors_header(path: Path, size: int) -> tuple[dict[str, Any], int]:
    """The JSON header of a .safetensors file and where its data starts; CheckpointError if malformed."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length <= min(size - 8, 100 << 20):
            raise CheckpointError(f"{path.name} is not a readable .safetensors file: bad header length")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path.name} is not a readable .safetensors file: header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} is not a readable .safetensors file: header is not a JSON object")
    return header, 8 + length


def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a .safetensors file and where its data starts; CheckpointError if malformed."""
    return _safetensors_header(path, path.stat().st_size)


READ_AHEAD = 64 << 20  # bytes the prefetch thread asks the kernel to read at a time


class ReadDigests:
    """sha256 digests computed while a .safetensors file is read (no second pass over it): each
    tensor's data, by tensor name, and (``whole_file``) the whole file's, A1111's hash."""

    def __init__(self, whole_file: bool = True) -> None:
        self.file = hashlib.sha256() if whole_file else None
        self.tensors: dict[str, str] = {}


def _prefetch(fd: int, ranges: list[tuple[int, int]]) -> None:
    """Ask the kernel to read ``ranges`` of the file into the page cache, in order: run on a thread,
    so the disk streams while the caller converts what has arrived (a cold read overlaps the CPU).
    Where the OS has no ``posix_fadvise`` (macOS) the kernel's own read-ahead does it alone."""
    if not hasattr(os, "posix_fadvise"):
        return
    for start, end in ranges:
        for at in range(start, end, READ_AHEAD):
            os.posix_fadvise(fd, at, min(READ_AHEAD, end - at), os.POSIX_FADV_WILLNEED)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted byte spans with touching ones joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return out


def _hash_view(hasher: Any, view: memoryview) -> None:
    """Feed ``view`` to ``hasher`` in pieces (hashlib lets other threads run meanwhile)."""
    for at in range(0, len(view), READ_AHEAD):
        hasher.update(view[at:at + READ_AHEAD])


def read_safetensors(path: Path, dtype: torch.dtype | None = None, prefixes: tuple[str, ...] | None = None,
                     digests: ReadDigests | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, their floats in ``dtype`` (None: kept), copied (and converted)
    from a memory map of the file into tensors of their own, one tensor at a time: no second copy of
    the file is ever held. A thread asks the kernel to read the needed bytes ahead, so a cold read
    streams from the disk while the tensors already read are converted. With ``prefixes`` only the
    tensors whose names start with one of them are returned (one component; ``()``: none). With
    ``digests`` every tensor is hashed (and the whole file, A1111's hash, on a second thread).
    Dtypes this reader does not know (fp8, ...) go through ``safetensors.load_file``."""
    size = path.stat().st_size
    header, data_start = _safetensors_header(path, size)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    wanted = {k for k in entries if prefixes is None or k.startswith(prefixes)}
    if any(not isinstance(entries[k], dict) or entries[k].get("dtype") not in SAFETENSORS_DTYPES for k in wanted):
        from safetensors.torch import load_file

        if digests is not None:
            read_safetensors(path, prefixes=(), digests=digests)
        state = load_file(str(path))
        return {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
                for k, v in state.items() if k in wanted}
    planned = []
    for name, entry in entries.items():
        if name not in wanted and digests is None:
            continue
        try:
            start, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path.name}: tensor {name!r} has a bad header entry ({err})") from None
        if not 0 <= start <= end <= size - data_start:
            raise CheckpointError(f"{path.name} is not a readable .safetensors file: tensor {name!r} lies outside the file")
        plan = None
        if name in wanted:
            file_dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = [int(n) for n in entry["shape"]]
            if end - start != math.prod(shape) * file_dtype.itemsize:
                raise CheckpointError(f"{path.name} is not a readable .safetensors file: tensor {name!r} has the wrong size")
            want = dtype if file_dtype.is_floating_point and dtype is not None else file_dtype
            plan = (file_dtype, shape, want)
        planned.append((data_start + start, data_start + end, name, plan))
    planned.sort(key=lambda p: p[0])
    for (_, end, name, _), (start, _, _, _) in zip(planned, planned[1:], strict=False):
        if start < end:
            raise CheckpointError(f"{path.name} is not a readable .safetensors file: tensor {name!r} overlaps another")
    out: dict[str, torch.Tensor] = {}
    whole = digests is not None and digests.file is not None
    spans = [(0, size)] if whole else [(start, end) for start, end, _, _ in planned]
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # copy-on-write: writable, as torch wants
        data = memoryview(mapped)
        threads = [threading.Thread(target=_prefetch, args=(f.fileno(), _merged(spans)), daemon=True)]
        if whole:
            threads.append(threading.Thread(target=_hash_view, args=(digests.file, data), daemon=True))
        for thread in threads:
            thread.start()
        try:
            for start, end, name, plan in planned:
                with data[start:end] as view:
                    if digests is not None:
                        digests.tensors[name] = hashlib.sha256(view).hexdigest()
                    if plan is not None:
                        file_dtype, shape, want = plan
                        tensor = torch.empty(shape, dtype=want)
                        if end > start:
                            tensor.view(-1).copy_(torch.frombuffer(view, dtype=file_dtype))
                        out[name] = tensor
        finally:
            for thread in threads:
                thread.join()
            data.release()
            try:
                mapped.close()
            except BufferError:  # a view still held by an exception's traceback: unmapped when collected
                pass
    return out


def read_state_dict(path: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a single-file checkpoint, read without running any code; floats in ``dtype``
    when given (converted while read), else in the file's dtypes."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        try:
            return read_safetensors(path, dtype)
        except CheckpointError:
            raise
        except Exception as err:  # safetensors raises several types for a damaged file
            raise CheckpointError(f"{path.name} is not a readable .safetensors file: {err}") from None
    if path.suffix.lower() in (".ckpt", ".pt", ".pth"):
        obj = load_pickle_safely(path)
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path.name} holds a {type(obj).__name__}, not a state dict")
        return {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
                for k, v in obj.items() if isinstance(v, torch.Tensor)}
    raise CheckpointError(f"{path.name}: unsupported checkpoint type; use .safetensors, .ckpt, .pt or .pth")


def load_pickle_safely(path: Path) -> Any:
    """A PyTorch pickle (.ckpt, .pt, .bin) read with ``weights_only=True``: tensors, dicts, lists,
    numbers and strings only. Anything that could run code is refused with UnsafeCheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path.name} was refused: it is a pickle that holds more than tensors and could run code "
            f"when loaded ({str(err).splitlines()[0][:200]}). Convert it to .safetensors with a tool you trust."
        ) from None
    except Exception as err:
        raise CheckpointError(f"{path.name} is not a readable {path.suffix or 'PyTorch'} file: {err}") from None


def scan_vaes(folder: Path) -> list[Path]:
    """Standalone VAE files (``models/VAE``), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VAE_SUFFIXES),
                  key=lambda p: p.relative_to(folder).as_posix().lower())


def detect_architecture(state: dict[str, torch.Tensor], yaml_config: dict | None = None) -> str:
    """One of ARCHITECTURES, from the keys and shapes of an original-layout state dict.

    SD 2.x checkpoints do not say whether they predict epsilon or v; as diffusers does, they are
    taken as the 768 v-prediction model unless the companion yaml says otherwise.
    """
    if UNET_IN_KEY not in state:
        raise CheckpointError(
            "not a Stable Diffusion checkpoint in the original layout: "
            f"no '{UNET_IN_KEY}' key (is it a LoRA, a VAE or an embedding?)"
        )
    in_channels = state[UNET_IN_KEY].shape[1]
    if SDXL_KEY in state:
        if in_channels not in (4, 9):
            raise CheckpointError(f"unexpected SDXL UNet input channels {in_channels}: expected 4, or 9 for inpainting")
        return "sdxl"  # a 9-channel UNet (SDXL inpainting) loads with in_channels from the checkpoint
    if SDXL_REFINER_KEY in state:  # the refiner: OpenCLIP bigG as the only (first) embedder
        return "sdxl-refiner"
    is_sd2 = OPENCLIP_KEY in state or (SD2_CONTEXT_KEY in state and state[SD2_CONTEXT_KEY].shape[-1] == 1024)
    if is_sd2:
        if in_channels != 4:
            raise CheckpointError("SD 2.x inpainting checkpoints are not supported")
        params = ((yaml_config or {}).get("model") or {}).get("params") or {}
        if yaml_config is not None and params.get("parameterization", "eps") != "v":
            return "sd2-base"
        return "sd2"
    if not any(k in state for k in CLIP_KEYS):
        raise CheckpointError("no text encoder found in the checkpoint (expected cond_stage_model.transformer.*)")
    if in_channels == 9:
        return "sd1-inpaint"
    if in_channels != 4:
        raise CheckpointError(f"unexpected UNet input channels {in_channels}: expected 4, or 9 for inpainting")
    return "sd1"


class CheckpointRegistry:
    """The checkpoints in the configured folders, refreshed on demand, with cached short hashes."""

    def __init__(self, dirs: list[Path], hashes: HashCache):
        self._dirs = list(dirs)
        self._hashes = hashes
        self._lock = threading.Lock()
        self._items: list[CheckpointInfo] = []
        self.refresh()

    def refresh(self) -> list[CheckpointInfo]:
        items = scan_checkpoints(self._dirs)
        with self._lock:
            self._items = items
        return items

    def list(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._items)

    def sha256(self, info: CheckpointInfo) -> str | None:
        """Full sha256 of a single file (None for diffusers folders)."""
        return self._hashes.sha256(info.path) if info.kind == "single" else None

    def file_short_hash(self, path: Path) -> str:
        """A1111's short hash of any file (e.g. a VAE), cached like the checkpoints'."""
        return self._hashes.sha256(path)[:10]

    def short_hash(self, info: CheckpointInfo) -> str | None:
        """A1111's short hash: the first 10 hex digits of the file's sha256."""
        full = self.sha256(info)
        return full[:10] if full else None

    def title(self, info: CheckpointInfo) -> str:
        """A1111's title: ``name [shorthash]``."""
        h = self.short_hash(info)
        return f"{info.name} [{h}]" if h else info.name

    def default(self) -> CheckpointInfo:
        items = self.list()
        if not items:
            raise CheckpointError(f"no checkpoints found in {', '.join(str(d) for d in self._dirs)}")
        return items[0]

    def get(self, query: str | None) -> CheckpointInfo:
        """Find by A1111 title, name, file name, stem or short hash; None gives the default."""
        if not query:
            return self.default()
        items = self.list()
        q = query.strip()
        base = q.split(" [")[0] if q.endswith("]") else q
        for info in items:
            if base in (info.name, Path(info.name).name, info.model_name, str(info.path)):
                return info
        for info in items:
            if len(q) >= 8 and info.kind == "single" and self.short_hash(info) == q.strip("[]"):
                return info
        names = ", ".join(i.name for i in items) or "none"
        raise CheckpointError(f"checkpoint {query!r} not found; available: {names}")
