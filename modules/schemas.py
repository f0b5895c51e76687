"""Typed requests and results, with AUTOMATIC1111's field names and meanings.

Every client (CLI, web UI, HTTP API) builds one of these from named fields and hands it to the
job queue; the processing routines take it and return a ``GenerationResult``. Unknown fields are
ignored (as A1111's API does); wrongly typed or out-of-range fields fail validation with the
field named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modules.config import TOKEN_MERGING_MAX
from modules.images import BYTES_PER_PIXEL

MAX_SEED = 2**32 - 1


class RequestError(ValueError):
    """A request cannot be run as given; the message says which field and what would be right."""


def non_finite_at(value: Any, where: str = "") -> str | None:
    """Where the first NaN or +-Infinity sits in a JSON-like ``value`` (``"[2]"``, ``".cfg"``, ``""``
    for ``value`` itself), or None when every number in it is finite. Other objects are not searched."""
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    if isinstance(value, dict):
        items = ((f".{key}", item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for step, item in items:
        found = non_finite_at(item, where + step)
        if found is not None:
            return found
    return None


class RequestModel(BaseModel):
    """Base of every request model: numbers must be finite.

    Python's json (so FastAPI) reads ``NaN``, ``Infinity`` and ``1e999`` as floats, and pydantic
    takes them for a ``float`` field unless ``allow_inf_nan=False``. Here they fail validation with
    the field named (a 422 over HTTP), also inside free-form fields (``override_settings``,
    ``script_args``, ...). Subclasses set the rest of their ``model_config``; this part is merged in.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _finite_inside(cls, v: Any) -> Any:
        where = non_finite_at(v) if isinstance(v, (dict, list, tuple)) else None
        if where is not None:
            raise ValueError(f"holds a number that is not finite at {where or 'its top'}: NaN and Infinity are not"
                             " accepted, send a finite number")
        return v


def describe_validation_error(err: ValidationError) -> str:
    """One line naming each bad field, e.g. ``width: must be a multiple of 8 (got 100)``."""
    parts = []
    for e in err.errors():
        where = ".".join(str(x) for x in e["loc"]) or "request"
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
CONTROL_RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
MAX_CONTROLNET_UNITS = 3


def _index_or_name(v: Any, names: tuple[str, ...], field_name: str) -> int:
    """An enum field given as its index (0, 1, 2) or its name ("Crop and Resize", any case)."""
    if isinstance(v, bool):
        raise ValueError(f"{field_name} must be one of {list(names)} or 0..{len(names) - 1} (got {v!r})")
    if isinstance(v, int):
        if 0 <= v < len(names):
            return v
    elif isinstance(v, str):
        lowered = [n.lower() for n in names]
        if v.strip().lower() in lowered:
            return lowered.index(v.strip().lower())
        if v.strip().isdigit() and int(v) < len(names):
            return int(v)
    raise ValueError(f"must be one of {list(names)} or 0..{len(names) - 1} (got {v!r})")


class ControlNetUnit(RequestModel):
    """One ControlNet unit, with the field names of sd-webui-controlnet's API.

    ``image`` is a PIL image (the HTTP API decodes base64 first), or None to use the request's
    init image (img2img). ``module`` is the preprocessor ("none" uses the image as the map);
    ``threshold_a``/``threshold_b`` are the preprocessor's two parameters, -1 for its defaults
    (canny: low/high thresholds). ``resize_mode`` and ``control_mode`` take the index or the name.
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    enabled: bool = True
    module: str = "none"
    model: str = "None"
    weight: float = Field(1.0, ge=0.0, le=2.0)
    image: Any = Field(None, description="PIL image; None = the init image (img2img)")
    resize_mode: int = Field(1, description="0 Just Resize, 1 Crop and Resize, 2 Resize and Fill (or the name)")
    low_vram: bool = False
    processor_res: int = Field(512, ge=-1, le=4096, description="preprocessor resolution; -1 = 512")
    threshold_a: float = Field(-1.0, description="preprocessor parameter a; -1 = its default")
    threshold_b: float = Field(-1.0, description="preprocessor parameter b; -1 = its default")
    guidance_start: float = Field(0.0, ge=0.0, le=1.0, description="fraction of the steps where the unit starts")
    guidance_end: float = Field(1.0, ge=0.0, le=1.0, description="fraction of the steps where the unit stops")
    control_mode: int = Field(0, description="0 Balanced, 1 My prompt is more important, 2 ControlNet is more important")
    pixel_perfect: bool = False
    save_detected_map: bool = Field(True, description="the A1111 API appends the unit's detected map to images")

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _resize_mode(cls, v: Any) -> int:
        return _index_or_name(v, CONTROL_RESIZE_MODES, "resize_mode")

    @field_validator("control_mode", mode="before")
    @classmethod
    def _control_mode(cls, v: Any) -> int:
        return _index_or_name(v, CONTROL_MODES, "control_mode")

    @field_validator("guidance_end")
    @classmethod
    def _end_after_start(cls, v: float, info) -> float:
        start = info.data.get("guidance_start", 0.0)
        if v < start:
            raise ValueError(f"must not be below guidance_start ({start}); got {v}")
        return v


class ScriptCall(BaseModel):
    """An extension script chosen by title (A1111's ``script_name`` + ``script_args``)."""

    title: str = Field(..., min_length=1, max_length=200)
    args: list[Any] = Field(default_factory=list)


class GenerationRequest(RequestModel):
    """Fields shared by every generation mode (A1111's StableDiffusionProcessing)."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 = random")
    subseed: int = Field(-1, ge=-1, le=MAX_SEED, description="variation seed, -1 = random")
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_h: int = Field(-1, ge=-1, le=8192, description="the noise as if made at this height; -1/0 = off")
    seed_resize_from_w: int = Field(-1, ge=-1, le=8192, description="the noise as if made at this width; -1/0 = off")
    sampler_name: str | None = Field(None, description="None: the default sampler from the settings")
    sampler_index: str | None = Field(None, description="old name of sampler_name, still accepted")
    scheduler: str | None = Field(None, description="schedule type: Automatic, Uniform, Karras, ...")
    eta: float | None = Field(None, ge=0.0, le=10.0, description="noise amount of ancestral, SDE and DDIM"
                              " samplers; None: the setting (eta_ancestral, or eta_ddim for DDIM)")
    s_churn: float | None = Field(None, ge=0.0, le=100.0, description="Karras' churn (Euler, Heun, DPM2); None: the setting")
    s_tmin: float | None = Field(None, ge=0.0, le=1000.0, description="churn from this sigma up; None: the setting")
    s_tmax: float | None = Field(None, ge=0.0, le=1000.0, description="churn up to this sigma (0: no bound); None: the setting")
    s_noise: float | None = Field(None, ge=0.0, le=10.0, description="scale of added noise; None: the setting")
    s_min_uncond: float = Field(0.0, ge=0.0, le=1000.0, description="A1111's NGMS: below this sigma every other"
                                " model call skips the negative prompt's prediction (faster, CFG 1 there); 0: off")
    token_merging_ratio: float | None = Field(None, ge=0.0, le=TOKEN_MERGING_MAX,
                                              description="A1111's token merging (ToMe) for this request;"
                                                          " None: the setting (modules.token_merging)")
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=100, description="batch count")
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0)
    width: int | None = Field(None, ge=8, le=8192, description="None: the model's native size")
    height: int | None = Field(None, ge=8, le=8192, description="None: the model's native size")
    clip_skip: int = Field(1, ge=1, le=12)
    tiling: bool = Field(False, description="seamless tiling: the UNet and VAE pad circularly (modules.tiling)")
    sd_model_checkpoint: str | None = Field(None, description="run on this checkpoint (queued switch)")
    sd_vae: str | None = Field(None, description='VAE file from models/VAE, "Automatic" or "None" (the checkpoint\'s own)')
    save_images: bool = True
    send_images: bool = True
    override_settings: dict[str, Any] = Field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    controlnet_units: list[ControlNetUnit] = Field(
        default_factory=list, max_length=MAX_CONTROLNET_UNITS, description="ControlNet units (disabled ones are ignored)"
    )
    extension_script: ScriptCall | None = Field(None, description="an extension's selectable script (by title) and its args")
    extension_alwayson: dict[str, list[Any]] = Field(
        default_factory=dict, description="args of extensions' always-on scripts, by title (others get their UI defaults)")
    refiner_checkpoint: str | None = Field(None, description="a checkpoint that takes over at refiner_switch_at"
                                           " (an SDXL refiner, or any model of the same family); None/\"None\": no refiner")
    refiner_switch_at: float = Field(0.8, gt=0.0, lt=1.0, description="the fraction of the steps after which the"
                                     " refiner takes over (A1111's rule: from the first step past it)")

    @field_validator("refiner_checkpoint")
    @classmethod
    def _no_refiner(cls, v: str | None) -> str | None:
        return None if v is None or v.strip() in ("", "None") else v

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int | None) -> int | None:
        if v is not None and v % 8:
            raise ValueError(f"must be a multiple of 8 (got {v}; nearest: {max(8, round(v / 8) * 8)})")
        return v

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _sane_length(cls, v: str) -> str:
        if len(v) > 20_000:
            raise ValueError(f"is {len(v)} characters long; at most 20000 are accepted")
        return v

    def effective_sampler(self, default: str) -> str:
        return self.sampler_name or self.sampler_index or default


SAME_CHECKPOINT = "Use same checkpoint"  # A1111's hr_checkpoint_name for "the first pass's"


class SoftInpainting(RequestModel):
    """A1111's soft inpainting (its built-in "Soft Inpainting" script), for inpainting with a blurred mask.

    During sampling the original latents are blended into the denoised ones through the soft mask
    raised to ``sigma ** mask_blend_power * mask_blend_scale`` (more of the original at high noise),
    with magnitudes interpolated with ``inpaint_detail_preservation``; the final picture is
    composited through a mask made from how much each place changed (``composite_*``), so
    unchanged places keep the original pixels. Field names are A1111's; the UI labels are in
    ``modules.soft_inpainting.INFOTEXT_KEYS``.
    """

    model_config = ConfigDict(extra="ignore")

    enabled: bool = True
    mask_blend_power: float = Field(1.0, ge=0.0, le=8.0, description="Schedule bias")
    mask_blend_scale: float = Field(0.5, ge=0.0, le=8.0, description="Preservation strength")
    inpaint_detail_preservation: float = Field(4.0, ge=1.0, le=32.0, description="Transition contrast boost")
    composite_mask_influence: float = Field(0.0, ge=0.0, le=1.0, description="Mask influence")
    composite_difference_threshold: float = Field(0.5, ge=0.0, le=8.0, description="Difference threshold")
    composite_difference_contrast: float = Field(2.0, ge=0.0, le=8.0, description="Difference contrast")


RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
INPAINTING_FILLS = ("fill", "original", "latent noise", "latent nothing")
OUTPAINT_DIRECTIONS = ("left", "right", "up", "down")
OUTPAINT_FILLS = ("edge", "noise", "solid")


class Txt2ImgRequest(GenerationRequest):
    """A1111's txt2img, with its hires fix: first pass at width x height, upscale, img2img pass."""

    mode: str = Field("txt2img", frozen=True)
    enable_hr: bool = False
    denoising_strength: float = Field(0.7, ge=0.0, le=1.0, description="strength of the hires pass")
    hr_scale: float = Field(2.0, ge=1.0, le=8.0)
    hr_upscaler: str = Field("Latent", description="a name from modules.upscalers.list_upscalers")
    hr_second_pass_steps: int = Field(0, ge=0, le=150, description="0 = the same as steps")
    hr_resize_x: int = Field(0, ge=0, le=8192, description="0 = from hr_scale")
    hr_resize_y: int = Field(0, ge=0, le=8192, description="0 = from hr_scale")
    hr_sampler_name: str | None = Field(None, description="None: the first pass's sampler")
    hr_scheduler: str | None = Field(None, description="None: the first pass's schedule type")
    hr_prompt: str = Field("", description="empty: the first pass's prompt")
    hr_negative_prompt: str = Field("", description="empty: the first pass's negative prompt")
    token_merging_ratio_hr: float | None = Field(None, ge=0.0, le=TOKEN_MERGING_MAX,
                                                 description="token merging in the hires pass; None: the"
                                                             " setting, else the first pass's")
    hr_checkpoint_name: str | None = Field(None, description="the hires pass runs on this checkpoint (same family);"
                                           " None/\"\"/\"Use same checkpoint\": the first pass's")

    @field_validator("hr_checkpoint_name")
    @classmethod
    def _same_checkpoint(cls, v: str | None) -> str | None:
        return None if v is None or v.strip() in ("", "None", SAME_CHECKPOINT) else v


class Img2ImgRequest(GenerationRequest):
    """A1111's img2img; with ``mask`` set it is inpainting (a sketch is an img2img of the drawing).

    ``init_images`` and ``mask`` hold PIL images (the HTTP API decodes base64 before building the
    request); anything else fails when the job runs, with a RequestError naming the field.
    ``width``/``height`` None: the first init image's size, rounded down to a multiple of 8.
    """

    mode: str = Field("img2img", frozen=True)
    init_images: list[Any] = Field(default_factory=list, description="PIL images; image i of a batch uses init_images[i % len]")
    resize_mode: int = Field(
        0, ge=0, le=3, description="0 Just resize, 1 Crop and resize, 2 Resize and fill, 3 Just resize (latent upscale)"
    )
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0, description="0 keeps the image, 1 ignores it")
    mask: Any = Field(None, description="PIL image, white = repaint; None = plain img2img")
    mask_blur: int = Field(4, ge=0, le=64)
    mask_blur_x: int | None = Field(None, ge=0, le=64, description="horizontal blur of the mask; None: mask_blur")
    mask_blur_y: int | None = Field(None, ge=0, le=64, description="vertical blur of the mask; None: mask_blur")
    latent_mask: Any = Field(None, description="PIL image, white = repaint: used instead of the mask for the latent"
                                               " blend (A1111's latent_mask); None: the blurred mask")
    soft_inpainting: SoftInpainting | None = Field(None, description="A1111's soft inpainting; None: off")
    inpainting_fill: int = Field(0, ge=0, le=3, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(
        True, description="True = 'Only masked': crop the masked region, generate at width x height, paste back"
    )
    inpaint_full_res_padding: int = Field(0, ge=0, le=1024)
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1 = repaint what is NOT masked")
    include_init_images: bool = False
    initial_noise_multiplier: float = Field(1.0, ge=0.0, le=10.0, description="scales the noise added to the init"
                                            " latents (A1111's Noise multiplier for img2img); 1 = unchanged")
    mask_round: bool = Field(True, description="round the latent mask to 0/1, as A1111 does by default; False:"
                                               " the blurred mask's soft edge blends the kept and repainted latents")


class OutpaintRequest(Img2ImgRequest):
    """Extend the canvas of ``init_images[0]`` by ``pixels`` on each side in ``direction``, then
    inpaint the new area (A1111's "Poor man's outpainting" fields, plus how the new area is filled
    before denoising). The generation runs at the new canvas size (width/height are ignored);
    the original pixels come back exactly where they were."""

    mode: str = Field("outpaint", frozen=True)
    pixels: int = Field(64, ge=8, le=2048)
    direction: list[str] = Field(default_factory=lambda: list(OUTPAINT_DIRECTIONS))
    outpaint_fill: str = Field("edge", description="edge (stretch the border), noise, solid")
    fill_color: str = Field("#808080", description="colour of the 'solid' fill")
    denoising_strength: float = Field(0.9, ge=0.0, le=1.0)
    mask_blur: int = Field(8, ge=0, le=64)
    inpainting_fill: int = Field(1, ge=0, le=3)
    inpaint_full_res: bool = False

    @field_validator("pixels")
    @classmethod
    def _pixels_multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (got {v}; nearest: {max(8, round(v / 8) * 8)})")
        return v

    @field_validator("direction")
    @classmethod
    def _known_directions(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if d not in OUTPAINT_DIRECTIONS]
        if bad or not v:
            raise ValueError(f"must be a non-empty list of {', '.join(OUTPAINT_DIRECTIONS)} (got {v})")
        return v

    @field_validator("outpaint_fill")
    @classmethod
    def _known_fill(cls, v: str) -> str:
        if v not in OUTPAINT_FILLS:
            raise ValueError(f"must be one of {', '.join(OUTPAINT_FILLS)} (got {v!r})")
        return v


class ExtrasRequest(RequestModel):
    """A1111's extra-single-image: upscale one image (no diffusion; runs on no model)."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    mode: str = Field("extras", frozen=True)
    image: Any = Field(None, description="PIL image")
    resize_mode: int = Field(0, ge=0, le=1, description="0 scale by upscaling_resize, 1 to upscaling_resize_w x _h")
    upscaling_resize: float = Field(2.0, gt=0.0, le=8.0)
    upscaling_resize_w: int = Field(512, ge=1, le=16384)
    upscaling_resize_h: int = Field(512, ge=1, le=16384)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0.0, ge=0.0, le=1.0)
    show_extras_results: bool = True
    save_images: bool = True
    sd_model_checkpoint: str | None = None
    override_settings: dict[str, Any] = Field(default_factory=dict)


def parse_request(cls: type[BaseModel], data: dict[str, Any]) -> Any:
    """Validate ``data`` into ``cls``; a bad field raises RequestError naming it."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise RequestError(describe_validation_error(err)) from None


@dataclass
class GenerationResult:
    """What a generation returns: images, their infotexts and seeds, and where they were saved."""

    images: list[Any]
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    model_name: str
    model_hash: str | None
    width: int
    height: int
    sampler_name: str
    scheduler: str
    paths: list[Path | str] = field(default_factory=list)  # saved files (a str: a URL, the serve command's --outputs-url)
    skipped: int = 0  # iterations Skip cut short (their partial images are kept, as in A1111)
    interrupted: bool = False  # Interrupt stopped the run: the last image is partial, later iterations did not run
    comments: list[str] = field(default_factory=list)  # notes for the user, e.g. "Mask resized ..."
    # why images could not be saved (ImageSaveError messages: disk full, folder not writable); the
    # images are in ``images`` all the same and the job is done, not failed
    save_errors: list[str] = field(default_factory=list)
    # the ControlNet units' detected maps at the output size (units with save_detected_map), in unit order;
    # the A1111 API appends them to its images, as sd-webui-controlnet does
    detected_maps: list[Any] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """The ``info`` object of A1111's API response (serialised to JSON by the API)."""
        return {
            "prompt": self.prompts[0] if self.prompts else "",
            "all_prompts": self.prompts,
            "negative_prompt": self.negative_prompts[0] if self.negative_prompts else "",
            "all_negative_prompts": self.negative_prompts,
            "seed": self.seeds[0] if self.seeds else -1,
            "all_seeds": self.seeds,
            "subseed": self.subseeds[0] if self.subseeds else -1,
            "all_subseeds": self.subseeds,
            "width": self.width,
            "height": self.height,
            "sampler_name": self.sampler_name,
            "scheduler": self.scheduler,
            "sd_model_name": self.model_name,
            "sd_model_hash": self.model_hash,
            "infotexts": self.infotexts,
            "comments": self.comments,
            "interrupted": self.interrupted,
        }


# ---------------------------------------------------------------------------------------------
# Memory a request or result holds (the job queue's byte budget, setting max_queue_mb)

# request fields that hold input images: img2img/inpaint/outpaint (and its latent_mask), extras, ControlNet units (and
# their ``image``), ControlNet detect, training
INPUT_IMAGE_FIELDS = ("init_images", "mask", "latent_mask", "image", "images", "controlnet_units", "instance_images",
                      "class_images")


def image_bytes(value: Any) -> int:
    """Bytes the decoded PIL images in ``value`` take, 4 a pixel (width x height x 4): an image, a
    list of them, a request's input image fields (ControlNet units' too) or a result's images.
    Anything else counts 0."""
    if isinstance(value, Image.Image):
        return value.width * value.height * BYTES_PER_PIXEL
    if isinstance(value, (list, tuple)):
        return sum(image_bytes(item) for item in value)
    if isinstance(value, GenerationResult):
        return image_bytes(value.images) + image_bytes(value.detected_maps)
    if isinstance(value, BaseModel):
        return sum(image_bytes(getattr(value, name, None)) for name in INPUT_IMAGE_FIELDS)
    return 0


def without_input_images(request: Any) -> Any:
    """A copy of ``request`` without its input images (lists emptied, single images None, ControlNet
    units' images None); the other fields stay, for pollers of the finished job (``info``, a
    training job's ``monitor``). Anything that is not a request comes back as it is."""
    if not isinstance(request, BaseModel):
        return request
    update: dict[str, Any] = {}
    for name in INPUT_IMAGE_FIELDS:
        value = getattr(request, name, None)
        if not image_bytes(value):
            continue
        if name == "controlnet_units":
            update[name] = [without_input_images(unit) for unit in value]
        else:
            update[name] = [] if isinstance(value, list) else None
    return request.model_copy(update=update) if update else request
