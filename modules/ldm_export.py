"""Export diffusers SD 1.x/2.x components to the original LDM ("CompVis" / A1111) single-file layout.

diffusers can read an LDM checkpoint (``diffusers.loaders.single_file_utils``) but has no writer.
This module is the writer: it renames the diffusers state-dict keys to the names of the original
``ldm`` modules, and writes the A1111 companion ``.yaml`` that describes the architecture.

The layouts, in short (``n`` = number of resolution levels, ``L`` = ``layers_per_block``):

UNet (``model.diffusion_model.``)
    ``input_blocks.0.0`` is ``conv_in``; level ``i`` then takes ``L`` input blocks (``.0`` resnet,
    ``.1`` transformer) and, unless it is the last level, one downsampler block (``.0.op``).
    ``middle_block.0/1/2`` are resnet, transformer, resnet.  Up level ``i`` takes ``L + 1`` output
    blocks; the last one of a level also holds the upsampler (``.1.conv`` or ``.2.conv`` when the
    block has a transformer at ``.1``).  ``time_embed.0/2`` and ``out.0/2`` close the list.
VAE (``first_stage_model.``)
    ``encoder.down.{i}.block.{j}`` / ``decoder.up.{n-1-i}.block.{j}`` (the decoder counts levels
    from the bottom), ``mid.block_1``, ``mid.attn_1``, ``mid.block_2``; attention projections are
    1x1 convolutions.
Text encoder (``cond_stage_model.transformer.``)
    The Hugging Face ``CLIPTextModel`` names, under ``text_model.``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."

UNET_FIXED_KEYS = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_FIXED_KEYS = {
    "conv_norm_out": "norm_out",
}
VAE_ATTENTION_PARTS = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
TEXT_MODEL_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")

# diffusers beta_schedule -> LDM make_beta_schedule name (LDM's "linear" is diffusers' "scaled_linear").
LDM_BETA_SCHEDULES = {"scaled_linear": "linear", "linear": "sqrt_linear", "squaredcos_cap_v2": "cosine"}
LDM_PARAMETERIZATION = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


class LdmExportError(ValueError):
    """The model cannot be written in the LDM layout (the message says why)."""


def _cfg(config: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a diffusers config (FrozenDict, dict or attribute object)."""
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _split(key: str) -> tuple[str, str]:
    """Split ``a.b.weight`` into (``a.b``, ``weight``)."""
    module, _, param = key.rpartition(".")
    return module, param


def _int_layers_per_block(config: Any) -> int:
    layers = _cfg(config, "layers_per_block")
    if isinstance(layers, (list, tuple)):
        if len(set(layers)) != 1:
            raise LdmExportError(
                f"layers_per_block={list(layers)} differs between blocks; the LDM layout needs one number "
                "of res blocks for every level"
            )
        layers = layers[0]
    if not isinstance(layers, int) or layers < 1:
        raise LdmExportError(f"layers_per_block must be a positive int, got {layers!r}")
    return layers


def _rename_resnet(rest: str) -> str:
    """``norm1.weight`` -> ``in_layers.0.weight`` (UNet resnet parts)."""
    module, param = _split(rest)
    if module not in UNET_RESNET_PARTS:
        raise LdmExportError(f"unknown UNet resnet parameter {rest!r}; expected one of {sorted(UNET_RESNET_PARTS)}")
    return f"{UNET_RESNET_PARTS[module]}.{param}"


def _unet_block_key(parts: list[str], layers: int, attention_up_levels: set[int]) -> str:
    """Map the part of a key after ``down_blocks`` / ``up_blocks`` / ``mid_block`` to its LDM name."""
    kind = parts[0]
    if kind == "mid_block":
        sub, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if sub == "resnets":
            return f"middle_block.{2 * index}.{_rename_resnet(rest)}"
        if sub == "attentions" and index == 0:
            return f"middle_block.1.{rest}"
        raise LdmExportError(f"mid_block.{sub}.{index} has no place in the LDM layout")

    level, sub = int(parts[1]), parts[2]
    if kind == "down_blocks":
        if sub == "downsamplers":  # down_blocks.i.downsamplers.0.conv.weight
            return f"input_blocks.{1 + level * (layers + 1) + layers}.0.op.{parts[-1]}"
        index, rest = int(parts[3]), ".".join(parts[4:])
        block = 1 + level * (layers + 1) + index
        if sub == "resnets":
            return f"input_blocks.{block}.0.{_rename_resnet(rest)}"
        if sub == "attentions":
            return f"input_blocks.{block}.1.{rest}"
    if kind == "up_blocks":
        if sub == "upsamplers":  # up_blocks.i.upsamplers.0.conv.weight
            slot = 2 if level in attention_up_levels else 1
            return f"output_blocks.{level * (layers + 1) + layers}.{slot}.conv.{parts[-1]}"
        index, rest = int(parts[3]), ".".join(parts[4:])
        block = level * (layers + 1) + index
        if sub == "resnets":
            return f"output_blocks.{block}.0.{_rename_resnet(rest)}"
        if sub == "attentions":
            return f"output_blocks.{block}.1.{rest}"
    raise LdmExportError(f"unknown UNet key part {'.'.join(parts)!r}")


def unet_to_ldm(unet_state: dict[str, Tensor], config: Any) -> dict[str, Tensor]:
    """Rename a diffusers ``UNet2DConditionModel`` state dict to ``model.diffusion_model.*`` keys.

    Works for any number of levels, channels and ``layers_per_block`` (one int for all levels).
    Tensors are shared, not copied.  Unknown keys raise :class:`LdmExportError`.
    """
    layers = _int_layers_per_block(config)
    attention_up_levels = {int(k.split(".")[1]) for k in unet_state if k.startswith("up_blocks.") and ".attentions." in k}
    out: dict[str, Tensor] = {}
    for key, tensor in unet_state.items():
        module, param = _split(key)
        if module in UNET_FIXED_KEYS:
            new = f"{UNET_FIXED_KEYS[module]}.{param}"
        elif key == "class_embedding.weight":
            new = "label_emb.weight"
        elif key.split(".")[0] in ("down_blocks", "up_blocks", "mid_block"):
            new = _unet_block_key(key.split("."), layers, attention_up_levels)
        else:
            raise LdmExportError(f"UNet key {key!r} has no place in the LDM layout")
        if UNET_PREFIX + new in out:
            raise LdmExportError(f"two UNet keys map to {new!r} (the second is {key!r})")
        out[UNET_PREFIX + new] = tensor
    return out


def _vae_attention_tensor(rest: str, tensor: Tensor) -> tuple[str, Tensor]:
    """``to_q.weight`` -> (``q.weight``, 1x1 conv weight); norms and biases keep their shape."""
    module, param = _split(rest)
    if module not in VAE_ATTENTION_PARTS:
        raise LdmExportError(f"unknown VAE attention parameter {rest!r}; expected one of {sorted(VAE_ATTENTION_PARTS)}")
    if module != "group_norm" and param == "weight" and tensor.ndim == 2:
        tensor = tensor[:, :, None, None]
    return f"{VAE_ATTENTION_PARTS[module]}.{param}", tensor


def _vae_half_key(half: str, parts: list[str], num_levels: int, tensor: Tensor) -> tuple[str, Tensor]:
    """Map the part of a VAE key after ``encoder.`` / ``decoder.`` to its LDM name and tensor."""
    head = parts[0]
    if head in ("conv_in", "conv_out"):
        return ".".join(parts), tensor
    if head in VAE_FIXED_KEYS:
        return f"{VAE_FIXED_KEYS[head]}.{parts[-1]}", tensor
    if head == "mid_block":
        sub, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if sub == "resnets":
            return f"mid.block_{index + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}", tensor
        if sub == "attentions" and index == 0:
            new_rest, new_tensor = _vae_attention_tensor(rest, tensor)
            return f"mid.attn_1.{new_rest}", new_tensor
    if head in ("down_blocks", "up_blocks"):
        level = int(parts[1])
        name, ldm_level = ("down", level) if head == "down_blocks" else ("up", num_levels - 1 - level)
        sub = parts[2]
        if sub == "resnets":
            rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{name}.{ldm_level}.block.{parts[3]}.{rest}", tensor
        if sub in ("downsamplers", "upsamplers"):
            sampler = "downsample" if sub == "downsamplers" else "upsample"
            return f"{name}.{ldm_level}.{sampler}.conv.{parts[-1]}", tensor
    raise LdmExportError(f"VAE key {half}.{'.'.join(parts)} has no place in the LDM layout")


def vae_to_ldm(vae_state: dict[str, Tensor], config: Any) -> dict[str, Tensor]:
    """Rename a diffusers ``AutoencoderKL`` state dict to ``first_stage_model.*`` keys.

    The mid-block attention's q/k/v/proj_out weights become 1x1 conv weights ``[C, C, 1, 1]``
    as in LDM.  Unknown keys raise :class:`LdmExportError`.
    """
    num_levels = len(_cfg(config, "block_out_channels"))
    out: dict[str, Tensor] = {}
    for key, tensor in vae_state.items():
        parts = key.split(".")
        if parts[0] in ("quant_conv", "post_quant_conv") and len(parts) == 2:
            new, new_tensor = key, tensor
        elif parts[0] in ("encoder", "decoder"):
            rest, new_tensor = _vae_half_key(parts[0], parts[1:], num_levels, tensor)
            new = f"{parts[0]}.{rest}"
        else:
            raise LdmExportError(f"VAE key {key!r} has no place in the LDM layout")
        out[VAE_PREFIX + new] = new_tensor
    return out


def text_encoder_to_ldm(te_state: dict[str, Tensor], add_position_ids: bool = True) -> dict[str, Tensor]:
    """Rename a ``CLIPTextModel`` state dict to ``cond_stage_model.transformer.text_model.*`` keys.

    Accepts both the wrapped (``text_model.encoder...``) and the flat (``encoder...``,
    transformers >= 5.6) key styles.  With ``add_position_ids`` the ``position_ids`` buffer that
    original SD 1.x checkpoints carry (int64 ``[1, max_positions]``) is added when missing.
    """
    out: dict[str, Tensor] = {}
    for key, tensor in te_state.items():
        rest = key.removeprefix("text_model.")
        if not rest.startswith(TEXT_MODEL_PARTS):
            raise LdmExportError(
                f"text encoder key {key!r} is not part of a CLIPTextModel text model "
                f"(expected keys under {', '.join(TEXT_MODEL_PARTS)})"
            )
        out[TEXT_PREFIX + rest] = tensor
    position_key = TEXT_PREFIX + "embeddings.position_ids"
    embedding_key = TEXT_PREFIX + "embeddings.position_embedding.weight"
    if add_position_ids and position_key not in out and embedding_key in out:
        out[position_key] = torch.arange(out[embedding_key].shape[0], dtype=torch.int64)[None, :]
    return out


def pipeline_to_ldm(unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module) -> dict[str, Tensor]:
    """One LDM state dict from the three modules (their ``state_dict()`` and ``config``)."""
    state = unet_to_ldm(unet.state_dict(), unet.config)
    state.update(vae_to_ldm(vae.state_dict(), vae.config))
    state.update(text_encoder_to_ldm(text_encoder.state_dict()))
    return state


def save_ldm_checkpoint(
    path: Path,
    state: dict[str, Tensor],
    dtype: torch.dtype | None = torch.float16,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> None:
    """Write ``state`` as ``.safetensors``, atomically (temporary file, then ``os.replace``).

    Floating-point tensors are cast to ``dtype`` (``None`` keeps them); integer tensors such
    as ``position_ids`` are kept.  An existing file is only replaced with ``overwrite=True``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or pass overwrite=True to replace it")
    tensors = {}
    for key, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[key] = tensor.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temp_name, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_name, 0o666 & ~umask)  # mkstemp makes the file private; a model is not
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _ldm_heads(unet_config: Any, channels: list[int]) -> dict[str, int]:
    """``num_heads`` (same head count everywhere) or ``num_head_channels`` (same head width)."""
    heads = _cfg(unet_config, "num_attention_heads") or _cfg(unet_config, "attention_head_dim")
    per_level = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(channels)
    if len(set(per_level)) == 1:
        return {"num_heads": int(per_level[0])}
    widths = {c // h for c, h in zip(channels, per_level, strict=True)}
    if len(widths) == 1 and all(c % h == 0 for c, h in zip(channels, per_level, strict=True)):
        return {"num_head_channels": widths.pop()}
    raise LdmExportError(
        f"attention heads {per_level} for channels {channels} are neither one head count nor one head width; "
        "the LDM UNet needs one of the two"
    )


def _attention_resolutions(unet_config: Any) -> list[int]:
    """Downsampling factors with attention; the up blocks must mirror the down blocks, as in LDM."""
    down = list(_cfg(unet_config, "down_block_types"))
    up = list(_cfg(unet_config, "up_block_types"))
    down_attn = ["CrossAttn" in t for t in down]
    up_attn = ["CrossAttn" in t for t in reversed(up)]
    if down_attn != up_attn:
        raise LdmExportError(
            f"up_block_types {up} do not mirror down_block_types {down}; LDM uses attention at the same "
            "resolutions on the way down and up"
        )
    return [2**level for level, has_attention in enumerate(down_attn) if has_attention]


def _unet_params(unet_config: Any) -> dict[str, Any]:
    channels = list(_cfg(unet_config, "block_out_channels"))
    model_channels = channels[0]
    if any(c % model_channels for c in channels):
        raise LdmExportError(f"block_out_channels {channels} are not multiples of the first one, as LDM's channel_mult needs")
    depth = _cfg(unet_config, "transformer_layers_per_block", 1)
    if isinstance(depth, (list, tuple)):
        depth = depth[0] if len(set(depth)) == 1 else list(depth)
    params: dict[str, Any] = {
        "image_size": 32,  # unused by LDM, kept as in the reference yaml
        "in_channels": _cfg(unet_config, "in_channels"),
        "out_channels": _cfg(unet_config, "out_channels"),
        "model_channels": model_channels,
        "attention_resolutions": _attention_resolutions(unet_config),
        "num_res_blocks": _int_layers_per_block(unet_config),
        "channel_mult": [c // model_channels for c in channels],
        **_ldm_heads(unet_config, channels),
        "use_spatial_transformer": True,
        "transformer_depth": depth,
        "context_dim": _cfg(unet_config, "cross_attention_dim"),
        "use_linear_in_transformer": bool(_cfg(unet_config, "use_linear_projection", False)),
        "use_checkpoint": True,
        "legacy": False,
    }
    return params


def _vae_params(vae_config: Any) -> dict[str, Any]:
    channels = list(_cfg(vae_config, "block_out_channels"))
    ch = channels[0]
    if any(c % ch for c in channels):
        raise LdmExportError(f"VAE block_out_channels {channels} are not multiples of the first one, as LDM's ch_mult needs")
    latent = _cfg(vae_config, "latent_channels")
    return {
        "embed_dim": latent,
        "monitor": "val/rec_loss",
        "ddconfig": {
            "double_z": True,
            "z_channels": latent,
            "resolution": _cfg(vae_config, "sample_size"),
            "in_channels": _cfg(vae_config, "in_channels"),
            "out_ch": _cfg(vae_config, "out_channels"),
            "ch": ch,
            "ch_mult": [c // ch for c in channels],
            "num_res_blocks": _cfg(vae_config, "layers_per_block"),
            "attn_resolutions": [],
            "dropout": 0.0,
        },
        "lossconfig": {"target": "torch.nn.Identity"},
    }


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so the yaml has no python tags."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def ldm_yaml(
    unet_config: Any,
    vae_config: Any,
    text_config: dict | None,
    scheduler_config: Any,
    scaling_factor: float,
) -> str:
    """The A1111-style companion ``NAME.yaml`` (a ``LatentDiffusion`` config) for an exported model.

    ``text_config`` (CLIPTextConfig fields) is written under ``cond_stage_config.params`` for text
    encoders that are not the standard CLIP ViT-L/14; pass ``None`` for a standard SD 1.x model.
    """
    from omegaconf import OmegaConf

    beta_schedule = _cfg(scheduler_config, "beta_schedule", "scaled_linear")
    if beta_schedule not in LDM_BETA_SCHEDULES:
        raise LdmExportError(
            f"beta_schedule {beta_schedule!r} has no LDM equivalent; expected one of {sorted(LDM_BETA_SCHEDULES)}"
        )
    prediction = _cfg(scheduler_config, "prediction_type", "epsilon")
    if prediction not in LDM_PARAMETERIZATION:
        raise LdmExportError(
            f"prediction_type {prediction!r} has no LDM equivalent; expected one of {sorted(LDM_PARAMETERIZATION)}"
        )
    vae_levels = len(_cfg(vae_config, "block_out_channels"))
    latent_size = _cfg(vae_config, "sample_size") // 2 ** (vae_levels - 1)

    params: dict[str, Any] = {
        "linear_start": _cfg(scheduler_config, "beta_start"),
        "linear_end": _cfg(scheduler_config, "beta_end"),
        "num_timesteps_cond": 1,
        "log_every_t": 200,
        "timesteps": _cfg(scheduler_config, "num_train_timesteps"),
        "first_stage_key": "jpg",
        "cond_stage_key": "txt",
        "image_size": latent_size,
        "channels": _cfg(vae_config, "latent_channels"),
        "cond_stage_trainable": False,
        "conditioning_key": "crossattn",
        "monitor": "val/loss_simple_ema",
        "scale_factor": float(scaling_factor),
        "use_ema": False,
    }
    if beta_schedule != "scaled_linear":
        params["beta_schedule"] = LDM_BETA_SCHEDULES[beta_schedule]
    if prediction != "epsilon":
        params["parameterization"] = LDM_PARAMETERIZATION[prediction]
    cond_stage: dict[str, Any] = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"}
    if text_config is not None:
        cond_stage["params"] = {"text_config": dict(text_config)}
    params["unet_config"] = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": _unet_params(unet_config)}
    params["first_stage_config"] = {"target": "ldm.models.autoencoder.AutoencoderKL", "params": _vae_params(vae_config)}
    params["cond_stage_config"] = cond_stage
    document = {"model": {"base_learning_rate": 1.0e-04, "target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": params}}
    return OmegaConf.to_yaml(OmegaConf.create(_plain(document)))
