"""Checkpoints as components: typed cache keys, per-component loading and assembly.

The model cache (``modules.model_manager``) holds UNets, text encoders, VAEs and ControlNets as
separate entries. This module tells it, for a checkpoint, which components it is made of
(``checkpoint_recipe``), how to load each one alone, and how to assemble a pipeline from them.

Where a component's key comes from. ``ComponentKey(kind, digest)``: the digest is the sha256 of

* the component's **tensors as stored**: for a ``.safetensors`` file, each tensor under the
  component's key prefix (``model.diffusion_model.``, ``first_stage_model.``, ...), sorted by name,
  contributes its name without the prefix, dtype, shape and the sha256 of its data; two fine-tunes that carry
  the same VAE or text encoder bytes therefore get the same digest and share one entry. The digests
  of a file are computed in one pass over it the first time it is used (the same pass gives the
  file's sha256, A1111's hash) and kept in ``cache/component_hashes.json`` by path, size and
  modification time (``HashCache``), so a later start reads only the header. The pass hashes
  without keeping tensors: the cache makes room before a component is read, so a switch never
  holds the old model and the new file at once (the read that follows comes from the page cache).
  Diffusers folders hash their component files (whole-file sha256,
  cached in ``hashes.json``), a VAE file from ``models/VAE`` and ControlNets likewise. A ``.ckpt``
  pickle cannot be read by ranges: its components are keyed by the file's sha256 and the prefix
  (shared only between keys of the same file, e.g. with and without a VAE file);
* the **config** the module is built from (a companion yaml can change it) and the **runtime
  dtype**, so equal tensors built into different modules never share.

Only the components not already cached are read from the file: a switch between two fine-tunes
that share VAE and text encoder reads and builds the UNet alone.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules import devices
from modules.checkpoints import (
    SAFETENSORS_DTYPES,
    CheckpointError,
    CheckpointInfo,
    CheckpointRegistry,
    HashCache,
    ReadDigests,
    read_safetensors,
    read_state_dict,
    safetensors_header,
)
from modules.model_loading import (
    PART_NAMES,
    LoadedModel,
    arch_of_pipeline,
    assemble_pipeline,
    build_part,
    build_vae_from_file,
    light_components,
    single_file_configs,
)
from modules.model_manager import ComponentKey, ModelRecipe

# Where each component's tensors live in an original-layout (LDM / A1111) single file, per architecture.
PART_PREFIXES: dict[str, dict[str, str]] = {
    "sd1": {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model."},
    "sd2": {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model."},
    "sdxl": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
             "text_encoder": "conditioner.embedders.0.", "text_encoder_2": "conditioner.embedders.1."},
    "sdxl-refiner": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                     "text_encoder_2": "conditioner.embedders.0."},
}
PART_PREFIXES["sd1-inpaint"] = PART_PREFIXES["sd1"]
PART_PREFIXES["sd2-base"] = PART_PREFIXES["sd2"]
ALL_PREFIXES = tuple(sorted({p for parts in PART_PREFIXES.values() for p in parts.values()}))
WEIGHT_SUFFIXES = (".safetensors", ".bin")
FOLDER_LIBRARIES = ("diffusers", "transformers")  # the only libraries a folder's model_index.json may name


@dataclass(frozen=True)
class PartOptions:
    """How components are prepared for the runtime (fixed per process; part of every key)."""

    dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype | None = None  # None: ``dtype``
    attention: str = "sdpa"
    channels_last: bool = False
    compile_unet: bool = False

    def dtype_of(self, part: str) -> torch.dtype:
        return (self.vae_dtype or self.dtype) if part == "vae" else self.dtype


def _digest(*pieces: Any) -> str:
    """sha256 of JSON-encodable pieces (configs, digests, names)."""
    return hashlib.sha256(json.dumps(pieces, sort_keys=True, default=str).encode()).hexdigest()


def part_digests(header: dict[str, Any], tensor_digests: dict[str, str]) -> dict[str, str]:
    """prefix -> sha256 of the tensors under that prefix (``ALL_PREFIXES``), by name: each one's name
    without the prefix, dtype, shape and the sha256 of its data (``ReadDigests.tensors``)."""
    hashers: dict[str, Any] = {}
    for name in sorted(tensor_digests):
        prefix = next((p for p in ALL_PREFIXES if name.startswith(p)), None)
        if prefix is None:
            continue
        entry = header[name]
        h = hashers.setdefault(prefix, hashlib.sha256())
        h.update(json.dumps([name[len(prefix):], entry.get("dtype"), entry.get("shape"), tensor_digests[name]]).encode())
    return {prefix: h.hexdigest() for prefix, h in hashers.items()}


def safetensors_part_digests(path: Path) -> dict[str, str]:
    """prefix -> digest of the tensors under that prefix (``part_digests``): one pass over the file,
    no tensor kept."""
    digests = ReadDigests(whole_file=False)
    read_safetensors(path, prefixes=(), digests=digests)
    return part_digests(safetensors_header(path)[0], digests.tensors)


def meta_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file as meta tensors (names, shapes, dtypes; no data): enough to
    detect the architecture and build configs without reading weights."""
    header, _ = safetensors_header(path)
    try:
        return {name: torch.empty([int(n) for n in entry["shape"]],
                                  dtype=SAFETENSORS_DTYPES.get(entry["dtype"], torch.uint8), device="meta")
                for name, entry in header.items() if name != "__metadata__"}
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path.name} is not a readable .safetensors file: bad tensor entry ({err})") from None


def read_part(path: Path, prefix: str, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Only the tensors under ``prefix`` of a .safetensors file, their floats in ``dtype``."""
    return read_safetensors(path, dtype, prefixes=(prefix,))


class PartHashes:
    """Per-component digests of single files, cached by path, size and mtime (one pass over a new file)."""

    def __init__(self, cache_file: Path, files: HashCache):
        self._parts = HashCache(cache_file)
        self._files = files

    def of_single_file(self, path: Path) -> dict[str, str]:
        """prefix -> digest for a .safetensors file; for a pickle, the file's sha256 with each prefix.
        A new .safetensors file is hashed in one pass that also gives its whole-file sha256 (A1111's
        hash, when not cached yet): both are kept, so no later use reads the file to hash it."""
        if path.suffix.lower() != ".safetensors":
            whole = self._files.sha256(path)
            return {prefix: _digest("file", whole, prefix) for prefix in ALL_PREFIXES}
        hit = self._parts.cached(path)
        if hit is not None:
            return json.loads(hit)
        digests = ReadDigests(whole_file=self._files.cached(path) is None)
        read_safetensors(path, prefixes=(), digests=digests)
        parts = part_digests(safetensors_header(path)[0], digests.tensors)
        self._parts.store(path, json.dumps(parts))
        if digests.file is not None:
            self._files.store(path, digests.file.hexdigest())
        return parts

    def of_files(self, paths: list[Path]) -> str:
        """One digest for a set of files (a diffusers component's weights, a ControlNet's)."""
        return _digest(sorted(self._files.sha256(p) for p in paths))


@dataclass
class CheckpointSource:
    """What a checkpoint recipe needs from the app: the registry, the hash caches, the VAE folder."""

    registry: CheckpointRegistry
    hashes: PartHashes
    vae_dir: Path
    options: PartOptions
    on_loaded: Callable[[LoadedModel], None] = lambda model: None  # the extensions' model_loaded hook


def prepare(module: Any, part: str, options: PartOptions) -> Any:
    """Bring a freshly loaded component to the runtime: dtype, attention, memory format, compile."""
    if module is None:
        return None
    devices.cast_module(module, options.dtype_of(part))
    if part in ("unet", "vae", "controlnet") and hasattr(module, "set_attn_processor"):
        if options.attention == "xformers":
            module.enable_xformers_memory_efficient_attention()
        else:
            from diffusers.models.attention_processor import AttnProcessor2_0

            module.set_attn_processor(AttnProcessor2_0())
        if options.channels_last:
            module.to(memory_format=torch.channels_last)
    if part == "unet" and options.compile_unet:
        devices.compile_module(module)
    return module


def checkpoint_recipe(source: CheckpointSource, name: str, vae: str | None) -> ModelRecipe:
    """The recipe of checkpoint ``name`` with the VAE file ``vae`` (None: its own VAE)."""
    info = source.registry.get(name)
    if info.kind == "diffusers":
        return _folder_recipe(source, info, vae)
    return _single_file_recipe(source, info, vae)


def _vae_file_part(source: CheckpointSource, vae: str, vae_config: dict) -> tuple[ComponentKey, Callable[[], Any]]:
    path = source.vae_dir / vae
    if not path.is_file():
        raise CheckpointError(f"VAE file not found: {path}")
    key = ComponentKey("vae", _digest("vae-file", source.hashes.of_files([path]), vae_config,
                                      str(source.options.dtype_of("vae"))))
    return key, lambda: build_vae_from_file(path, vae_config, source.options.dtype_of("vae"))


def _single_file_recipe(source: CheckpointSource, info: CheckpointInfo, vae: str | None) -> ModelRecipe:
    """Components of a single file: keys from its header and part digests, each read alone."""
    options, started = source.options, time.perf_counter()
    is_safetensors = info.path.suffix.lower() == ".safetensors"
    whole = functools.cache(lambda: read_state_dict(info.path, options.dtype))  # pickles: read once per recipe
    state = meta_state(info.path) if is_safetensors else whole()
    arch, cfg = single_file_configs(info, state)
    prefixes = PART_PREFIXES[arch]
    digests = source.hashes.of_single_file(info.path)
    configs = {"unet": cfg.unet, "vae": cfg.vae, "text_encoder": cfg.text_encoder, "text_encoder_2": cfg.text_encoder_2}
    parts: dict[str, ComponentKey] = {}
    loaders: dict[str, Callable[[], Any]] = {}
    for part, prefix in prefixes.items():
        if part == "vae" and vae:
            parts[part], loaders[part] = _vae_file_part(source, vae, cfg.vae)
            continue
        if prefix not in digests:
            raise CheckpointError(f"{info.name}: no {part} tensors under {prefix!r}")
        parts[part] = ComponentKey(part, _digest(digests[prefix], arch, configs[part], str(options.dtype_of(part))))

        def load(part: str = part, prefix: str = prefix) -> Any:
            sub = read_part(info.path, prefix, options.dtype_of(part)) if is_safetensors else whole()
            return build_part(part, sub, arch, cfg, options.dtype_of(part))

        loaders[part] = load
    sizes = _part_sizes(info.path, prefixes) if is_safetensors else {}

    def assemble(loaded: dict[str, Any]) -> LoadedModel:
        comps = {"text_encoder": None, **light_components(arch, cfg), **loaded}
        return _finish(source, info, arch, assemble_pipeline(arch, comps), vae, started)

    return ModelRecipe(parts, lambda part: prepare(loaders[part](), part, options), assemble,
                       lambda part: sizes.get(part, 0))


def _part_sizes(path: Path, prefixes: dict[str, str]) -> dict[str, int]:
    """Stored bytes of each component (for the cache's room-making before it is read)."""
    header, _ = safetensors_header(path)
    sizes = dict.fromkeys(prefixes, 0)
    for name, entry in header.items():
        for part, prefix in prefixes.items():
            if name.startswith(prefix) and isinstance(entry, dict):
                start, end = entry["data_offsets"]
                sizes[part] += int(end) - int(start)
    return sizes


def _folder_class(library: str, class_name: str) -> type:
    """A component class named by a folder's model_index.json, from diffusers or transformers only."""
    if library not in FOLDER_LIBRARIES:
        raise CheckpointError(f"model_index.json names library {library!r}; only {', '.join(FOLDER_LIBRARIES)} are loaded")
    cls = getattr(importlib.import_module(library), str(class_name), None)
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise CheckpointError(f"model_index.json names {library}.{class_name}, which is not a model class")
    return cls


def _folder_recipe(source: CheckpointSource, info: CheckpointInfo, vae: str | None) -> ModelRecipe:
    """Components of a diffusers folder: keys from their config and weight files, each loaded alone."""
    options, started = source.options, time.perf_counter()
    try:
        index = json.loads((info.path / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"diffusers folder {info.name}: model_index.json is unreadable ({err})") from None
    parts: dict[str, ComponentKey] = {}
    loaders: dict[str, Callable[[], Any]] = {}
    for part in PART_NAMES:
        spec = index.get(part)
        if not (isinstance(spec, list) and len(spec) == 2 and spec[0]):
            continue
        sub = info.path / part
        config_file = sub / "config.json"
        weights = sorted(p for p in sub.glob("*") if p.suffix in WEIGHT_SUFFIXES) if sub.is_dir() else []
        if not config_file.is_file() or not weights:
            raise CheckpointError(f"diffusers folder {info.name}: {part}/ lacks its config.json or weights")
        config = json.loads(config_file.read_text())
        if part == "vae" and vae:
            parts[part], loaders[part] = _vae_file_part(source, vae, config)
            continue
        parts[part] = ComponentKey(part, _digest("folder", source.hashes.of_files(weights), config,
                                                 str(options.dtype_of(part))))
        cls = _folder_class(*spec)

        def load(part: str = part, cls: type = cls) -> Any:
            try:
                return cls.from_pretrained(info.path, subfolder=part, torch_dtype=options.dtype_of(part),
                                           local_files_only=True)
            except Exception as err:
                raise CheckpointError(f"diffusers folder {info.name}: {part} could not be loaded: {err}") from None

        loaders[part] = load

    def assemble(loaded: dict[str, Any]) -> LoadedModel:
        from diffusers import DiffusionPipeline

        try:
            pipe = DiffusionPipeline.from_pretrained(info.path, local_files_only=True, safety_checker=None,
                                                     requires_safety_checker=False, **loaded)
        except Exception as err:
            raise CheckpointError(f"diffusers folder {info.name} could not be loaded: {err}") from None
        return _finish(source, info, arch_of_pipeline(pipe), pipe, vae, started)

    return ModelRecipe(parts, lambda part: prepare(loaders[part](), part, options), assemble)


def _finish(source: CheckpointSource, info: CheckpointInfo, arch: str, pipe: Any, vae: str | None,
            started: float) -> LoadedModel:
    """The LoadedModel of an assembled pipeline (hashes, VAE file name), announced to extensions."""
    pipe.set_progress_bar_config(disable=True)
    model = LoadedModel(info, arch, pipe, source.registry.short_hash(info), time.perf_counter() - started)
    if vae:
        model.vae_name, model.vae_hash = Path(vae).name, source.registry.file_short_hash(source.vae_dir / vae)
    source.on_loaded(model)
    return model

