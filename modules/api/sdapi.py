"""The ``/sdapi/v1`` routes: AUTOMATIC1111's HTTP API, served from Easel's job queue.

Generation routes are ``async def``: they decode their input images and submit the job in the
thread pool (``run_in_threadpool``), then await the job on the event loop without holding a thread
(``Job.wait_async``), then encode the results in the thread pool again. So 50 waiting requests take
no thread, and the plain ``def`` routes (options, png-info, ...) still find one at once. Routes that
only read state are ``async def`` too. A generation whose images could not be saved answers 507
with its images (``errors.not_saved_response``).
"""

import json
import time
from typing import Any, NamedTuple
from urllib.parse import quote

from fastapi import APIRouter, Body, Query, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from modules import devices, samplers, upscalers
from modules.batches import shown_from_results
from modules.checkpoints import CheckpointError
from modules.images import encode_image_base64, read_infotext
from modules.infotext import parse_infotext
from modules.jobs import Job, JobCancelled, one_line_error
from modules.schemas import GenerationResult, Img2ImgRequest, RequestError, Txt2ImgRequest
from modules.services import Services
from modules.styles import STYLES_FILE, load_styles

from . import networks_api, scripts
from . import options as options_api
from .convert import (
    BUILTIN_ALWAYSON,
    CONTROLNET_SCRIPT,
    ImageEncoding,
    InputBudget,
    build_core_request,
    controlnet_units_of,
    decode_field,
    encode_images,
    field_error,
    info_dict,
    info_json,
    parameters_of,
)
from .errors import NOT_SAVED_RESPONSES, JobFailed, not_saved_response
from .lenient import make_lenient
from .models import (
    EmbeddingsResponse,
    GenerationResponse,
    Img2ImgBody,
    LatentUpscalerModeItem,
    LoraItem,
    MemoryResponse,
    OptionsResponse,
    PngInfoBody,
    PngInfoResponse,
    ProgressResponse,
    PromptStyleItem,
    SamplerItem,
    SchedulerItem,
    ScriptsList,
    SDModelItem,
    SDVaeItem,
    Txt2ImgBody,
    UpscalerItem,
)

PREFIX = "/sdapi/v1"
TAG = "sdapi (AUTOMATIC1111 compatible)"


class Submitted(NamedTuple):
    """What a generation route queued: the core request, its jobs, the X/Y/Z plot plan (None: one job),
    the body as run (infotext applied, see ``lenient``) and what A1111's leniency changed."""

    core: Any
    jobs: list[Job]
    grid: Any = None  # modules.batches.Batch of an "x/y/z plot" request
    body: Any = None  # None: the body as sent
    warnings: tuple[str, ...] = ()
    encoding: ImageEncoding = ImageEncoding()


async def wait_for(job: Job) -> Any:
    """The job's result, awaited without holding a thread (an interrupted generation's result holds
    what it made); None if it was cancelled before it could make anything. Bad input stays 4xx;
    anything else is a JobFailed (500)."""
    try:
        return await job.wait_async()
    except JobCancelled:
        return None
    except (RequestError, CheckpointError):
        raise
    except Exception as exc:  # noqa: BLE001 - reported to the client as a 500 with the job's message
        raise JobFailed(f"job {job.id} ({job.kind}) failed: {job.error or one_line_error(exc)}") from exc


def interrupted_response(job: Job, parameters: dict[str, Any]) -> GenerationResponse:
    """The answer for a job cancelled before it ran (or stopped with the server): 200, as A1111 answers an
    interrupt, with no images. An interrupted running job answers with what it made (``generation_answer``)."""
    info = {"interrupted": True, "job_id": job.id, "all_prompts": [], "all_seeds": [], "infotexts": []}
    return GenerationResponse(images=[], parameters=parameters, info=json.dumps(info))


async def respond(services: Services, submitted: Submitted, body: Any) -> GenerationResponse | JSONResponse:
    """Await what a generation route submitted and shape A1111's answer (507 if images could not be saved)."""
    body = submitted.body if submitted.body is not None else body
    if submitted.grid is not None:
        return await grid_response(services, submitted, body)
    job = submitted.jobs[0]
    result: GenerationResult | None = await wait_for(job)
    if result is None:
        return interrupted_response(job, parameters_of(body))
    answer = await run_in_threadpool(generation_answer, job, result, submitted, body)
    return not_saved_response(answer, result.save_errors) if result.save_errors else answer


def generation_answer(job: Job, result: GenerationResult, submitted: Submitted, body: Any) -> GenerationResponse:
    """A1111's answer for a finished generation (the images encoded: run it in a worker thread): the images,
    then the ControlNet units' detected maps (those with ``save_detected_map``), as sd-webui-controlnet adds them."""
    images = []
    if body.send_images:
        images = encode_images(result, submitted.encoding) + [submitted.encoding.encode(m) for m in result.detected_maps]
    info = info_json(result, submitted.core, job.started, list(submitted.warnings))
    return GenerationResponse(images=images, parameters=parameters_of(body), info=info)


def submit_grid(services: Services, kind: str, core: Any, body: Any, warnings: list[str]) -> Submitted:
    """Plan and queue an "x/y/z plot" request: one job per cell, planned by the web UI's X/Y plot."""
    batch = scripts.plan_xyz(kind, core, list(body.script_args), services)
    return Submitted(core, services.submit_all(batch.requests), batch, body, tuple(warnings),
                     ImageEncoding.of(services.settings, body.override_settings))


async def grid_response(services: Services, submitted: Submitted, body: Any) -> GenerationResponse | JSONResponse:
    """Await an "x/y/z plot" request's cells and shape A1111's answer.

    Images: the labelled grid first (when every cell made an image), then every cell's images,
    as A1111 does with "Include Sub Images". An interrupted cell cancels the rest of the grid: the
    answer is then the images of the cells made so far (the interrupted one's partial), without a grid.
    """
    jobs = submitted.jobs
    results = []
    for job in jobs:
        result = await wait_for(job)
        if result is None:
            for rest in jobs:
                services.queue.cancel(rest.id)
            return interrupted_response(job, parameters_of(body))
        results.append(result)
        if result.interrupted:
            for rest in jobs:
                services.queue.cancel(rest.id)
            break
    answer = await run_in_threadpool(grid_answer, submitted, results, body)
    save_errors = [message for r in results for message in r.save_errors]
    return not_saved_response(answer, save_errors) if save_errors else answer


def grid_answer(submitted: Submitted, results: list[GenerationResult], body: Any) -> GenerationResponse:
    """The X/Y/Z plot's grid and A1111's answer (images encoded: run it in a worker thread)."""
    batch, core, jobs = submitted.grid, submitted.core, submitted.jobs
    shown = batch.show(results) if len(results) == len(jobs) else shown_from_results(results)
    cell_images = sum(len(r.images) for r in results)
    has_grid = len(shown.images) > cell_images
    info = info_dict(results[0], core, jobs[0].started, list(submitted.warnings))
    info.update({
        "interrupted": any(r.interrupted for r in results), "skipped_images": sum(r.skipped for r in results),
        "all_prompts": ([results[0].prompts[0]] if has_grid else []) + [p for r in results for p in r.prompts],
        "all_seeds": shown.seeds, "infotexts": shown.infotexts, "index_of_first_image": 1 if has_grid else 0,
        "paths": [str(p) for r in results for p in r.paths],
    })
    images = [submitted.encoding.encode(im, text) for im, text in zip(shown.images, shown.infotexts, strict=False)]
    return GenerationResponse(images=images if body.send_images else [], parameters=parameters_of(body),
                              info=json.dumps(info, default=str))


def memory_stats(services: Services) -> dict[str, Any]:
    """A1111's /memory answer: system RAM, and CUDA memory when there is CUDA."""
    import torch

    probe = devices.TorchMemoryProbe()
    total, free = probe.total_bytes("cpu"), probe.free_bytes("cpu")
    ram = {"free": free, "used": total - free, "total": total}
    if not torch.cuda.is_available():
        return {"ram": ram, "cuda": {"error": "CUDA is not available on this machine"}}
    try:
        free_c, total_c = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
    except Exception as err:  # noqa: BLE001 - a driver problem is reported, not raised
        return {"ram": ram, "cuda": {"error": one_line_error(err)}}
    cuda = {
        "system": {"free": free_c, "used": total_c - free_c, "total": total_c},
        "active": {"current": stats.get("active_bytes.all.current", 0), "peak": stats.get("active_bytes.all.peak", 0)},
        "allocated": {"current": stats.get("allocated_bytes.all.current", 0), "peak": stats.get("allocated_bytes.all.peak", 0)},
        "reserved": {"current": stats.get("reserved_bytes.all.current", 0), "peak": stats.get("reserved_bytes.all.peak", 0)},
        "inactive": {
            "current": stats.get("inactive_split_bytes.all.current", 0),
            "peak": stats.get("inactive_split_bytes.all.peak", 0),
        },
        "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
    }
    return {"ram": ram, "cuda": cuda}


def progress_of(services: Services, skip_current_image: bool) -> ProgressResponse:
    """A1111's /progress answer for the running job (zeros when idle). Asking with the current image
    keeps previews coming (``jobs.PreviewWatch``), for this job and the next ones."""
    if not skip_current_image:
        services.queue.preview_watch.touch()
    job = services.queue.current()
    count = services.queue.job_count()
    state: dict[str, Any] = {
        "skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_id": None,
        "job_count": count, "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0,
        "queued": len(services.queue.pending()),
    }
    if job is None:
        return ProgressResponse(progress=0.0, eta_relative=0.0, state=state, current_image=None, textinfo=None)
    snap = job.progress.snapshot()
    state.update({
        "skipped": job.token.skipped, "interrupted": job.token.cancelled, "job": job.kind, "job_id": job.id,
        "job_timestamp": _timestamp(job.started), "sampling_step": snap.step, "sampling_steps": snap.total,
    })
    image = None
    if snap.preview is not None and not skip_current_image:
        image = encode_image_base64(snap.preview)
    return ProgressResponse(progress=snap.fraction, eta_relative=snap.eta_seconds or 0.0, state=state,
                            current_image=image, textinfo=snap.textinfo or None)


def _timestamp(t: float | None) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.localtime(t)) if t else "0"


def sd_models(services: Services) -> list[SDModelItem]:
    registry = services.checkpoints
    items = []
    for info in registry.list():
        items.append(SDModelItem(
            title=registry.title(info), model_name=info.model_name, hash=registry.short_hash(info),
            sha256=registry.sha256(info), filename=str(info.path),
            config=str(info.config_path) if info.config_path else None,
        ))
    return items


def cmd_flags(services: Services) -> dict[str, Any]:
    """The start-up choices, under A1111's flag names where one exists."""
    s = services.settings
    return {
        "api": True, "nowebui": False, "data_dir": str(s.data_dir), "ckpt_dir": [str(p) for p in s.ckpt_dirs],
        "device": services.runtime.device, "precision": s.precision, "attention": services.runtime.attention,
        "medvram": s.memory_mode == "medvram", "lowvram": s.memory_mode == "lowvram",
        "xformers": services.runtime.attention == "xformers", "max_queue": s.max_queue,
    }


def create_sdapi_router(services: Services) -> APIRouter:
    """Every ``/sdapi/v1`` route, bound to ``services``."""
    router = APIRouter(prefix=PREFIX, tags=[TAG])

    @router.post("/txt2img", response_model=GenerationResponse, responses=NOT_SAVED_RESPONSES)
    async def txt2img(body: Txt2ImgBody) -> GenerationResponse | JSONResponse:
        """Text to image; waits in the queue like every job. ``info`` is a JSON string.

        ``script_name`` "x/y/z plot" with A1111's ``script_args`` makes a grid (see /sdapi/v1/scripts).
        ``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}``: ControlNet units, as sd-webui-controlnet takes them.
        """
        return await respond(services, await run_in_threadpool(submit_txt2img, body), body)

    def submit_txt2img(body: Txt2ImgBody) -> Submitted:
        """Check a txt2img body and queue its job(s); decodes ControlNet images (run it in a worker thread)."""
        script = scripts.script_of(body, "txt2img", services.extensions)
        lenient = make_lenient(body, services)
        body = lenient.body
        units = controlnet_units_of(body, InputBudget.of(services.settings), warnings=lenient.warnings)
        core = build_core_request(Txt2ImgRequest, body, services.settings, {
            "controlnet_units": units, **lenient.sizes, **scripts.extension_fields(body, "txt2img", services.extensions)})
        if script == scripts.XYZ_PLOT:
            return submit_grid(services, "txt2img", core, body, lenient.warnings)
        return Submitted(core, [services.submit("txt2img", core)], None, body, tuple(lenient.warnings),
                         ImageEncoding.of(services.settings, body.override_settings))

    @router.post("/img2img", response_model=GenerationResponse, responses=NOT_SAVED_RESPONSES)
    async def img2img(body: Img2ImgBody) -> GenerationResponse | JSONResponse:
        """Image to image; with ``mask`` it is inpainting (mask_blur, inpainting_fill, inpaint_full_res, ...).

        ``script_name`` "outpainting mk2" or "x/y/z plot" with A1111's ``script_args`` runs that script.
        ``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}``: ControlNet units; a unit without an image uses
        the init image.
        """
        return await respond(services, await run_in_threadpool(submit_img2img, body), body)

    def submit_img2img(body: Img2ImgBody) -> Submitted:
        """Check an img2img body, decode its images and queue its job(s) (run it in a worker thread)."""
        script = scripts.script_of(body, "img2img", services.extensions)
        lenient = make_lenient(body, services)
        body = lenient.body
        if not body.init_images:
            raise field_error(("init_images",), "at least one image is required (base64 or a data:image/...;base64, URL)")
        budget = InputBudget.of(services.settings)
        images = [decode_field(text, ("init_images", i), budget) for i, text in enumerate(body.init_images)]
        units = controlnet_units_of(body, budget, warnings=lenient.warnings)
        if script == scripts.OUTPAINTING:
            core = scripts.build_outpaint(body, images, services.settings).model_copy(update={"controlnet_units": units})
            return Submitted(core, [services.submit("outpaint", core)], None, body, tuple(lenient.warnings),
                             ImageEncoding.of(services.settings, body.override_settings))
        mask = decode_field(body.mask, ("mask",), budget) if body.mask else None
        latent = decode_field(body.latent_mask, ("latent_mask",), budget) if body.latent_mask and mask else None
        core = build_core_request(Img2ImgRequest, body, services.settings,
                                  {"init_images": images, "mask": mask, "latent_mask": latent, "controlnet_units": units,
                                   **lenient.sizes,
                                   **scripts.extension_fields(body, "img2img", services.extensions)})
        if script == scripts.XYZ_PLOT:
            return submit_grid(services, "img2img", core, body, lenient.warnings)
        return Submitted(core, [services.submit("img2img", core)], None, body, tuple(lenient.warnings),
                         ImageEncoding.of(services.settings, body.override_settings))

    @router.post("/png-info", response_model=PngInfoResponse)
    def png_info(body: PngInfoBody) -> PngInfoResponse:
        """The generation parameters stored in an image (PNG text chunk or EXIF UserComment)."""
        image = decode_field(body.image.strip(), ("image",), InputBudget.of(services.settings))
        text = read_infotext(image) or ""
        items = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str) and k != "parameters"}
        return PngInfoResponse(info=text, items=items, parameters=parse_infotext(text) if text else {})

    @router.get("/progress", response_model=ProgressResponse)
    async def progress(skip_current_image: bool = Query(False)) -> ProgressResponse:
        """Progress of the running job; ``state.job_count`` counts running and queued jobs."""
        return progress_of(services, skip_current_image)

    @router.post("/interrupt")
    async def interrupt() -> dict:
        """Stop the running job (queued jobs go on). A generation stops after its current step and answers
        with what it made: the finished images and the partial one, with their infotexts, ``info.interrupted`` true."""
        services.queue.interrupt()
        return {}

    @router.post("/skip")
    async def skip() -> dict:
        """Cut the iteration being made short (its partial image is kept, as in A1111) and go on with the
        rest of the batch count; ``info.skipped_images`` counts the iterations cut short."""
        services.queue.skip()
        return {}

    @router.get("/options", response_model=OptionsResponse)
    def get_options() -> dict[str, Any]:
        """Every setting under A1111's option names, and A1111's common options with their defaults;
        sd_model_checkpoint is the selected checkpoint's title."""
        return options_api.read_options(services)

    @router.post("/options", response_model=None, responses={200: {"description": "null, as A1111 answers", "headers": {
        "Easel-Model-Switch-Job": {"description": "id of the queued model switch (sd_model_checkpoint changed)"},
        "Easel-Ignored-Options": {"description": "option names Easel has no use for, percent-encoded, comma-separated"}}}})
    def set_options(
        response: Response,
        values: dict[str, Any] = Body(..., examples=[{"sd_model_checkpoint": "model.safetensors"}]),
    ) -> None:
        """Validate, save to config.json and apply; answers null as A1111. A new sd_model_checkpoint is queued
        behind earlier jobs (its job id in the ``Easel-Model-Switch-Job`` header)."""
        update = options_api.plan_update(services, values)
        job_id = options_api.apply_update(services, update)
        if job_id is not None:
            response.headers["Easel-Model-Switch-Job"] = job_id
        if update.ignored:  # client-chosen names: percent-encoded, so a header holds only safe ASCII
            response.headers["Easel-Ignored-Options"] = ",".join(quote(name, safe="") for name in update.ignored)
        return None

    @router.get("/cmd-flags")
    def get_cmd_flags() -> dict[str, Any]:
        return cmd_flags(services)

    @router.get("/sd-models", response_model=list[SDModelItem])
    def get_sd_models() -> list[SDModelItem]:
        """The checkpoints found (hashes are computed once and cached)."""
        return sd_models(services)

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> dict:
        """Scan the checkpoint folders again."""
        services.checkpoints.refresh()
        return {}

    @router.get("/samplers", response_model=list[SamplerItem])
    async def get_samplers() -> list[dict[str, Any]]:
        return samplers.sampler_list()

    @router.get("/schedulers", response_model=list[SchedulerItem])
    async def get_schedulers() -> list[dict[str, Any]]:
        return samplers.scheduler_list()

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def get_upscalers() -> list[dict[str, Any]]:
        """Pixel and model upscalers (the latent ones are under /latent-upscale-modes)."""
        return [
            {"name": u.name, "model_name": u.path.stem if u.path else None,
             "model_path": str(u.path) if u.path else None, "model_url": None, "scale": None}
            for u in upscalers.list_upscalers(services.settings.models_dir, include_latent=False)
        ]

    @router.get("/latent-upscale-modes", response_model=list[LatentUpscalerModeItem])
    async def get_latent_upscale_modes() -> list[dict[str, str]]:
        return [{"name": name} for name in upscalers.LATENT_MODES]

    @router.get("/sd-vae", response_model=list[SDVaeItem])
    def get_sd_vae() -> list[dict[str, str]]:
        """The VAE files of models/VAE (A1111's shape)."""
        folder = services.settings.models_dir / "VAE"
        return [{"model_name": name, "filename": str(folder / name)} for name in services.vae_files()]

    @router.get("/prompt-styles", response_model=list[PromptStyleItem])
    def get_prompt_styles() -> list[dict[str, str]]:
        """The styles of styles.csv in the data folder."""
        styles = load_styles(services.settings.path(STYLES_FILE))
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles.values()]

    @router.get("/embeddings", response_model=EmbeddingsResponse)
    def get_embeddings() -> EmbeddingsResponse:
        """The embeddings folder's textual-inversion embeddings: ``loaded`` fit the selected checkpoint's
        text encoder, ``skipped`` do not (A1111's shape)."""
        return EmbeddingsResponse(**networks_api.embeddings_listing(services))

    @router.get("/loras", response_model=list[LoraItem])
    def get_loras() -> list[dict[str, Any]]:
        """The LoRA files of models/Lora: ``name`` (as in ``<lora:name:weight>``), ``alias``, ``path``, ``metadata``."""
        return networks_api.lora_listing(services)

    @router.post("/refresh-loras")
    def refresh_loras() -> dict:
        """Scan the LoRA folder again."""
        services.networks.loras.refresh()
        return {}

    @router.get("/scripts", response_model=ScriptsList)
    async def get_scripts() -> ScriptsList:
        """The A1111 scripts this server takes, lower-case titles: the selectable ones (``script_name``),
        then the always-on ones (``alwayson_scripts``: ControlNet and A1111's built-ins), as A1111 lists them."""
        ext = services.extensions
        return ScriptsList(**{kind: [*scripts.SCRIPTS[kind], *scripts.extension_titles(ext, kind, alwayson=False),
                                     CONTROLNET_SCRIPT, *BUILTIN_ALWAYSON[kind],
                                     *scripts.extension_titles(ext, kind, alwayson=True)]
                              for kind in ("txt2img", "img2img")})

    @router.get("/memory", response_model=MemoryResponse)
    def get_memory() -> MemoryResponse:
        return MemoryResponse(**memory_stats(services))

    return router
