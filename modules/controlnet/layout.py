"""ControlNet weights in the original layout (lllyasviel's ``cldm``) and in the diffusers layout.

The original layout (``control_v11p_sd15_canny.pth`` and the like) keeps every tensor under
``control_model.``:

``input_hint_block.{0,2,..,2k}``
    the hint encoder: convolutions at even indices (SiLU between them); the first is diffusers'
    ``controlnet_cond_embedding.conv_in``, the last its ``conv_out``, the ones between ``blocks.j``.
``input_blocks`` / ``middle_block`` / ``time_embed`` / ``label_emb``
    the UNet encoder, named as in an LDM UNet (``modules.ldm_export`` maps those parts).
``zero_convs.{i}.0`` / ``middle_block_out.0``
    the 1x1 "zero" convolutions: diffusers' ``controlnet_down_blocks.{i}`` / ``controlnet_mid_block``.

Reading goes through diffusers' own ``convert_controlnet_checkpoint``; the hint encoder (whose
last index is fixed at 14 there) and the SDXL ``label_emb`` are mapped here, so a ControlNet
with a shorter hint encoder (the bundled one: the shapes VAE downsamples 4x, not 8x) loads too.
The diffusers config is built from the tensor shapes, over the family's shipped UNet config,
never fetched. ``controlnet_to_ldm`` is the writer, the inverse of the reader.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modules.checkpoints import CheckpointError
from modules.ldm_export import UNET_FIXED_KEYS, LdmExportError, _split, _unet_block_key, _unet_params, save_ldm_checkpoint

CONTROL_PREFIX = "control_model."
HINT_KEY = re.compile(r"^input_hint_block\.(\d+)\.weight$")
SDXL_TIME_EMBED_DIM = 256  # SDXL's addition_time_embed_dim (no tensor carries it)


class ControlNetError(CheckpointError):
    """A ControlNet file cannot be read or does not match its detected layout; the message says why."""


def strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ControlNet's own tensors: those under ``control_model.`` (prefix removed) if there are any.

    Old full checkpoints (``control_sd15_canny.pth``) also carry a whole SD model beside the
    ControlNet; as in sd-webui-controlnet, only the ``control_model.`` part is used.
    """
    if any(k.startswith(CONTROL_PREFIX) for k in state):
        return {k[len(CONTROL_PREFIX):]: v for k, v in state.items() if k.startswith(CONTROL_PREFIX)}
    return dict(state)


def is_diffusers_layout(state: dict[str, Tensor]) -> bool:
    """True for diffusers key names (``controlnet_cond_embedding.*``), False for the original layout."""
    return any(k.startswith(("controlnet_cond_embedding.", "controlnet_down_blocks.")) for k in state)


def hint_indices(ldm: dict[str, Tensor]) -> list[int]:
    """Indices of the hint encoder's convolutions, in order (``[0, 2, ..., 14]`` for SD 1.5)."""
    return sorted(int(m.group(1)) for k in ldm if (m := HINT_KEY.match(k)))


# -- writer: diffusers -> original ----------------------------------------------------------------

def _layers_per_block(state: dict[str, Tensor]) -> int:
    indices = {int(k.split(".")[3]) for k in state if k.startswith("down_blocks.0.resnets.")}
    if not indices:
        raise LdmExportError("no down_blocks.0.resnets.* keys: not a diffusers ControlNet state dict")
    return max(indices) + 1


def controlnet_to_ldm(state_dict: dict[str, Tensor], prefix: str = CONTROL_PREFIX) -> dict[str, Tensor]:
    """Rename a diffusers ``ControlNetModel`` state dict to the original (``control_model.*``) layout.

    The shared UNet encoder parts go through ``modules.ldm_export``'s UNet mapping. Tensors are
    shared, not copied; a key with no place in the layout raises ``LdmExportError``.
    """
    layers = _layers_per_block(state_dict)
    n_blocks = len({k.split(".")[2] for k in state_dict if k.startswith("controlnet_cond_embedding.blocks.")})
    out: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        module, param = _split(key)
        parts = key.split(".")
        if module in UNET_FIXED_KEYS:
            new = f"{UNET_FIXED_KEYS[module]}.{param}"
        elif module == "controlnet_cond_embedding.conv_in":
            new = f"input_hint_block.0.{param}"
        elif module.startswith("controlnet_cond_embedding.blocks."):
            new = f"input_hint_block.{2 * (int(parts[2]) + 1)}.{param}"
        elif module == "controlnet_cond_embedding.conv_out":
            new = f"input_hint_block.{2 * (n_blocks + 1)}.{param}"
        elif parts[0] == "controlnet_down_blocks":
            new = f"zero_convs.{parts[1]}.0.{param}"
        elif module == "controlnet_mid_block":
            new = f"middle_block_out.0.{param}"
        elif parts[0] in ("down_blocks", "mid_block"):
            new = _unet_block_key(parts, layers, set())
        else:
            raise LdmExportError(f"ControlNet key {key!r} has no place in the original layout")
        if prefix + new in out:
            raise LdmExportError(f"two ControlNet keys map to {new!r} (the second is {key!r})")
        out[prefix + new] = tensor
    return out


def controlnet_ldm_yaml(config: Any) -> str:
    """The companion ``NAME.yaml`` (ControlNet's LDM config, ``control_stage_config``) for a ControlNet.

    It carries what the tensors cannot tell, the attention heads, so the file loads with the
    same config it was trained with.
    """
    from omegaconf import OmegaConf

    down = list(config["down_block_types"])
    mirrored = {**dict(config), "up_block_types": [t.replace("Down", "Up") for t in reversed(down)],
                "out_channels": config["in_channels"]}
    params = _unet_params(mirrored)
    params.pop("out_channels")
    params["hint_channels"] = config["conditioning_channels"]
    if config.get("addition_embed_type") == "text_time":
        params["num_classes"] = "sequential"
        params["adm_in_channels"] = config["projection_class_embeddings_input_dim"]
    document = {"model": {"target": "cldm.cldm.ControlLDM", "params": {
        "control_stage_config": {"target": "cldm.cldm.ControlNet", "params": params}}}}
    return OmegaConf.to_yaml(OmegaConf.create(document))


def save_controlnet(model: Any, path: Path, dtype: torch.dtype | None = torch.float16, overwrite: bool = False,
                    metadata: dict[str, str] | None = None) -> Path:
    """Write a ``ControlNetModel`` as ``path`` (``.safetensors``, original layout) plus its ``.yaml``.

    The file is written atomically (``modules.ldm_export.save_ldm_checkpoint``); floating-point
    tensors are cast to ``dtype`` (None keeps them). Returns ``path``.
    """
    path = Path(path)
    save_ldm_checkpoint(path, controlnet_to_ldm(model.state_dict()), dtype=dtype, metadata=metadata, overwrite=overwrite)
    path.with_suffix(".yaml").write_text(controlnet_ldm_yaml(model.config))
    return path


# -- reader: original -> diffusers ----------------------------------------------------------------

def _levels(ldm: dict[str, Tensor]) -> tuple[int, int]:
    """(number of resolution levels, layers_per_block) from the input blocks."""
    n_input = 1 + max(int(k.split(".")[1]) for k in ldm if k.startswith("input_blocks."))
    ops = sorted(int(k.split(".")[1]) for k in ldm if re.match(r"^input_blocks\.\d+\.0\.op\.weight$", k))
    layers = ops[0] - 1 if ops else n_input - 1
    if layers < 1 or n_input % (layers + 1):
        raise ControlNetError(f"{n_input} input blocks do not form levels of {layers} res blocks plus a downsampler")
    return n_input // (layers + 1), layers


def _depth(ldm: dict[str, Tensor], block: str) -> int:
    """Transformer blocks in one attention block (0 when it has none)."""
    pattern = re.compile(rf"^{re.escape(block)}\.1\.transformer_blocks\.(\d+)\.")
    found = {int(m.group(1)) for k in ldm if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def config_from_ldm(ldm: dict[str, Tensor], base: dict[str, Any], yaml_params: dict | None = None) -> dict[str, Any]:
    """A ``ControlNetModel`` config from an original-layout state dict (``control_model.`` removed).

    Shapes give channels, levels, layers, attention, context width, hint encoder and SDXL's
    embedding; ``base`` (the family's shipped UNet config) gives the rest. The attention heads,
    which no tensor shows, come from the companion yaml (``num_heads`` / ``num_head_channels``),
    else from ``base`` (its head count, or one head per 64 channels for SD 2.x / SDXL).
    """
    try:
        levels, layers = _levels(ldm)
        first = ldm["input_blocks.0.0.weight"]
        hints = hint_indices(ldm)
        blocks = [f"input_blocks.{1 + i * (layers + 1)}" for i in range(levels)]
        channels = [int(ldm[f"{b}.0.in_layers.2.weight"].shape[0]) for b in blocks]
        depths = [_depth(ldm, b) for b in blocks]
        context = [v.shape[1] for k, v in ldm.items() if k.endswith("attn2.to_k.weight")]
        proj_in = [v.ndim for k, v in ldm.items() if k.endswith(".proj_in.weight")]
        hint_out = [int(ldm[f"input_hint_block.{i}.weight"].shape[0]) for i in hints]
        config = {k: v for k, v in base.items() if k in _controlnet_fields()}
        config.update(
            in_channels=int(first.shape[1]),
            conditioning_channels=int(ldm[f"input_hint_block.{hints[0]}.weight"].shape[1]),
            conditioning_embedding_out_channels=[hint_out[0], *hint_out[1:-1][1::2]],
            block_out_channels=channels,
            layers_per_block=layers,
            down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
            mid_block_type="UNetMidBlock2DCrossAttn" if "middle_block.1.proj_in.weight" in ldm else "UNetMidBlock2D",
            transformer_layers_per_block=_one_or_list([max(d, 1) for d in depths] if any(depths) else [1]),
            cross_attention_dim=int(context[0]) if context else base.get("cross_attention_dim"),
            use_linear_projection=bool(proj_in) and proj_in[0] == 2,
        )
        if config["mid_block_type"] == "UNetMidBlock2DCrossAttn" and isinstance(config["transformer_layers_per_block"], int):
            mid = _depth(ldm, "middle_block")
            if mid != config["transformer_layers_per_block"]:
                config["transformer_layers_per_block"] = [*([config["transformer_layers_per_block"]] * (levels - 1)), mid]
        if "label_emb.0.0.weight" in ldm:
            config.update(addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
                          projection_class_embeddings_input_dim=int(ldm["label_emb.0.0.weight"].shape[1]))
        else:
            config.update(addition_embed_type=None, addition_time_embed_dim=None, projection_class_embeddings_input_dim=None)
    except (KeyError, IndexError, ValueError) as err:
        raise ControlNetError(f"not a ControlNet in the original layout: cannot read its shapes ({err})") from None
    config["attention_head_dim"] = _heads(channels, base, yaml_params)
    config.pop("num_attention_heads", None)
    return config


def _one_or_list(values: list[int]) -> int | list[int]:
    return values[0] if len(set(values)) == 1 else values


def _heads(channels: list[int], base: dict[str, Any], yaml_params: dict | None) -> int | list[int]:
    """diffusers' ``attention_head_dim`` (a head count per level, in SD 1.x's naming)."""
    if yaml_params:
        width = int(yaml_params.get("num_head_channels", -1) or -1)
        if width > 0:
            return _one_or_list([max(1, c // width) for c in channels])
        if int(yaml_params.get("num_heads", -1) or -1) > 0:
            return int(yaml_params["num_heads"])
    heads = base.get("attention_head_dim", 8)
    if list(base.get("block_out_channels", [])) == channels:
        return list(heads) if isinstance(heads, (list, tuple)) else heads
    if isinstance(heads, int):
        return heads
    return _one_or_list([max(1, c // 64) for c in channels])


def _controlnet_fields() -> set[str]:
    import inspect

    from diffusers import ControlNetModel

    return set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}


def ldm_to_diffusers(ldm: dict[str, Tensor], config: dict[str, Any]) -> tuple[dict[str, Tensor], list[str]]:
    """(diffusers state dict, original keys that found no place) for an original-layout state dict.

    diffusers' converter maps the encoder and zero convolutions (it gives None for a key it
    expected but did not find: those are dropped here, so they show up as missing); the hint
    encoder, whatever its length, and SDXL's ``label_emb`` are mapped here.
    """
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    converted = convert_controlnet_checkpoint(ldm, {"layers_per_block": config["layers_per_block"]})
    out = {k: v for k, v in converted.items() if v is not None and not k.startswith("controlnet_cond_embedding.")}
    hints = hint_indices(ldm)
    names = ["conv_in", *(f"blocks.{j}" for j in range(len(hints) - 2)), "conv_out"] if len(hints) >= 2 else []
    for name, index in zip(names, hints, strict=True):
        for param in ("weight", "bias"):
            if f"input_hint_block.{index}.{param}" in ldm:
                out[f"controlnet_cond_embedding.{name}.{param}"] = ldm[f"input_hint_block.{index}.{param}"]
    embedding = "add_embedding" if config.get("addition_embed_type") == "text_time" else "class_embedding"
    for ldm_name, name in (("label_emb.0.0", "linear_1"), ("label_emb.0.2", "linear_2")):
        for param in ("weight", "bias"):
            if f"{ldm_name}.{param}" in ldm:
                out[f"{embedding}.{name}.{param}"] = ldm[f"{ldm_name}.{param}"]
    used = {id(v) for v in out.values()}
    unmapped = sorted(k for k, v in ldm.items() if id(v) not in used)
    return out, unmapped
