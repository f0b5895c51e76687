"""Build a ready diffusers pipeline from a checkpoint: single file (original layout) or folder.

One routine per source, top to bottom:

1. read the tensors safely (``checkpoints.read_state_dict``) and detect the architecture;
2. take that architecture's shipped configs (``configs/<arch>/``), or build them from the
   checkpoint's companion ``NAME.yaml`` (A1111's behaviour);
3. convert the keys with diffusers' converters and load every component with ``strict=True``,
   so a key the converter did not map is an error, never a silent random weight;
4. assemble the pipeline with the shipped CLIP tokenizer. Nothing is fetched from a hub.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from modules.checkpoints import UNET_IN_KEY, CheckpointError, CheckpointInfo, detect_architecture, read_state_dict
from modules.config import CONFIGS_DIR
from modules.devices import cast_components

TOKENIZER_DIR = CONFIGS_DIR / "tokenizer"


@dataclass
class LoadedModel:
    """A loaded checkpoint: its pipeline and what the rest of the app needs to know about it."""

    info: CheckpointInfo
    arch: str
    pipe: Any  # StableDiffusionPipeline or StableDiffusionXLPipeline
    short_hash: str | None
    load_seconds: float = 0.0
    vae_name: str | None = None  # a VAE file from models/VAE replacing the checkpoint's own
    vae_hash: str | None = None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        """The resolution the model was trained at (e.g. 512 for SD 1.5, 64 for the bundled model)."""
        return int(self.pipe.unet.config.sample_size) * self.vae_scale_factor

    @property
    def is_sdxl(self) -> bool:
        """SDXL base or refiner: two-encoder (or bigG-only) prompts, pooled text and size conditioning."""
        return self.arch in ("sdxl", "sdxl-refiner")

    @property
    def is_refiner(self) -> bool:
        """An SDXL refiner: bigG only, aesthetic-score time ids."""
        return self.arch == "sdxl-refiner"

    def size_bytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for m in self.modules()
            for t in list(m.parameters()) + list(m.buffers())
        )

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in self.pipe.components.values() if isinstance(m, torch.nn.Module)]


@dataclass(frozen=True)
class ArchConfigs:
    """diffusers configs of every component of one architecture."""

    unet: dict
    vae: dict
    text_encoder: dict
    scheduler: dict
    pad_token: str = "<|endoftext|>"
    text_encoder_2: dict | None = None
    pad_token_2: str | None = None


def _read_json(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


@functools.lru_cache(maxsize=8)
def shipped_configs(arch: str) -> ArchConfigs:
    """The configs shipped in ``configs/<arch>/`` (copied from the public model repositories), read
    once per process (callers copy before changing: ``configs_from_yaml`` builds new dicts)."""
    d = CONFIGS_DIR / arch
    if not d.is_dir():
        raise CheckpointError(f"no shipped configs for architecture {arch!r} (expected folder {d})")
    meta = _read_json(d / "arch.json") if (d / "arch.json").exists() else {}
    te2 = d / "text_encoder_2" / "config.json"
    return ArchConfigs(
        unet=_read_json(d / "unet" / "config.json"),
        vae=_read_json(d / "vae" / "config.json"),
        text_encoder=_read_json(d / "text_encoder" / "config.json") if (d / "text_encoder").is_dir() else {},
        scheduler=_read_json(d / "scheduler" / "scheduler_config.json"),
        pad_token=meta.get("pad_token", "<|endoftext|>"),
        text_encoder_2=_read_json(te2) if te2.exists() else None,
        pad_token_2=meta.get("pad_token_2"),
    )


def load_yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:
        raise CheckpointError(f"companion config {path.name} is not valid YAML: {err}") from None
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise CheckpointError(f"companion config {path.name} has no 'model' section (expected an LDM config)")
    return cfg


def configs_from_yaml(yaml_cfg: dict, state: dict, base: ArchConfigs) -> ArchConfigs:
    """Configs from an A1111-style companion yaml, over the architecture's shipped defaults."""
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    params = yaml_cfg["model"].get("params", {})
    latent_size = int(params.get("image_size", base.unet.get("sample_size", 64)))
    try:
        unet = {**base.unet, **create_unet_diffusers_config_from_ldm(yaml_cfg, state)}
        vae = {**base.vae, **create_vae_diffusers_config_from_ldm(yaml_cfg, state)}
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"companion yaml is missing a field diffusers needs: {err}") from None
    unet["sample_size"] = latent_size
    vae["sample_size"] = latent_size * 2 ** (len(vae["block_out_channels"]) - 1)
    cond = (params.get("cond_stage_config") or {}).get("params") or {}
    text = {**base.text_encoder, **(cond.get("text_config") or {})}
    sched = dict(base.scheduler)
    for yaml_key, key in (("linear_start", "beta_start"), ("linear_end", "beta_end"), ("timesteps", "num_train_timesteps")):
        if yaml_key in params:
            sched[key] = params[yaml_key]
    sched["prediction_type"] = "v_prediction" if params.get("parameterization") == "v" else "epsilon"
    return ArchConfigs(unet, vae, text, sched, base.pad_token, base.text_encoder_2, base.pad_token_2)


def in_dtype(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The floating-point tensors of ``state`` in ``dtype`` (None: as they are); others unchanged."""
    if dtype is None:
        return state
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str,
                 dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Assign ``state`` to an empty ``module`` (every key must match), its floats in ``dtype``."""
    expected = set(module.state_dict())
    state = {k: v for k, v in state.items() if k in expected or not k.endswith("position_ids")}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: the checkpoint does not match its detected architecture "
            f"({len(missing)} missing keys, e.g. {sorted(missing)[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {sorted(unexpected)[:3]})"
        )
    module.load_state_dict(in_dtype(state, dtype), strict=True, assign=True)
    return module


def _empty(build):
    """A module built with its parameters on the meta device and no weight initialisation (the
    loaders assign every tensor): what would otherwise cost more than reading the weights."""
    from accelerate import init_empty_weights
    from diffusers.models.modeling_utils import no_init_weights as diffusers_no_init
    from transformers.initialization import no_init_weights as transformers_no_init

    with init_empty_weights(include_buffers=False), diffusers_no_init(), transformers_no_init():
        return build()


@functools.lru_cache(maxsize=4)
def make_tokenizer(pad_token: str = "<|endoftext|>"):
    """The shipped CLIP tokenizer, built once per process and pad token (0.3 s each) and shared by
    every pipeline: nothing in Easel changes a tokenizer (embeddings replace vectors, not tokens)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), model_max_length=77, pad_token=pad_token
    )


def _clip_state(state: dict, prefix_candidates: tuple[str, ...]) -> dict:
    """Text-encoder tensors under the first matching prefix, with that prefix removed."""
    for prefix in prefix_candidates:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    raise CheckpointError(f"no text encoder tensors under {prefix_candidates}")


def _text_keys_like(module: torch.nn.Module, state: dict) -> dict:
    """Match the module's key style: transformers 5 ``CLIPTextModel`` has no ``text_model.`` prefix,
    ``CLIPTextModelWithProjection`` and older checkpoints have it."""
    wrapped = any(k.startswith("text_model.") for k in module.state_dict())
    out = {}
    for key, value in state.items():
        bare = key.removeprefix("text_model.")
        out[f"text_model.{bare}" if wrapped and bare != "text_projection.weight" else bare] = value
    return out


def _load_text(module: torch.nn.Module, state: dict, what: str, dtype: torch.dtype | None = None) -> torch.nn.Module:
    return _load_strict(module, _text_keys_like(module, state), what, dtype)


PART_NAMES = ("unet", "vae", "text_encoder", "text_encoder_2")  # the torch components of a pipeline


def build_part(part: str, state: dict, arch: str, cfg: ArchConfigs, dtype: torch.dtype | None = None) -> Any:
    """One torch component (``PART_NAMES``), loaded strictly from an original-layout state dict (the
    whole checkpoint's, or only that component's tensors), its floats in ``dtype`` (None: the file's).
    None when the architecture has no such component (SD 1.x has no ``text_encoder_2``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if arch not in ARCH_NATIVE_SIZES:
        raise CheckpointError(f"unknown architecture {arch!r}")
    if part == "unet":
        unet = _empty(lambda: UNet2DConditionModel.from_config(cfg.unet))
        return _load_strict(unet, convert_ldm_unet_checkpoint(state, unet.config), "UNet", dtype)
    if part == "vae":
        vae = _empty(lambda: AutoencoderKL.from_config(cfg.vae))
        return _load_strict(vae, convert_ldm_vae_checkpoint(state, vae.config), "VAE", dtype)
    if part == "text_encoder":
        if arch == "sdxl-refiner":
            return None
        te = _empty(lambda: CLIPTextModel(CLIPTextConfig(**cfg.text_encoder)))
        if arch in ("sd2", "sd2-base"):
            return _load_text(te, convert_open_clip_checkpoint(te, state), "text encoder", dtype)
        prefix = "conditioner.embedders.0.transformer." if arch == "sdxl" else "cond_stage_model.transformer."
        return _load_text(te, _clip_state(state, (prefix,)), "text encoder", dtype)
    if part == "text_encoder_2":
        if arch not in ("sdxl", "sdxl-refiner"):
            return None
        te2 = _empty(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**cfg.text_encoder_2)))
        prefix = "conditioner.embedders.1.model." if arch == "sdxl" else "conditioner.embedders.0.model."  # refiner: bigG only
        return _load_text(te2, convert_open_clip_checkpoint(te2, state, prefix=prefix), "text encoder 2", dtype)
    raise ValueError(f"unknown component {part!r}; expected one of {', '.join(PART_NAMES)}")


def light_components(arch: str, cfg: ArchConfigs) -> dict[str, Any]:
    """The components that hold no weights: the scheduler and the shared tokenizers."""
    from diffusers import EulerDiscreteScheduler

    comps: dict[str, Any] = {"scheduler": EulerDiscreteScheduler.from_config(cfg.scheduler)}
    comps["tokenizer"] = None if arch == "sdxl-refiner" else make_tokenizer(cfg.pad_token)
    if arch in ("sdxl", "sdxl-refiner"):
        comps["tokenizer_2"] = make_tokenizer(cfg.pad_token_2 or "!")
    return comps


def build_components(state: dict, arch: str, cfg: ArchConfigs, dtype: torch.dtype | None = None,
                     vae_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Every pipeline component, loaded strictly from an original-layout state dict.

    With ``dtype`` every component's floats come in that dtype whatever the file's (the VAE in
    ``vae_dtype`` when given); None keeps the file's dtypes.
    """
    comps = light_components(arch, cfg)
    for part in PART_NAMES:
        module = build_part(part, state, arch, cfg, (vae_dtype or dtype) if part == "vae" else dtype)
        if module is not None or part == "text_encoder":
            comps[part] = module
    return comps


def assemble_pipeline(arch: str, comps: dict[str, Any]):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if arch == "sdxl":
        return StableDiffusionXLPipeline(**comps)
    if arch == "sdxl-refiner":
        from diffusers import StableDiffusionXLImg2ImgPipeline

        return StableDiffusionXLImg2ImgPipeline(**comps, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    return StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def load_single_file(info: CheckpointInfo, dtype: torch.dtype | None = None,
                     vae_dtype: torch.dtype | None = None) -> tuple[str, Any]:
    """(architecture, pipeline) from a single-file checkpoint and its companion yaml, if any."""
    # converted while read, unless the VAE keeps another dtype (fp16 -> bf16 -> fp32 would lose bits)
    same = vae_dtype is None or vae_dtype == dtype
    state = read_state_dict(info.path, dtype if same else None)
    arch, cfg = single_file_configs(info, state)
    return arch, assemble_pipeline(arch, build_components(state, arch, cfg, dtype, vae_dtype))


def single_file_configs(info: CheckpointInfo, state: dict[str, Any]) -> tuple[str, Any]:
    """(architecture, component configs) of a single file from its keys (tensors or their shapes) and
    its companion yaml, if any: the shipped configs, the yaml's values over them, and the UNet's input
    channels as the weights have them (SDXL inpainting: 9 channels on SDXL's config)."""
    yaml_cfg = load_yaml(info.config_path) if info.config_path else None
    arch = detect_architecture(state, yaml_cfg)
    cfg = shipped_configs(arch)
    if yaml_cfg is not None:
        cfg = configs_from_yaml(yaml_cfg, state, cfg)
    in_channels = int(state[UNET_IN_KEY].shape[1])
    if cfg.unet.get("in_channels") != in_channels:
        cfg = replace(cfg, unet={**cfg.unet, "in_channels": in_channels})
    return arch, cfg


def arch_of_pipeline(pipe) -> str:
    unet = pipe.unet.config
    if getattr(unet, "addition_embed_type", None) == "text_time":
        return "sdxl-refiner" if getattr(pipe, "text_encoder", None) is None else "sdxl"
    if unet.cross_attention_dim == 1024:
        return "sd2" if pipe.scheduler.config.get("prediction_type") == "v_prediction" else "sd2-base"
    return "sd1-inpaint" if unet.in_channels == 9 else "sd1"


def load_diffusers_folder(info: CheckpointInfo, dtype: torch.dtype | None = None,
                          vae_dtype: torch.dtype | None = None) -> tuple[str, Any]:
    """(architecture, pipeline) from a diffusers folder. Without ``dtype`` its components come as
    diffusers and transformers choose (transformers keeps the file's dtype: an fp16 text encoder
    beside an fp32 UNet); the caller casts them."""
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(
            info.path, local_files_only=True, safety_checker=None, requires_safety_checker=False,
            **({"torch_dtype": dtype} if dtype is not None else {}),
        )
    except Exception as err:
        raise CheckpointError(f"diffusers folder {info.name} could not be loaded: {err}") from None
    return arch_of_pipeline(pipe), pipe


def load_checkpoint(info: CheckpointInfo, short_hash: str | None, dtype: torch.dtype = torch.float32,
                    vae_dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a checkpoint onto the CPU, every component in ``dtype`` (the VAE in ``vae_dtype`` when
    given) whatever dtypes its files hold; device placement is the model manager's job."""
    t0 = time.perf_counter()
    loader = load_single_file if info.kind == "single" else load_diffusers_folder
    arch, pipe = loader(info, dtype, vae_dtype)
    cast_components(pipe.components, dtype, vae_dtype)  # mixed-dtype files, modules a loader kept in fp32
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(info, arch, pipe, short_hash, time.perf_counter() - t0)


ARCH_NATIVE_SIZES = {"sd1": 512, "sd1-inpaint": 512, "sd2": 768, "sd2-base": 512, "sdxl": 1024, "sdxl-refiner": 1024}


def native_size_hint(info: CheckpointInfo) -> int:
    """The resolution a checkpoint was trained at, read from its configs without loading weights
    (for UI defaults: the bundled model is 64, SD 1.5 512, SDXL 1024)."""
    try:
        if info.kind == "diffusers":
            unet = _read_json(info.path / "unet" / "config.json")
            vae = _read_json(info.path / "vae" / "config.json")
            return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        if info.config_path is not None:
            params = load_yaml(info.config_path)["model"]["params"]
            ch_mult = params["first_stage_config"]["params"]["ddconfig"]["ch_mult"]
            return int(params["image_size"]) * 2 ** (len(ch_mult) - 1)
        if info.path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(info.path), "pt") as f:
                keys = set(f.keys())
            sdxl = any(k.startswith(("conditioner.embedders.1.", "conditioner.embedders.0.model.")) for k in keys)
            return 1024 if sdxl else 512
    except (OSError, KeyError, TypeError, ValueError, CheckpointError):
        pass
    return 512


def vae_file_state(path: Path, vae_config: Any) -> dict[str, torch.Tensor]:
    """The tensors of a standalone VAE file (``models/VAE``) in diffusers' key names, checked against a
    VAE config: the original (LDM) layout, as A1111 users download it, or diffusers' (``encoder.down_blocks.*``,
    e.g. the ``diffusion_pytorch_model.safetensors`` of a VAE repo on the hub)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = read_state_dict(path)
    is_diffusers = any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state)
    is_ldm = not is_diffusers and any(
        k.startswith(("encoder.", "first_stage_model.", "vae.")) and "conv_in" in k for k in state)
    converted = convert_ldm_vae_checkpoint(state, vae_config) if is_ldm else state
    expected = set(_empty(lambda: AutoencoderKL.from_config(vae_config)).state_dict())
    missing = expected - set(converted)
    if missing:
        raise CheckpointError(
            f"VAE {path.name} does not fit this model ({len(missing)} missing keys, e.g. {sorted(missing)[:3]})"
        )
    return converted


def build_vae_from_file(path: Path, vae_config: Any, dtype: torch.dtype | None = None) -> Any:
    """A VAE of ``vae_config`` with the weights of a standalone VAE file, its floats in ``dtype``."""
    from diffusers import AutoencoderKL

    vae = _empty(lambda: AutoencoderKL.from_config(vae_config))
    return _load_strict(vae, vae_file_state(path, vae.config), f"VAE {path.name}", dtype)


def load_vae_file(path: Path, vae) -> None:
    """Replace a pipeline VAE's weights with a standalone VAE file (copied into the VAE's own dtype)."""
    vae.load_state_dict(vae_file_state(path, vae.config), strict=True)
