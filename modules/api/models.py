"""Request and response bodies of the HTTP API, with AUTOMATIC1111's field names and defaults.

The ``/sdapi/v1`` request bodies subclass the core requests (``modules.schemas``), so they carry
every core field, validator and limit, and change only what A1111's API does differently:

- ``width``/``height`` default to 512 and ``steps`` to 50 (A1111's API defaults; the core's own
  defaults are the model's native size and 20 steps); txt2img's ``denoising_strength`` is 0.75;
- ``width``/``height`` need not be multiples of 8 (floored to one, ``modules.api.lenient``);
- ``null`` in any field means its default (``NullMeansDefault``);
- ``save_images`` defaults to False (A1111's API does not save unless asked);
- images travel as base64 text (raw, or ``data:image/...;base64,`` URLs);
- ``infotext`` fills the fields the body does not set (``modules.api.lenient.apply_infotext``);
- ``override_settings`` apply to that request only: ``sd_model_checkpoint`` (the job runs on that
  model), ``sd_vae``, ``CLIP_stop_at_last_layers`` (becomes ``clip_skip``), the token merging
  ratios (become ``token_merging_ratio`` / ``token_merging_ratio_hr``), ``samples_save``,
  ``samples_format`` and ``enable_pnginfo``; other options are ignored. So
  ``override_settings_restore_afterwards=False`` does not make them stick as in A1111;
- ``script_name``/``script_args``: the scripts of ``GET /sdapi/v1/scripts`` ("outpainting mk2" on
  img2img, "x/y/z plot" on both) with A1111's positional args; any other name is a 422 listing
  them. ``alwayson_scripts`` takes ``controlnet`` (sd-webui-controlnet's ``{"args": [unit, ...]}``),
  A1111's built-ins (``builtin_scripts``) and the loaded extensions' always-on scripts.

Without ``sampler_name`` the sampler is ``sampler_index``, whose default is "Euler", as in A1111's API
(the web UI's and the job API's default is the setting ``default_sampler``).

Unknown fields are ignored, as A1111 does; wrongly typed or out-of-range fields get a 422 whose
``detail[].loc`` names the field. The ``/easel/v1`` job API takes the core requests unchanged.
Every difference from A1111 that remains is listed in ``docs/api.md``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modules.schemas import ExtrasRequest, Img2ImgRequest, OutpaintRequest, RequestModel, Txt2ImgRequest

from .lenient import NullMeansDefault

IMAGE_DESCRIPTION = "base64 image data, raw or as a data:image/...;base64, URL"


class ScriptFields(RequestModel):
    """A1111's script fields: ``script_name`` one of GET /sdapi/v1/scripts, with A1111's positional args."""

    script_name: str | None = Field(None, description="A1111 script title from GET /sdapi/v1/scripts (case-insensitive)")
    script_args: list[Any] = Field(default_factory=list, description="positional arguments of script_name, as A1111's")
    alwayson_scripts: dict[str, Any] = Field(
        default_factory=dict, description='A1111 always-on scripts by title, {"args": [...]}: controlnet, Seed, Sampler,'
                                           ' Refiner, Soft Inpainting, Extra options and the extensions\' ones')
    force_task_id: str | None = Field(None, description="accepted and ignored")
    infotext: str | None = Field(None, description="an A1111 infotext: fills the fields this body does not set")


NOT_IMPLEMENTED = "accepted for A1111's clients; not implemented in Easel (another value adds a warning to info)"


class AcceptedFields(RequestModel):
    """A1111 processing fields Easel takes but does not use (``lenient.IGNORED_FIELDS`` says why); a value
    other than the default is named in ``info.warnings``."""

    restore_faces: bool | None = Field(None, description=f"{NOT_IMPLEMENTED}: no face restorer is installed")
    do_not_save_samples: bool = Field(False, description="accepted; save_images decides, as in A1111's API")
    do_not_save_grid: bool = Field(False, description="accepted; save_images decides, as in A1111's API")
    disable_extra_networks: bool = Field(False, description=NOT_IMPLEMENTED)
    firstpass_image: str | None = Field(None, description=NOT_IMPLEMENTED)
    comments: dict[str, Any] | None = Field(None, description="accepted and ignored")


class Txt2ImgAcceptedFields(AcceptedFields):
    firstphase_width: int = Field(0, description=f"{NOT_IMPLEMENTED} (A1111's old hires fix)")
    firstphase_height: int = Field(0, description=f"{NOT_IMPLEMENTED} (A1111's old hires fix)")


class Img2ImgAcceptedFields(AcceptedFields):
    image_cfg_scale: float | None = Field(None, description=f"{NOT_IMPLEMENTED} (instruct-pix2pix models)")


SAMPLER_INDEX_DESCRIPTION = ("A1111's old name for sampler_name, used when sampler_name is not given; its default,"
                             " Euler, is A1111's API default sampler; null: the setting default_sampler")
SIZE_DESCRIPTION = "any size from 8; not a multiple of 8: floored to one (the size drawn is info.width/height)"


class Txt2ImgBody(NullMeansDefault, Txt2ImgRequest, ScriptFields, Txt2ImgAcceptedFields):
    """POST /sdapi/v1/txt2img: A1111's StableDiffusionProcessingTxt2Img fields and API defaults."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"example": {"prompt": "a red apple", "steps": 20}})

    width: int | None = Field(512, ge=8, le=8192, description=SIZE_DESCRIPTION)
    height: int | None = Field(512, ge=8, le=8192, description=SIZE_DESCRIPTION)
    steps: int = Field(50, ge=1, le=150)
    sampler_index: str | None = Field("Euler", description=SAMPLER_INDEX_DESCRIPTION)
    # A1111: sampler_index left out is "Euler"; sent as null (with no sampler_name) its default sampler
    null_kept: ClassVar[tuple[str, ...]] = ("sampler_index",)
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0, description="strength of the hires pass (A1111: 0.75)")
    save_images: bool = Field(False, description="save to the outputs folder (A1111's API default: no)")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int | None) -> int | None:
        return v  # A1111 floors to the latent grid: modules.api.lenient.latent_grid_sizes


class Img2ImgBody(NullMeansDefault, Img2ImgRequest, ScriptFields, Img2ImgAcceptedFields):
    """POST /sdapi/v1/img2img: A1111's StableDiffusionProcessingImg2Img fields; ``mask`` makes it inpainting."""

    model_config = ConfigDict(extra="ignore")

    init_images: list[str] | None = Field(None, description=f"the images to start from: {IMAGE_DESCRIPTION}")
    mask: str | None = Field(None, description=f"inpainting mask, white = repaint: {IMAGE_DESCRIPTION}")
    latent_mask: str | None = Field(None, description="with mask: the mask of the latent blend instead of the blurred"
                                                      f" mask (A1111's latent_mask), white = repaint: {IMAGE_DESCRIPTION}")
    mask_blur_x: int | None = Field(None, ge=0, le=64, description="horizontal mask blur; null: mask_blur (a mask_blur"
                                                                   " sent sets both, as in A1111)")
    mask_blur_y: int | None = Field(None, ge=0, le=64, description="vertical mask blur; null: mask_blur")
    width: int | None = Field(512, ge=8, le=8192, description=SIZE_DESCRIPTION)
    height: int | None = Field(512, ge=8, le=8192, description=SIZE_DESCRIPTION)
    steps: int = Field(50, ge=1, le=150)
    sampler_index: str | None = Field("Euler", description=SAMPLER_INDEX_DESCRIPTION)
    # A1111: sampler_index left out is "Euler"; sent as null (with no sampler_name) its default sampler
    null_kept: ClassVar[tuple[str, ...]] = ("sampler_index",)
    save_images: bool = Field(False, description="save to the outputs folder (A1111's API default: no)")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int | None) -> int | None:
        return v  # A1111 floors to the latent grid: modules.api.lenient.latent_grid_sizes


class ExtrasBody(NullMeansDefault, ExtrasRequest):
    """POST /sdapi/v1/extra-single-image: upscale one image. ``upscaler_1`` "None" returns it unchanged (A1111)."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field("", description=f"the image to upscale: {IMAGE_DESCRIPTION}")
    save_images: bool = Field(False, description="save to the extras outputs folder (A1111's API: no)")
    gfpgan_visibility: float = Field(0.0, ge=0.0, le=1.0, description="accepted; no face restorer is installed in"
                                                                      " Easel: the image is not restored (html_info says so)")
    codeformer_visibility: float = Field(0.0, ge=0.0, le=1.0, description="accepted; no face restorer is installed in"
                                                                          " Easel: the image is not restored (html_info says so)")
    codeformer_weight: float = Field(0.0, ge=0.0, le=1.0, description="accepted and ignored")
    upscale_first: bool = Field(False, description="accepted and ignored (no face restoration)")


class FileData(RequestModel):
    """One image of extra-batch-images (A1111's FileData)."""

    data: str = Field(description=IMAGE_DESCRIPTION)
    name: str = Field("", description="file name, for the client's own use")


class ExtrasBatchBody(ExtrasBody):
    """POST /sdapi/v1/extra-batch-images: the extras upscale for each image of ``imageList``."""

    imageList: list[FileData] = Field(default_factory=list, description="the images to upscale")  # noqa: N815 - A1111's name


class ExtrasBatchResponse(BaseModel):
    """A1111's ExtrasBatchImagesResponse."""

    images: list[str] = Field(description="the upscaled images, base64 PNG, in imageList's order")
    html_info: str = Field("", description="a short description of what was done")


class InterrogateBody(NullMeansDefault, RequestModel):
    image: str = Field("", description=IMAGE_DESCRIPTION)
    model: str = Field("clip", description='A1111\'s "clip" or "deepdanbooru"')


class InterrogateResponse(BaseModel):
    caption: str | None = None


class GenerationResponse(BaseModel):
    """A1111's TextToImageResponse / ImageToImageResponse."""

    images: list[str] | None = Field(None, description="the generated images, base64 PNG with their infotext")
    parameters: dict[str, Any] = Field(description="the request as understood, with defaults filled in")
    info: str = Field(description="a JSON string: all_prompts, all_seeds, infotexts, sd_model_name, sd_model_hash, ...")


class ExtrasResponse(BaseModel):
    """A1111's ExtrasSingleImageResponse."""

    image: str | None = Field(None, description="the upscaled image, base64 PNG")
    html_info: str = Field("", description="a short description of what was done")


class PngInfoBody(RequestModel):
    image: str = Field(description=IMAGE_DESCRIPTION)


class PngInfoResponse(BaseModel):
    info: str = Field(description="the infotext stored in the image ('' if none)")
    items: dict[str, Any] = Field(description="the image's other text chunks")
    parameters: dict[str, Any] = Field(description="the infotext parsed into A1111's keys (Prompt, Steps, Size-1, ...)")


class ProgressResponse(BaseModel):
    progress: float = Field(description="0..1 of the running job")
    eta_relative: float = Field(description="seconds left for the running job (0 when unknown)")
    state: dict[str, Any] = Field(description="job_count, sampling_step, sampling_steps, interrupted, skipped, job, ...")
    current_image: str | None = Field(None, description="the live preview, base64 PNG (needs show_progress_every_n_steps > 0)")
    textinfo: str | None = None


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LoraItem(BaseModel):
    """One LoRA file (the A1111 Lora extension's shape)."""

    name: str = Field(description="as in <lora:name:weight>")
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class LatentUpscalerModeItem(BaseModel):
    name: str


class SDVaeItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    filename: str


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class HypernetworkItem(BaseModel):
    name: str
    path: str | None = None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class RealesrganItem(BaseModel):
    name: str
    path: str | None = None
    scale: int | None = None


class ScriptArg(BaseModel):
    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[str] | None = None


class ScriptInfo(BaseModel):
    name: str | None = None
    is_alwayson: bool | None = None
    is_img2img: bool | None = None
    args: list[ScriptArg] = Field(default_factory=list)


class ExtensionItem(BaseModel):
    name: str
    remote: str
    branch: str
    commit_hash: str
    version: str
    commit_date: int
    enabled: bool


class OptionsResponse(BaseModel):
    """GET /sdapi/v1/options: every Easel setting and A1111's common options (the ones clients read most below)."""

    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: str | None = Field(None, description="the selected checkpoint's A1111 title")
    sd_checkpoint_hash: str | None = Field(None, description="its sha256")
    sd_vae: str = Field("Automatic", description='a file of models/VAE, "Automatic" or "None"')
    CLIP_stop_at_last_layers: int = Field(1, description="clip skip of requests that give none")
    samples_format: str = Field("png", description="png, jpg or webp: the format of the API's images")
    samples_save: bool = True
    enable_pnginfo: bool = True
    eta_noise_seed_delta: int = 0
    show_progress_every_n_steps: int = 5


class MemoryResponse(BaseModel):
    ram: dict[str, Any] = Field(description="free, used, total bytes of system memory")
    cuda: dict[str, Any] = Field(description="CUDA memory, or {error: ...} without CUDA")


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, Any] = Field(default_factory=dict)
    skipped: dict[str, Any] = Field(default_factory=dict)


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# /easel/v1: the core requests with Easel's own defaults; images as base64 text


class Img2ImgJobRequest(Img2ImgRequest):
    init_images: list[str] = Field(default_factory=list, description=IMAGE_DESCRIPTION)
    mask: str | None = Field(None, description=f"white = repaint; {IMAGE_DESCRIPTION}")
    latent_mask: str | None = Field(None, description=f"with mask: the latent blend's own mask; {IMAGE_DESCRIPTION}")


class OutpaintJobRequest(OutpaintRequest):
    init_images: list[str] = Field(default_factory=list, description=IMAGE_DESCRIPTION)
    mask: str | None = Field(None, description="ignored: outpainting makes its own mask")
    latent_mask: str | None = Field(None, description="ignored: outpainting makes its own mask")


class ExtrasJobRequest(ExtrasRequest):
    image: str = Field("", description=IMAGE_DESCRIPTION)


class Txt2ImgJob(BaseModel):
    type: Literal["txt2img"]
    request: Txt2ImgRequest = Field(default_factory=Txt2ImgRequest)


class Img2ImgJob(BaseModel):
    type: Literal["img2img"]
    request: Img2ImgJobRequest


class OutpaintJob(BaseModel):
    type: Literal["outpaint"]
    request: OutpaintJobRequest


class ExtrasJob(BaseModel):
    type: Literal["extras"]
    request: ExtrasJobRequest


JobSubmission = Annotated[Txt2ImgJob | Img2ImgJob | OutpaintJob | ExtrasJob, Field(discriminator="type")]


class JobProgress(BaseModel):
    step: int
    total: int
    fraction: float
    eta: float | None = Field(description="seconds left, None until a step is done")


class JobCreated(BaseModel):
    id: str
    kind: str
    state: str
    position: int = Field(description="0 running, 1.. place in line, -1 finished")


class JobResult(BaseModel):
    images: list[str] = Field(description="base64 PNGs with their infotext")
    info: dict[str, Any] = Field(description="all_prompts, all_seeds, infotexts, sd_model_name, ...")


class JobStatus(JobCreated):
    progress: JobProgress
    preview: str | None = Field(None, description="live preview, base64 PNG")
    error: str | None = None
    result: JobResult | None = Field(None, description="set once the job is done")
    interrupted: bool = Field(False, description="the job was interrupted while running (state done): the result "
                                                 "holds what it made, the last image partial")
    created: float
    started: float | None = None
    finished: float | None = None


class JobCancelResponse(BaseModel):
    id: str
    state: str
    cancelled: bool = Field(description="False when the job had already finished; a running job is interrupted "
                                        "(it ends done, with what it made), a queued one is cancelled")
