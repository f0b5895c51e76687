"""What a model file is, from its tensors' names and shapes, with the existing detectors
(checkpoints, ControlNet, embeddings; LoRA and VAE key patterns). A .safetensors file is read from
its header alone; a pickle format only through the safe weights-only loader."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from modules.checkpoints import UNET_IN_KEY, CheckpointError, detect_architecture, load_pickle_safely
from modules.install_types import MODEL_TYPES, SAFE_SUFFIX, InstallError


def tensor_meta(path: Path, name: str) -> dict[str, Any]:
    """The tensors of ``path``, read as the format ``name``'s suffix says: shapes only (on the meta
    device) from a .safetensors header; a pickle format whole, with the safe weights-only loader
    (refused if it holds anything that could run code)."""
    if Path(name).suffix.lower() == SAFE_SUFFIX:
        header = read_safetensors_header(path, name)
        return {key: torch.empty(value["shape"], device="meta") for key, value in header.items()
                if key != "__metadata__" and isinstance(value, dict) and "shape" in value}
    try:
        data = load_pickle_safely(path)
    except CheckpointError as err:
        raise InstallError(f"{name} was refused: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise InstallError(f"{name} holds a {type(data).__name__}, not tensors")
    return data


def read_safetensors_header(path: Path, name: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= min(100 << 20, path.stat().st_size - 8):
                raise ValueError("bad header length")
            header = json.loads(f.read(size))
        if not isinstance(header, dict):
            raise ValueError("the header is not an object")
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
        if 8 + size + max(ends, default=0) != path.stat().st_size:
            raise ValueError("its tensors do not fill the file: truncated or damaged")
        return header
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise InstallError(f"{name} is not a .safetensors file ({err}); it may be an HTML page or a "
                           "different format with the wrong name") from None


def detect_kind(data: dict[str, Any]) -> tuple[str | None, str]:
    """(model type or None, a detail such as the architecture), from the tensors' names and shapes."""
    from modules.controlnet.models import detect_family
    from modules.embeddings import EmbeddingError, embedding_from_data

    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if UNET_IN_KEY in tensors:
        try:
            return "checkpoint", detect_architecture(tensors)
        except CheckpointError as err:
            raise InstallError(f"a Stable Diffusion checkpoint Easel cannot use: {err}") from None
    try:
        return "controlnet", detect_family(tensors)
    except ValueError:
        pass
    flat = [k.replace(".", "_") for k in tensors]
    if any(re.search(r"lora_(down|up|A|B)|hada_|lokr_", k) for k in flat):
        return "lora", ""
    if any(k.startswith(("encoder.", "first_stage_model.encoder.", "decoder.")) and "conv_in" in k for k in tensors):
        return "vae", ""
    try:
        embedding = embedding_from_data(data, Path("embedding"))
        return "embedding", f"{embedding.vectors} vectors"
    except (EmbeddingError, RuntimeError, TypeError):
        pass
    return None, ""


def choose_type(detected: str | None, detail: str, requested: str | None, name: str) -> tuple[str, str]:
    """The contents decide; ``requested`` is used only when they cannot tell. Returns (type, note)."""
    if detected is None:
        if requested is None:
            raise InstallError(f"{name}: cannot tell what kind of model this is from its tensors; give the type "
                               f"({', '.join(MODEL_TYPES)}) if you know it")
        return requested, f"type {requested} as given (the contents did not tell)"
    what = f"{detected} ({detail})" if detail else detected
    if requested and requested != detected:
        return detected, f"you asked for a {requested}; its contents are a {what}, so it went to the {detected} folder"
    return detected, f"detected: {what}"
