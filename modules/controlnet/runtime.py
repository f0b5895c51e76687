"""ControlNets in the model cache: cache keys, loading for the runtime, placement per memory mode.

ControlNets share the checkpoints' ``ModelManager`` (one bytes budget, one LRU order) under the
model key ``controlnet:<title>``, made of one component (``recipe``); ``modules.services`` dispatches
its recipe/size/move functions here for those keys. They count toward the cache's model limit
(``sd_checkpoints_limit``) like checkpoints.

Memory modes. With ``normal`` a ControlNet moves to the compute device with ``use`` and stays
there until the manager offloads it to make room, like a checkpoint. With ``medvram`` or
``lowvram`` on an accelerator, its weights stay in CPU RAM: ``on_device_while_used`` moves it to
the device when a job takes it and back to the CPU (emptying the accelerator's cache) when the
job lets it go, so between jobs it holds no device memory. (The manager's bookkeeping still
names the compute device; its free-memory checks read the real device through the probe.)
On the CPU every mode is normal placement.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from modules import devices
from modules.controlnet.models import ControlNetError, LoadedControlNet, find_controlnet, load_controlnet, scan_controlnets
from modules.model_manager import ComponentKey, ModelRecipe

KEY_PREFIX = "controlnet:"
OFFLOAD_MODES = ("medvram", "lowvram")


def controlnet_key(title: str) -> str:
    """The model cache key of a ControlNet title."""
    return f"{KEY_PREFIX}{title}"


def is_controlnet_key(key: str) -> bool:
    return key.startswith(KEY_PREFIX)


def offloads(device: str, memory_mode: str) -> bool:
    """True when a ControlNet lives in CPU RAM and visits the device only while in use."""
    return memory_mode in OFFLOAD_MODES and devices.device_type(device) != "cpu"


def load_for_runtime(key: str, folder: Path, dtype: Any, attention: str, channels_last: bool = False) -> LoadedControlNet:
    """Load the ControlNet of a cache key (rescanning ``folder``), in the runtime dtype, attention and
    memory format."""
    title = key.removeprefix(KEY_PREFIX)
    info = find_controlnet(title, scan_controlnets(folder))
    if info is None:
        raise ControlNetError(f"{key!r} names no ControlNet")
    loaded = load_controlnet(info)
    devices.cast_module(loaded.model, dtype)  # every tensor, whatever the file's dtype(s)
    if channels_last:
        loaded.model.to(memory_format=torch.channels_last)
    if attention == "xformers":
        loaded.model.enable_xformers_memory_efficient_attention()
    else:
        from diffusers.models.attention_processor import AttnProcessor2_0

        loaded.model.set_attn_processor(AttnProcessor2_0())
    return loaded


def recipe(key: str, folder: Path, file_digest: Callable[[list[Path]], str], dtype: Any, attention: str,
           channels_last: bool = False) -> ModelRecipe:
    """The model cache's recipe of a ControlNet key: one component, ``ComponentKey("controlnet", digest)``
    where the digest covers its files' sha256 (``file_digest``) and the runtime dtype, so two titles
    naming the same weights share one entry."""
    title = key.removeprefix(KEY_PREFIX)
    info = find_controlnet(title, scan_controlnets(folder))
    if info is None:
        raise ControlNetError(f"{key!r} names no ControlNet")
    paths = [info.path] if info.kind == "single" else sorted(p for p in info.path.rglob("*") if p.is_file())
    digest = hashlib.sha256(f"{file_digest(paths)} {dtype} {attention} {channels_last}".encode()).hexdigest()
    return ModelRecipe(
        {"controlnet": ComponentKey("controlnet", digest)},
        lambda part: load_for_runtime(key, folder, dtype, attention, channels_last),
        lambda parts: parts["controlnet"],
        lambda part: estimate_bytes(key, folder),
    )


def estimate_bytes(key: str, folder: Path) -> int:
    """Bytes of a ControlNet's files, before loading (0 when unknown)."""
    try:
        info = find_controlnet(key.removeprefix(KEY_PREFIX), scan_controlnets(folder))
    except ValueError:
        return 0
    if info is None:
        return 0
    paths = [info.path] if info.kind == "single" else [p for p in info.path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in paths)


def move(loaded: LoadedControlNet, device: str, memory_mode: str) -> None:
    """The manager's move: to ``device``, except that offloading modes keep it on the CPU until used."""
    if offloads(device, memory_mode):
        loaded.model.to("cpu")
        return
    loaded.model.to(device)


@contextmanager
def on_device_while_used(loaded: LoadedControlNet, device: str, memory_mode: str) -> Iterator[LoadedControlNet]:
    """Hold the ControlNet on ``device`` for the block (a no-op unless the memory mode offloads)."""
    if not offloads(device, memory_mode):
        yield loaded
        return
    loaded.model.to(device)
    try:
        yield loaded
    finally:
        loaded.model.to("cpu")
        devices.empty_cache(device)
