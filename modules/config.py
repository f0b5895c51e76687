"""Typed settings: paths, memory mode, cache sizes, limits and defaults.

Settings come from three places, later ones winning: the defaults below, ``config.json`` in the
data directory, and command-line flags. They are one immutable object handed to whatever needs
it; a change makes a new object (``Settings.model_copy(update=...)``) and is saved explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modules.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = ROOT / "configs"
# A1111's largest token merging ratio (modules.token_merging); tomesd merges at most 3/4 of the
# tokens (its 2x2 strides), so a ratio above 0.75 acts as 0.75
TOKEN_MERGING_MAX = 0.9


class Settings(BaseModel):
    """Everything that can be configured. Field names follow A1111's option names where one exists."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    data_dir: Path = ROOT
    ckpt_dirs: list[Path] = Field(default_factory=list, description="extra folders scanned for checkpoints (--ckpt-dir)")
    outdir_txt2img_samples: str = "outputs/txt2img-images"
    outdir_img2img_samples: str = "outputs/img2img-images"
    outdir_extras_samples: str = "outputs/extras-images"
    samples_filename_pattern: str = "[number]-[seed]"
    save_to_dirs: bool = True
    samples_save: bool = True
    sd_model_checkpoint: str | None = None
    sd_vae: str = "Automatic"
    lora_dir: str = Field("models/Lora", description="LoRA files for <lora:name:weight> in prompts (read at start-up)")
    embeddings_dir: str = Field("embeddings", description="textual-inversion embeddings for prompts (read at start-up)")
    sd_checkpoints_limit: int = Field(2, ge=1, le=16, description="checkpoints kept in RAM")
    sd_checkpoints_max_ram_gb: float | None = Field(None, gt=0)
    reserve_vram_gb: float = Field(1.0, ge=0)
    device: str = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    attention: Literal["auto", "sdpa", "xformers"] = "auto"
    vae_precision: Literal["auto", "fp32"] = Field(
        "auto", description="the VAE's dtype: auto = the precision's, except fp32 where that measured better"
                            " (bench/README.md); fp32 = always fp32 (--no-half-vae)")
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="UNet, VAE and ControlNet weights in channels_last memory format; auto = where it measured"
                            " faster (bf16 on the CPU)")
    compile_unet: bool = Field(False, description="torch.compile the UNet (--compile): faster steps after a slow first"
                                                  " call per model and image size")
    # A1111's token merging options (modules.token_merging): faster attention, changed images; 0 = off
    token_merging_ratio: float = Field(0.0, ge=0.0, le=TOKEN_MERGING_MAX, description="share of tokens merged in the UNet's"
                                       " first attention level (ToMe); 0 = off")
    token_merging_ratio_img2img: float = Field(0.0, ge=0.0, le=TOKEN_MERGING_MAX, description="the same for img2img, inpainting"
                                               " and outpainting; 0 = token_merging_ratio")
    token_merging_ratio_hr: float = Field(0.0, ge=0.0, le=TOKEN_MERGING_MAX, description="the same for the hires fix's second"
                                          " pass; 0 = the first pass's")
    memory_mode: Literal["normal", "medvram", "lowvram"] = "normal"
    vae_tiling: bool = False
    vae_slicing: bool = False
    show_progress_every_n_steps: int = Field(5, ge=0, description="live preview interval, 0 = off")
    # A1111 options the HTTP API honours (clients set them through POST /sdapi/v1/options)
    CLIP_stop_at_last_layers: int = Field(1, ge=1, le=12, description="the API's clip_skip when a request gives none")
    samples_format: Literal["png", "jpg", "jpeg", "webp"] = Field("png", description="format of the API's images")
    enable_pnginfo: bool = Field(True, description="the API's images carry their infotext")
    # A1111's sampler parameters (modules.samplers.SamplerSettings); a request's eta / s_* fields override them
    eta_noise_seed_delta: int = Field(0, ge=0, le=2**32 - 1, description="A1111's ENSD: added to the seeds of"
                                                                         " ancestral samplers' step noise")
    eta_ancestral: float = Field(1.0, ge=0.0, le=10.0, description="noise amount of ancestral and SDE samplers")
    eta_ddim: float = Field(0.0, ge=0.0, le=10.0, description="noise amount of DDIM (0: deterministic)")
    s_churn: float = Field(0.0, ge=0.0, le=100.0, description="Karras' stochastic churn (Euler, Heun, DPM2)")
    s_tmin: float = Field(0.0, ge=0.0, le=1000.0, description="churn only from this sigma up")
    s_tmax: float = Field(0.0, ge=0.0, le=1000.0, description="churn only up to this sigma (0: no bound)")
    s_noise: float = Field(1.0, ge=0.0, le=10.0, description="scale of the noise churn and ancestral steps add")
    sigma_min: float = Field(0.0, ge=0.0, le=1000.0, description="schedule's lowest sigma (0: the model's)")
    sigma_max: float = Field(0.0, ge=0.0, le=1000.0, description="schedule's highest sigma (0: the model's)")
    rho: float = Field(0.0, ge=0.0, le=100.0, description="Karras/Polyexponential rho (0: the schedule's own)")
    always_discard_next_to_last_sigma: bool = Field(False, description="A1111's 'always discard next-to-last sigma'")
    sgm_noise_multiplier: bool = Field(False, description="initial noise scaled as SDXL's reference code")
    uni_pc_order: int = Field(3, ge=1, le=5, description="UniPC's order")
    default_sampler: str = "DPM++ 2M"  # with the Automatic schedule: Karras, as A1111 since 1.6
    default_steps: int = Field(20, ge=1, le=150)
    default_width: int = Field(0, ge=0, le=2048, multiple_of=8,
                               description="the tabs' width at page load; 0 = the checkpoint's native size")
    default_height: int = Field(0, ge=0, le=2048, multiple_of=8,
                                description="the tabs' height at page load; 0 = the checkpoint's native size")
    max_queue: int = Field(64, ge=1, le=10_000)
    batch_queue_jobs: bool = Field(False, description="batched queue: waiting txt2img jobs with the same model, size,"
                                                      " sampler, steps and CFG run as one batch (modules.job_batching)")
    batch_queue_max: int = Field(4, ge=1, le=64, description="most images in one batch of the batched queue")
    max_side: int = Field(2048, ge=64, le=8192)
    max_batch_images: int = Field(64, ge=1)
    max_input_pixels: int = Field(4096 * 4096, ge=64 * 64, le=16384 * 16384,
                                  description="largest input image (width x height) a client may send; checked"
                                              " from the header before decoding")
    extensions_dir: str = Field("extensions", description="folder of A1111-style extensions (--extensions-dir)")
    disabled_extensions: list[str] = Field(default_factory=list, description="extensions not loaded (Extensions tab)")
    extension_options: dict[str, Any] = Field(default_factory=dict, description="extensions' own options (on_ui_settings)")
    max_queue_mb: int = Field(2048, ge=16, description="memory the queued jobs' inputs may hold together (MiB);"
                                                       " a request beyond it is answered 429")

    def path(self, relative: str | Path) -> Path:
        """A path inside the data directory (absolute paths are kept)."""
        p = Path(relative)
        return p if p.is_absolute() else self.data_dir / p

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def checkpoint_dirs(self) -> list[Path]:
        return [self.models_dir / "Stable-diffusion", *self.ckpt_dirs]

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "config.json"


class SettingsError(ValueError):
    """A setting has a bad value; the message names the setting and what is allowed.

    ``field`` is the setting's name when one setting is at fault (None: several, or the file)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(x) for x in e["loc"]) or "settings"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def make_settings(**values) -> Settings:
    """Build settings from values, turning validation errors into one readable SettingsError."""
    try:
        return Settings(**values)
    except ValidationError as err:
        raise SettingsError(f"invalid settings: {_describe(err)}") from None


def load_settings(data_dir: Path = ROOT, overrides: dict | None = None) -> Settings:
    """Defaults, then ``data_dir/config.json`` (if present), then ``overrides`` (CLI flags)."""
    values: dict = {}
    cfg = data_dir / "config.json"
    if cfg.exists():
        try:
            values.update(json.loads(cfg.read_text()))
        except json.JSONDecodeError as err:
            raise SettingsError(f"{cfg} is not valid JSON ({err}); fix or delete it") from None
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values["data_dir"] = data_dir
    return make_settings(**values)


def save_settings(settings: Settings) -> None:
    """Write ``config.json`` atomically (everything but data_dir)."""
    data = json.loads(settings.model_dump_json(exclude={"data_dir"}))
    write_text_atomic(settings.config_file, json.dumps(data, indent=2))
