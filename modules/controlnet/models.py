"""ControlNet models on disk (``models/ControlNet/``): scanning, titles, family detection, loading.

A ControlNet is a single file (``.safetensors``; ``.pth``, ``.pt``, ``.ckpt`` only through the
safe ``weights_only`` loader) in the original layout (``control_model.*``, as lllyasviel ships
them) or in diffusers' key names, or a diffusers folder (``config.json`` with ``_class_name``
``ControlNetModel``). The ``annotators/`` subfolder holds preprocessor weights and is skipped.

Titles are sd-webui-controlnet's: ``stem [hash]`` where the hash is A1111's legacy
``model_hash`` (sha256 of the 64 KiB at offset 1 MiB, 8 hex digits), so a title an API client
copied from A1111 (``control_v11p_sd15_canny [d14c016b]``) names the same file here.

Loading converts the keys with diffusers' converter (see ``layout``), builds the config offline
from the detected family's shipped UNet config and the tensor shapes (a companion ``NAME.yaml``,
ControlNet's LDM config, gives the attention heads), and loads with a strict key check.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules.checkpoints import read_state_dict
from modules.controlnet.layout import (
    ControlNetError,
    config_from_ldm,
    controlnet_to_ldm,
    is_diffusers_layout,
    ldm_to_diffusers,
    strip_prefix,
)
from modules.schemas import RequestError

SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")
ANNOTATORS = "annotators"
FAMILIES = ("sd1", "sd2", "sdxl")
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
FAMILY_CONFIGS = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl"}  # configs/<dir> holding the family's UNet config
NONE_NAMES = ("", "none")

__all__ = [
    "ControlNetError", "ControlNetInfo", "LoadedControlNet", "controlnet_to_ldm", "detect_family",
    "family_of_arch", "check_family", "find_controlnet", "legacy_model_hash", "load_controlnet", "scan_controlnets",
]


@dataclass(frozen=True)
class ControlNetInfo:
    """One ControlNet found in ``models/ControlNet``."""

    name: str  # the title, as sd-webui-controlnet lists it: "control_v11p_sd15_canny [d14c016b]"
    stem: str  # file name without extension, or the folder name
    path: Path
    kind: str  # "single" or "diffusers"
    config_path: Path | None = None  # companion NAME.yaml (ControlNet's LDM config), if any


@dataclass
class LoadedControlNet:
    """A loaded ControlNet and what generation needs to know about it."""

    model: Any  # diffusers.ControlNetModel
    family: str  # "sd1" | "sd2" | "sdxl"
    info: ControlNetInfo
    short_hash: str | None
    load_seconds: float = 0.0

    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.model.parameters(), *self.model.buffers()))


def legacy_model_hash(path: Path) -> str:
    """A1111's old ``model_hash``: sha256 of 64 KiB from offset 1 MiB, first 8 hex digits."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def _is_controlnet_folder(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text()).get("_class_name") == "ControlNetModel"
    except (OSError, ValueError, AttributeError):
        return False


def scan_controlnets(folder: Path, hashes: Callable[[Path], str] = legacy_model_hash) -> list[ControlNetInfo]:
    """Every ControlNet under ``folder`` (sorted by title); ``annotators/`` is skipped.

    ``hashes(path)`` gives a file's short hash for its title (A1111's legacy hash by default).
    """
    if not folder.is_dir():
        return []
    annotators = folder / ANNOTATORS
    skip = lambda p: annotators in p.parents or p == annotators  # noqa: E731
    dirs = sorted(p.parent for p in folder.rglob("config.json") if not skip(p) and _is_controlnet_folder(p.parent))
    found = [ControlNetInfo(d.name, d.name, d, "diffusers") for d in dirs]
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in SUFFIXES or not p.is_file() or skip(p) or any(d in p.parents for d in dirs):
            continue
        if p.stem == "None":  # a file called None would be indistinguishable from "no ControlNet"
            continue
        yaml = p.with_suffix(".yaml")
        found.append(ControlNetInfo(f"{p.stem} [{hashes(p)}]", p.stem, p, "single", yaml if yaml.is_file() else None))
    return sorted(found, key=lambda i: i.name.lower())


def find_controlnet(query: str | None, infos: list[ControlNetInfo], field: str = "controlnet model") -> ControlNetInfo | None:
    """The ControlNet named by title, stem or file name (any case); None for "None" or "".

    An unknown name raises RequestError naming ``field`` and listing the choices.
    """
    q = (query or "").strip()
    if q.lower() in NONE_NAMES:
        return None
    for info in infos:
        if q == info.name:
            return info
    base = q.split(" [")[0] if q.endswith("]") else q
    for info in infos:
        if base.lower() in (info.stem.lower(), info.path.name.lower()):
            return info
    choices = ", ".join(i.name for i in infos) or "none installed (put ControlNet models in models/ControlNet)"
    raise RequestError(f"{field}: {query!r} not found; choose None or one of: {choices}")


def detect_family(state_dict: dict[str, torch.Tensor]) -> str:
    """"sd1", "sd2" or "sdxl" from a ControlNet's keys and shapes (original or diffusers layout).

    SDXL ControlNets carry the size/crop embedding (``label_emb`` / ``add_embedding``) and a
    2048-wide cross-attention context; SD 2.x ones a 1024-wide context; anything else (SD 1.x's
    768, or a small custom width such as the bundled model's 128) is SD 1.x.
    """
    state = strip_prefix(state_dict)
    if not any(k.startswith(("input_hint_block.", "controlnet_cond_embedding.")) for k in state):
        raise ControlNetError(
            "not a ControlNet: no hint encoder (control_model.input_hint_block.* or controlnet_cond_embedding.*); "
            "is it a checkpoint, a LoRA or a T2I-Adapter?"
        )
    if any(k.startswith(("label_emb.", "add_embedding.")) for k in state):
        return "sdxl"
    widths = {int(v.shape[1]) for k, v in state.items() if k.endswith("attn2.to_k.weight")}
    if 2048 in widths:
        return "sdxl"
    if 1024 in widths:
        return "sd2"
    if not widths:
        raise ControlNetError("cannot tell the ControlNet's base model: it has no cross-attention layers")
    return "sd1"


def family_of_arch(arch: str) -> str:
    """The ControlNet family a checkpoint architecture takes ("sd1-inpaint" -> "sd1", "sd2-base" -> "sd2")."""
    return "sdxl" if arch.startswith("sdxl") else "sd2" if arch.startswith("sd2") else "sd1"


def check_family(controlnet: LoadedControlNet, checkpoint_arch: str, field: str = "controlnet model") -> None:
    """RequestError when a ControlNet was made for another base model than the checkpoint's."""
    wanted = family_of_arch(checkpoint_arch)
    if controlnet.family != wanted:
        raise RequestError(
            f"{field}: {controlnet.info.name} is an {FAMILY_NAMES[controlnet.family]} ControlNet, but the checkpoint is "
            f"{FAMILY_NAMES[wanted]}; choose a ControlNet made for {FAMILY_NAMES[wanted]}"
        )


def _base_config(family: str) -> dict[str, Any]:
    from modules.model_loading import shipped_configs

    return dict(shipped_configs(FAMILY_CONFIGS[family]).unet)


def _yaml_params(path: Path | None) -> dict | None:
    if path is None:
        return None
    from modules.model_loading import load_yaml

    params = (load_yaml(path)["model"].get("params") or {}).get("control_stage_config", {}).get("params")
    if not isinstance(params, dict):
        raise ControlNetError(f"{path.name} has no model.params.control_stage_config.params (expected a ControlNet yaml)")
    return params


def _load_strict(model: torch.nn.Module, weights: dict[str, torch.Tensor], unmapped: list[str], name: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = sorted(k for k in set(expected) & set(weights) if tuple(expected[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or unmapped or shapes:
        raise ControlNetError(
            f"{name}: the ControlNet does not match its detected layout: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(unmapped)} keys of the "
            f"file not mapped (e.g. {unmapped[:3]}), {len(shapes)} with another shape (e.g. {shapes[:3]})"
        )
    model.load_state_dict(weights, strict=True, assign=True)


def controlnet_from_state_dict(state_dict: dict[str, torch.Tensor], yaml_params: dict | None = None,
                               name: str = "ControlNet") -> tuple[str, Any]:
    """(family, ``ControlNetModel``) from a state dict in the original or the diffusers layout.

    Works on meta tensors too (the model is built empty and the tensors assigned), which is
    how the full-size SD 1.5 layout is tested without memory.
    """
    from diffusers import ControlNetModel

    from modules.model_loading import _empty

    family = detect_family(state_dict)
    state = strip_prefix(state_dict)
    diffusers_keys = is_diffusers_layout(state)
    ldm = controlnet_to_ldm(state, prefix="") if diffusers_keys else state
    config = config_from_ldm(ldm, _base_config(family), yaml_params)
    weights, unmapped = (state, []) if diffusers_keys else ldm_to_diffusers(ldm, config)
    model = _empty(lambda: ControlNetModel.from_config(config))
    _load_strict(model, weights, unmapped, name)
    return family, model.eval().requires_grad_(False)


def _family_of_config(config: Any) -> str:
    if config.get("addition_embed_type") == "text_time" or config.get("cross_attention_dim") == 2048:
        return "sdxl"
    return "sd2" if config.get("cross_attention_dim") == 1024 else "sd1"


def load_controlnet(info: ControlNetInfo) -> LoadedControlNet:
    """Load a ControlNet on the CPU, in the file's dtype (the caller casts and places it)."""
    t0 = time.perf_counter()
    if info.kind == "diffusers":
        from diffusers import ControlNetModel

        try:
            model = ControlNetModel.from_pretrained(info.path, local_files_only=True)
        except Exception as err:  # diffusers raises several types for a broken folder
            raise ControlNetError(f"ControlNet folder {info.path.name} could not be loaded: {err}") from None
        family, short_hash = _family_of_config(model.config), None
        model = model.eval().requires_grad_(False)
    else:
        state = read_state_dict(info.path)
        family, model = controlnet_from_state_dict(state, _yaml_params(info.config_path), info.path.name)
        short_hash = info.name.rsplit(" [", 1)[-1].rstrip("]") if info.name.endswith("]") else None
    return LoadedControlNet(model, family, info, short_hash, time.perf_counter() - t0)
