"""LoRA files in ``models/Lora``: listing, A1111's short hashes, and applying them for one job.

Applying uses diffusers' own loader on the peft backend: ``pipe.load_lora_weights`` reads the
kohya/A1111 key names (``lora_unet_down_blocks_0_..._to_q.lora_down.weight``, ``.alpha``,
``lora_te_text_model_encoder_layers_0_self_attn_q_proj...``), the LDM-style UNet names
(``lora_unet_input_blocks_1_1_...``, mapped with the UNet's config) and the diffusers/peft layout;
``set_adapters`` gives each LoRA its weights (text encoder and UNet apart); ``unload_lora_weights``
takes every LoRA layer out again, so the model is exactly as it was loaded (the base weights are
never changed: nothing is fused).

``.safetensors`` files go to diffusers by path (it reads the adapter metadata kept in their
header); ``.pt``/``.ckpt`` files are read with ``checkpoints.read_state_dict``, whose
``weights_only`` loader refuses anything that could run code.

Before applying, the tensor shapes are checked against the model, so a LoRA of another family
(an SDXL LoRA on an SD 1.x checkpoint, say) is a clear error instead of a failure deep in peft.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules.checkpoints import CheckpointError, HashCache, read_state_dict

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
MAX_WEIGHT = 10.0  # |weight| above this is refused: far outside anything a LoRA is trained for
SHORT_HASH_CHARS = 12  # A1111's Lora hashes in the infotext: the first 12 hex digits
ADAPTER_PREFIX = "easel_lora_"

WIDTH_FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}  # UNet cross-attention width
ARCH_FAMILIES = {"sd1": "SD 1.x", "sd1-inpaint": "SD 1.x", "sd2": "SD 2.x", "sd2-base": "SD 2.x", "sdxl": "SDXL",
                 "sdxl-refiner": "SDXL refiner"}


class LoraError(ValueError):
    """A LoRA cannot be found, read or applied; the message names it and says why."""


@dataclass(frozen=True)
class LoraFile:
    """One LoRA file found on disk."""

    name: str  # the file name without extension: what ``<lora:name>`` uses
    path: Path
    alias: str  # ``ss_output_name`` from the metadata (kohya's trainer writes it), else the name
    metadata: dict[str, Any]


@dataclass(frozen=True)
class LoraUse:
    """A LoRA as one job uses it: its weights on the text encoder(s) and on the UNet."""

    lora: LoraFile
    te_weight: float
    unet_weight: float


# --------------------------------------------------------------------------- files and hashes


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``__metadata__`` of a .safetensors header (values that hold JSON objects parsed, as
    A1111 does); {} for other files or an unreadable header."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size < 100 << 20:
                return {}
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return {}
    metadata = header.get("__metadata__") or {}
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, str) and value.startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value
    return out


def addnet_sha256(path: Path, block: int = 1 << 20) -> str:
    """kohya's hash of a .safetensors file: sha256 of the bytes after the header, so editing the
    metadata keeps the hash. A1111 uses it for the ``Lora hashes`` of .safetensors LoRAs."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        f.seek(8 + size)
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def scan_loras(folder: Path) -> list[LoraFile]:
    """Every LoRA file under ``folder`` (sub-folders too), sorted by name."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix().lower()):
        if path.is_file() and path.suffix.lower() in LORA_SUFFIXES:
            metadata = read_metadata(path)
            alias = metadata.get("ss_output_name")
            found.append(LoraFile(path.stem, path, alias if isinstance(alias, str) and alias else path.stem, metadata))
    return found


class LoraLibrary:
    """The LoRA files of one folder, scanned on ``refresh`` (and when a name is not found)."""

    def __init__(self, folder: Path, hashes: HashCache, addnet_hashes: HashCache, label: str | None = None) -> None:
        self.folder = folder
        self.label = label or str(folder)  # how messages name the folder ("models/Lora")
        self._hashes = hashes
        self._addnet_hashes = addnet_hashes
        self._lock = threading.Lock()
        self._items: list[LoraFile] = []
        self.refresh()

    def refresh(self) -> list[LoraFile]:
        items = scan_loras(self.folder)
        with self._lock:
            self._items = items
        return items

    def list(self) -> list[LoraFile]:
        with self._lock:
            return list(self._items)

    def find(self, name: str) -> LoraFile:
        """By file name without extension (or its path below the folder, or its alias); the folder is
        scanned again once before a name counts as unknown."""
        for attempt in range(2):
            items = self.list() if attempt == 0 else self.refresh()
            for match in (
                lambda f: f.name == name,
                lambda f: f.path.relative_to(self.folder).with_suffix("").as_posix() == name,
                lambda f: f.alias == name,
            ):
                hits = [f for f in items if match(f)]
                if hits:
                    return hits[0]
        names = ", ".join(f.name for f in self.list()) or "none"
        raise LoraError(f"LoRA {name!r} not found in {self.label}; available: {names}")

    def short_hash(self, lora: LoraFile) -> str:
        """A1111's short hash: ``sshs_model_hash`` from the metadata if there, else kohya's hash of a
        .safetensors file's tensor data, else the file's sha256; the first 12 hex digits."""
        written = lora.metadata.get("sshs_model_hash")
        if isinstance(written, str) and len(written) >= SHORT_HASH_CHARS:
            return written[:SHORT_HASH_CHARS]
        cache = self._addnet_hashes if lora.path.suffix.lower() == ".safetensors" else self._hashes
        return cache.sha256(lora.path)[:SHORT_HASH_CHARS]


# --------------------------------------------------------------------------- prompt arguments


def _weight(text: str, tag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LoraError(f"{tag}: the weight {text!r} is not a number") from None
    if not -MAX_WEIGHT <= value <= MAX_WEIGHT:
        raise LoraError(f"{tag}: the weight {value:g} is outside -{MAX_WEIGHT:g}..{MAX_WEIGHT:g}")
    return value


def parse_lora_args(items: tuple[str, ...], tag: str) -> tuple[str, float, float]:
    """(name, text-encoder weight, UNet weight) from a tag's arguments, as A1111 reads them:
    ``name`` (1.0), ``name:w`` (both w), ``name:te:unet``, or ``te=``/``unet=`` named."""
    if not items or not items[0]:
        raise LoraError(f"{tag}: no LoRA name (write <lora:name:weight>)")
    positional = [item for item in items[1:] if "=" not in item]
    named = dict(item.split("=", 1) for item in items[1:] if "=" in item)
    unknown = sorted(set(named) - {"te", "unet"})
    if unknown:
        raise LoraError(f"{tag}: unknown argument {unknown[0]!r}; known: te, unet")
    if len(positional) > 2:
        raise LoraError(f"{tag}: at most two weights (text encoder, UNet), got {len(positional)}")
    te = _weight(positional[0], tag) if positional else 1.0
    unet = _weight(positional[1], tag) if len(positional) > 1 else te
    te = _weight(named["te"], tag) if "te" in named else te
    unet = _weight(named["unet"], tag) if "unet" in named else unet
    return items[0], te, unet


# --------------------------------------------------------------------------- fitting the model


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape: from the header alone for .safetensors, else through the safe loader."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        return {key: tuple(value.shape) for key, value in read_state_dict(path).items()}
    except CheckpointError as err:
        raise LoraError(f"LoRA {path.stem!r}: {err}") from None
    except Exception as err:  # safetensors raises several types for a damaged file
        raise LoraError(f"LoRA {path.stem!r}: {path.name} is not a readable LoRA file: {err}") from None


_DOWN_RE = re.compile(r"lora_down|lora_A")


def _input_width(shapes: dict[str, tuple[int, ...]], *parts: str, prefix: tuple[str, ...] = ()) -> int | None:
    """The input width of the first LoRA down (A) matrix whose key holds every one of ``parts``."""
    for key, shape in shapes.items():
        flat = key.replace(".", "_")
        if prefix and not key.startswith(prefix):
            continue
        if all(part in flat for part in parts) and _DOWN_RE.search(flat) and len(shape) == 2:
            return shape[1]
    return None


def _family(width: int) -> str:
    return WIDTH_FAMILIES.get(width, f"a model with {width}-wide cross-attention")


def check_fits(name: str, shapes: dict[str, tuple[int, ...]], pipe: Any, arch: str, model_name: str) -> None:
    """Raise LoraError unless the LoRA's layers fit the model's UNet and text encoder(s)."""
    if not any("lora" in key for key in shapes):
        raise LoraError(f"LoRA {name!r} holds no LoRA weights (no lora_down/lora_up or lora_A/lora_B keys)")
    model_family = ARCH_FAMILIES.get(arch, arch)
    context = pipe.unet.config.cross_attention_dim
    width = _input_width(shapes, "attn2", "to_k")
    if width is not None and width != context:
        raise LoraError(
            f"LoRA {name!r} is for {_family(width)} (cross-attention width {width}); "
            f"the model {model_name!r} is {model_family} ({context}). Choose a checkpoint of that family"
        )
    has_te2 = any(key.startswith(("lora_te2_", "text_encoder_2.")) for key in shapes)
    if has_te2 and getattr(pipe, "text_encoder_2", None) is None:
        raise LoraError(
            f"LoRA {name!r} is for SDXL (it has weights for a second text encoder); "
            f"the model {model_name!r} is {model_family}. Choose an SDXL checkpoint"
        )
    te_width = _input_width(shapes, "q_proj", prefix=("lora_te_", "lora_te1_", "text_encoder."))
    hidden = pipe.text_encoder.config.hidden_size
    if te_width is not None and te_width != hidden:
        raise LoraError(
            f"LoRA {name!r} was trained for a {te_width}-wide text encoder; "
            f"the model {model_name!r} ({model_family}) has a {hidden}-wide one"
        )


# --------------------------------------------------------------------------- applying


def _components_with(pipe: Any, adapter: str) -> list[str]:
    """The pipeline components ("unet", "text_encoder", ...) that hold ``adapter``."""
    return [component for component, names in pipe.get_list_adapters().items() if adapter in names]


def apply_loras(pipe: Any, uses: list[LoraUse], arch: str, model_name: str) -> list[str]:
    """Load every LoRA into ``pipe`` as its own adapter, weighted; returns the adapter names.

    On any error everything loaded so far is taken out again before the LoraError is raised.
    """
    adapters: list[str] = []
    weights: list[dict[str, float]] = []
    try:
        for index, use in enumerate(uses):
            lora = use.lora
            check_fits(lora.name, tensor_shapes(lora.path), pipe, arch, model_name)
            source = str(lora.path) if lora.path.suffix.lower() == ".safetensors" else read_state_dict(lora.path)
            extra = {} if arch == "sdxl" else {"unet_config": pipe.unet.config}  # LDM-style UNet key names
            adapter = f"{ADAPTER_PREFIX}{index}"
            try:
                pipe.load_lora_weights(source, adapter_name=adapter, **extra)
            except (CheckpointError, LoraError):
                raise
            except Exception as err:  # diffusers and peft raise ValueError, KeyError, RuntimeError ...
                raise LoraError(f"LoRA {lora.name!r} could not be applied: {str(err).strip()[:300]}") from None
            adapters.append(adapter)
            components = _components_with(pipe, adapter)
            if not components:
                raise LoraError(f"LoRA {lora.name!r} has no layer that this model has ({model_name!r})")
            weights.append({c: use.unet_weight if c == "unet" else use.te_weight for c in components})
        if adapters:
            pipe.set_adapters(adapters, adapter_weights=weights)
    except CheckpointError as err:
        remove_loras(pipe)
        raise LoraError(str(err)) from None
    except BaseException:
        remove_loras(pipe)
        raise
    return adapters


def remove_loras(pipe: Any) -> None:
    """Take every LoRA layer out of ``pipe``, a partly loaded one too (a model keeps none between jobs)."""
    pipe.unload_lora_weights()


def lora_layers(module: torch.nn.Module) -> int:
    """How many peft LoRA layers ``module`` holds (0 on a clean model)."""
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(m, LoraLayer) for m in module.modules())
