"""The services container: every long-lived object, built once and handed in explicitly.

``build_services(settings)`` wires checkpoints, the model cache, the image saver and the job
queue together; ``Services.run_job`` is the queue's one worker routine, the only code that
touches the device. Clients (CLI, UI, API) only build requests and call ``submit``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules import devices, job_batching, partial_offload
from modules.access import ClientAccess
from modules.checkpoints import CheckpointError, CheckpointRegistry, HashCache, scan_vaes
from modules.config import Settings
from modules.controlnet import detect as controlnet_detect
from modules.controlnet import runtime as controlnet_runtime
from modules.controlnet.models import ControlNetInfo, LoadedControlNet, find_controlnet, scan_controlnets
from modules.extra_networks import ExtraNetworks, build_extra_networks
from modules.hooks import HookedSaver, HookRegistry
from modules.images import ImageOutputs, ImageSaver, remove_stale_temp_files
from modules.install_jobs import Installer
from modules.installer import target_from_settings
from modules.jobs import Job, JobQueue, one_line_error
from modules.model_loading import LoadedModel, native_size_hint
from modules.model_manager import CacheSettings, ModelManager, ModelRecipe
from modules.model_parts import CheckpointSource, PartHashes, PartOptions, checkpoint_recipe
from modules.processing import extras, img2img, outpaint, txt2img, txt2img_group
from modules.processing.context import RunContext
from modules.request_checks import GENERATION_KINDS, check_generation
from modules.schemas import GenerationRequest, RequestError, image_bytes, without_input_images
from modules.tiling import seamless_tiling
from modules.training import job as training_job

VERSION = "easel-0.1"


COMPILER_MODULES = ("torch._dynamo", "torch._inductor")  # where torch.compile's errors come from (--compile)


class ModelRunError(RuntimeError):
    """A model failed inside a job (a torch or diffusers error); the message names the checkpoint,
    the dtype and the device, and the original error."""


@dataclass
class Runtime:
    """Device choices made once from the settings."""

    device: str
    dtype: Any
    attention: str
    memory_mode: str
    vae_dtype: Any = None  # the VAE's dtype when it differs from ``dtype`` (None: the same)
    channels_last: bool = False
    compile_unet: bool = False


def cache_settings(settings: Settings, memory_mode: str = "normal") -> CacheSettings:
    """The model cache's limits from the settings; ``memory_mode`` is the runtime's (read at start-up)."""
    gb = 1 << 30
    return CacheSettings(
        max_models=settings.sd_checkpoints_limit,
        max_ram_bytes=int(settings.sd_checkpoints_max_ram_gb * gb) if settings.sd_checkpoints_max_ram_gb else None,
        reserve_bytes=int(settings.reserve_vram_gb * gb),
        memory_mode=memory_mode,
    )


def make_runtime(settings: Settings) -> Runtime:
    device = devices.choose_device(settings.device)
    dtype = devices.choose_dtype(device, settings.precision)
    vae_dtype = devices.choose_vae_dtype(device, dtype, settings.vae_precision)
    return Runtime(
        device=device,
        dtype=dtype,
        attention=devices.choose_attention(device, settings.attention),
        memory_mode=settings.memory_mode,
        vae_dtype=vae_dtype if vae_dtype != dtype else None,
        channels_last=devices.choose_channels_last(device, dtype, settings.channels_last),
        compile_unet=settings.compile_unet,
    )


@dataclass
class Services:
    settings: Settings
    runtime: Runtime
    checkpoints: CheckpointRegistry
    models: ModelManager
    saver: ImageSaver
    queue: JobQueue
    networks: ExtraNetworks  # LoRA files and embeddings for prompts
    access: ClientAccess = field(default_factory=ClientAccess)  # what clients may touch on disk (operator's flags)
    installer: Installer | None = None  # model installs: a download worker beside the queue (modules.install_jobs)
    hooks: HookRegistry = field(default_factory=HookRegistry)  # extension hook points (modules.hooks)
    extensions: Any = None  # the loaded extensions (modules.a1111_compat.loader.Extensions), None: none loaded
    _selected: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- model selection -------------------------------------------------------------------
    @property
    def selected_checkpoint(self) -> str:
        """The checkpoint new jobs run on (A1111's sd_model_checkpoint), as a registry name."""
        with self._lock:
            if self._selected is None:
                self._selected = self.checkpoints.get(self.settings.sd_model_checkpoint).name
            return self._selected

    def select_checkpoint(self, query: str) -> Job:
        """Queue a model switch: jobs submitted earlier still run on the previous model."""
        name = self.checkpoints.get(query).name  # unknown names fail now, not in the queue
        with self._lock:
            self._selected = name
        return self.queue.submit("load_model", model_key(name, self.resolve_vae(None)))

    def native_size(self) -> int:
        """The selected checkpoint's training resolution (the UI's default width and height)."""
        try:
            return native_size_hint(self.checkpoints.get(self.selected_checkpoint))
        except CheckpointError:
            return 512

    def vae_files(self) -> list[str]:
        """Names of the VAE files in models/VAE (relative paths)."""
        folder = self.settings.models_dir / "VAE"
        return [p.relative_to(folder).as_posix() for p in scan_vaes(folder)]

    def resolve_vae(self, requested: str | None) -> str | None:
        """The VAE file a job uses (None: the checkpoint's own); an unknown name is a RequestError."""
        name = requested or self.settings.sd_vae
        if name in (None, "", "Automatic", "None"):
            return None
        files = self.vae_files()
        if name not in files:
            choices = ", ".join(files) or "none"
            raise RequestError(f"sd_vae: {name!r} is not in models/VAE; choose Automatic, None or one of: {choices}")
        return name

    # -- ControlNet ------------------------------------------------------------------------
    @property
    def controlnet_dir(self) -> Path:
        """``models/ControlNet`` (annotator weights for the preprocessors in its ``annotators/``)."""
        return self.settings.models_dir / "ControlNet"

    def controlnet_infos(self) -> list[ControlNetInfo]:
        """The ControlNets in models/ControlNet, rescanned at each call (a new file shows up at once)."""
        return scan_controlnets(self.controlnet_dir)

    @contextmanager
    def use_controlnet(self, title: str, field: str = "controlnet model") -> Iterator[LoadedControlNet]:
        """The ControlNet ``title`` names, locked in the model cache and on the compute device for the block.

        It comes in the runtime dtype; with medvram/lowvram on an accelerator it visits the
        device only inside the block (see ``modules.controlnet.runtime``). "None" or an unknown
        title is a RequestError naming ``field``.
        """
        info = find_controlnet(title, self.controlnet_infos(), field)
        if info is None:
            raise RequestError(f"{field}: no ControlNet model chosen (None); choose one of the installed models")
        with self.models.use(controlnet_runtime.controlnet_key(info.name)) as loaded:
            with controlnet_runtime.on_device_while_used(loaded, self.runtime.device, self.runtime.memory_mode):
                yield loaded


    # -- settings (added for the HTTP API's POST /sdapi/v1/options) -------------------------
    def update_settings(self, new_settings: Settings) -> None:
        """Replace the settings: jobs that start from now on see them; a running job keeps its own.

        The model cache limits and the format of saved files follow at once. Settings read once
        at start-up (device, precision, attention, memory mode, max_queue) take effect at the next
        start. The caller saves config.json; selecting another checkpoint is ``select_checkpoint``'s job.
        """
        with self._lock:
            self.settings = new_settings
        self.models.set_settings(cache_settings(new_settings, self.runtime.memory_mode))
        self.saver.set_file_format(new_settings.samples_format)

    # -- jobs ------------------------------------------------------------------------------
    def submit(self, kind: str, request: GenerationRequest) -> Job:
        """Check and queue a job; a generation's model is fixed now, at submission.

        The one place every client's request passes before the queue: a generation that fails
        ``check_generation`` (sampler, size, batch and step limits) is a RequestError naming why.
        """
        if kind not in RUNNERS:
            raise RequestError(f"unknown job kind {kind!r}; known: {', '.join(sorted(RUNNERS))}")
        if kind in GENERATION_KINDS:
            check_generation([request], self.settings)
        if getattr(request, "extension_script", None) or getattr(request, "extension_alwayson", None):
            if self.extensions is None:
                raise RequestError("extension_script, extension_alwayson: no extensions are loaded in this app")
            self.extensions.check_request(kind, request)
        if kind in MODEL_FREE:
            return self.queue.submit(kind, request)
        name = request.sd_model_checkpoint or request.override_settings.get("sd_model_checkpoint")
        name = self.checkpoints.get(name).name if name else self.selected_checkpoint
        vae = self.resolve_vae(request.sd_vae or request.override_settings.get("sd_vae"))
        update = {"sd_model_checkpoint": name, "sd_vae": vae}
        refiner_name = getattr(request, "refiner_checkpoint", None)
        if refiner_name:  # an unknown refiner fails now, naming the field
            try:
                update["refiner_checkpoint"] = self.checkpoints.get(refiner_name).name
            except CheckpointError as err:
                raise RequestError(f"refiner_checkpoint: {err}") from None
        request = request.model_copy(update=update)
        return self.queue.submit(kind, request)

    def submit_all(self, requests: list[tuple[str, Any]]) -> list[Job]:
        """Check the (kind, request) pairs together (an X/Y grid's step total counts them all), then
        submit each; if one is refused, those already queued are cancelled and the error re-raised."""
        check_generation([request for kind, request in requests if kind in GENERATION_KINDS], self.settings)
        jobs: list[Job] = []
        try:
            for kind, request in requests:
                jobs.append(self.submit(kind, request))
        except Exception:
            for job in jobs:
                self.queue.cancel(job.id)
            raise
        return jobs

    def run_job(self, job: Job) -> Any:
        """The worker routine: runs one job on the device."""
        if job.kind == "load_model":
            with self._naming_the_model(job.kind, job.request), self.models.use(job.request) as model:
                return model.info.name
        runner = RUNNERS[job.kind]
        if job.kind in MODEL_FREE:
            ctx = RunContext(None, self.settings, self.saver, job.token, job.progress, VERSION, hooks=self.hooks)
            return self.hooks.run_processing(job.kind, job.request, ctx, runner)
        key = model_key(job.request.sd_model_checkpoint, job.request.sd_vae)
        tiling = bool(getattr(job.request, "tiling", False))
        with (self._naming_the_model(job.kind, key), self.models.use(key) as model,
              self._vae_tiling(model), self.networks.for_job(model) as networks,  # LoRAs out after
              seamless_tiling(model.pipe, tiling)):  # circular padding for this job only
            ctx = RunContext(model, self.settings, self.saver, job.token, job.progress, VERSION, controlnets=self,
                             networks=networks, hooks=self.hooks, refiners=JobRefiners(self, key, model))
            result = self.hooks.run_processing(job.kind, job.request, ctx, runner)  # extensions' hooks around it
        if job.kind == "train":  # a new checkpoint or LoRA file: listed at once, no restart
            training_job.refresh_lists(self)
        return result

    def group_size(self, head: Job, waiting: list[Job]) -> int:
        """The queue's batching rule: how many waiting jobs run in one batch with ``head`` (0 unless the
        setting ``batch_queue_jobs`` is on and no extension hooks into processing; ``modules.job_batching``)."""
        settings = self.settings
        if not settings.batch_queue_jobs or any(self.hooks.has(p) for p in job_batching.PROCESSING_HOOKS):
            return 0
        return job_batching.group_size((head.kind, head.request), [(job.kind, job.request) for job in waiting],
                                       settings.batch_queue_max)

    def run_group(self, jobs: list[Job]) -> list[Any]:
        """The worker routine for a group of txt2img jobs sampled as one batch (``processing.txt2img_group``):
        one outcome per job, its result or its exception."""
        first = jobs[0].request
        key = model_key(first.sd_model_checkpoint, first.sd_vae)
        with (self._naming_the_model(jobs[0].kind, key), self.models.use(key) as model, self._vae_tiling(model),
              seamless_tiling(model.pipe, bool(first.tiling)), ExitStack() as stack):
            ctxs = [RunContext(model, self.settings, self.saver, job.token, job.progress, VERSION, controlnets=self,
                               networks=stack.enter_context(self.networks.for_job(model)), hooks=self.hooks)
                    for job in jobs]
            outcomes = txt2img_group.run([job.request for job in jobs], ctxs)
        return [self.model_run_error(jobs[0].kind, key, o) if isinstance(o, RuntimeError) else o for o in outcomes]

    @contextmanager
    def _vae_tiling(self, model: LoadedModel) -> Iterator[None]:
        """VAE tiling and slicing as the settings say, on an accelerator (a shared VAE may serve several models)."""
        if self.runtime.device != "cpu":
            devices.apply_vae_tiling(model.pipe, self.settings.vae_tiling, self.settings.vae_slicing)
        yield

    @contextmanager
    def _naming_the_model(self, kind: str, key: str) -> Iterator[None]:
        """Turn a torch or diffusers RuntimeError inside the block into a one-line ModelRunError that
        names the checkpoint, dtype and device (Easel's own errors pass unchanged: they say what was wrong)."""
        try:
            yield
        except RuntimeError as err:
            named = self.model_run_error(kind, key, err)
            if named is err:
                raise
            raise named from err

    def model_run_error(self, kind: str, key: str, err: RuntimeError) -> RuntimeError:
        """``err`` as a ModelRunError naming the checkpoint, dtype and device; Easel's own errors unchanged."""
        if type(err).__module__.startswith("modules."):
            return err
        hint = ""
        if self.runtime.compile_unet and type(err).__module__.startswith(COMPILER_MODULES):
            hint = (" (--compile: torch.compile of the UNet failed; it needs a working C++ compiler, g++, on the CPU"
                    " and Triton on CUDA: install it or start Easel without --compile)")
        named = ModelRunError(f"{kind} on checkpoint {key!r} ({devices.dtype_name(self.runtime.dtype)} on "
                              f"{self.runtime.device}) failed: {one_line_error(err)}{hint}")
        named.__cause__ = err
        return named

    def close(self) -> None:
        if self.installer is not None:
            self.installer.close()
        self.queue.stop()
        self.models.clear()


@dataclass
class JobRefiners:
    """A job's refiner (``RunContext.refiners``): from the model cache beside the job's own model; the
    two take turns on the device (``ModelManager.share_device``), so with one model's room the one
    not in use is offloaded."""

    services: Services
    base_key: str
    base: LoadedModel
    _refiner_key: str | None = None

    @contextmanager
    def use_refiner(self, name: str) -> Iterator[LoadedModel]:
        """The refiner checkpoint ``name``, locked for the block; the job's model stays on the device until
        ``to_device`` asks for the refiner."""
        models = self.services.models
        key = model_key(name, None)
        models.ensure_loaded(key)
        with models.share_device(self.base_key, key), models.use(key) as model:
            models.to_device(self.base_key)
            self._refiner_key = key
            try:
                yield model
            finally:
                self._refiner_key = None

    def to_device(self, model: LoadedModel) -> None:
        """The job's model or the refiner on the device now (the other offloaded if room is short)."""
        key = self.base_key if model is self.base else self._refiner_key
        if key is not None:
            self.services.models.to_device(key)

    def refiner_title(self, name: str) -> str:
        """A1111's title of a checkpoint (``name [hash]``), as the infotext's ``Refiner`` records it."""
        return self.services.checkpoints.title(self.services.checkpoints.get(name))


RUNNERS = {
    "txt2img": txt2img.run,
    "img2img": img2img.run,  # also sketch (init image = drawing over the picture) and inpaint (mask set)
    "inpaint": img2img.run,
    "outpaint": outpaint.run,
    "extras": extras.run,
    "controlnet_detect": controlnet_detect.run,  # preprocessor preview (POST /controlnet/detect, the UI)
    "train": training_job.run,  # DreamBooth, LoRA, textual inversion (modules/training); owns the worker while it runs
}
MODEL_FREE = {"extras", "controlnet_detect"}  # job kinds that load no checkpoint


VAE_MARK = " + VAE "


def model_key(checkpoint: str, vae: str | None) -> str:
    """The model cache's key: a checkpoint, with the VAE file that replaces its own, if any."""
    return f"{checkpoint}{VAE_MARK}{vae}" if vae else checkpoint


def split_model_key(key: str) -> tuple[str, str | None]:
    checkpoint, _, vae = key.partition(VAE_MARK)
    return checkpoint, vae or None


def component_bytes(component: Any) -> int:
    """Bytes of a cached component: a torch module, or a LoadedControlNet."""
    return component.size_bytes() if isinstance(component, LoadedControlNet) else devices.module_bytes(component)


def component_min_device_bytes(component: Any) -> int:
    """The least a component runs with on the device: a UNet its largest block (the rest can run from
    the CPU, ``modules.partial_offload``); anything else all of it."""
    from diffusers import UNet2DConditionModel

    if isinstance(component, UNet2DConditionModel):
        return partial_offload.min_device_bytes(component)
    return component_bytes(component)


def move_component(component: Any, device: str, max_bytes: int | None, memory_mode: str) -> int:
    """The model cache's move: a component wholly or partly (``max_bytes``) to ``device``; the bytes placed."""
    if isinstance(component, LoadedControlNet):
        controlnet_runtime.move(component, device, memory_mode)
        return 0 if device == "cpu" else component.size_bytes()
    return partial_offload.place(component, device, max_bytes)


def output_folders(settings: Settings) -> list[Path]:
    """The folders generated images are saved in (every ``outdir_*`` setting)."""
    return [settings.path(getattr(settings, name)) for name in type(settings).model_fields if name.startswith("outdir_")]


def build_services(settings: Settings, start: bool = True, access: ClientAccess | None = None,
                   allow_downloads: bool = False, outputs: ImageOutputs | None = None) -> Services:
    """Every service for ``settings``; ``allow_downloads`` is the operator's --allow-downloads (model installs);
    ``outputs`` sends saved images elsewhere than the data folder (``modules.outputs_url``; None: the folder)."""
    runtime = make_runtime(settings)
    hooks = HookRegistry()
    remove_stale_temp_files(output_folders(settings))  # left by saves that a crash or power cut interrupted
    hashes = HashCache(settings.cache_dir / "hashes.json")
    registry = CheckpointRegistry(settings.checkpoint_dirs, hashes)

    controlnet_dir = settings.models_dir / "ControlNet"
    part_hashes = PartHashes(settings.cache_dir / "component_hashes.json", hashes)
    options = PartOptions(runtime.dtype, runtime.vae_dtype, runtime.attention, runtime.channels_last, runtime.compile_unet)
    source = CheckpointSource(registry, part_hashes, settings.models_dir / "VAE", options, hooks.model_loaded)

    def recipe(key: str) -> ModelRecipe:
        if controlnet_runtime.is_controlnet_key(key):
            return controlnet_runtime.recipe(key, controlnet_dir, part_hashes.of_files, runtime.dtype,
                                             runtime.attention, runtime.channels_last)
        return checkpoint_recipe(source, *split_model_key(key))

    models = ModelManager(
        recipe=recipe,
        size_of=component_bytes,
        move=lambda component, device, max_bytes: move_component(component, device, max_bytes, runtime.memory_mode),
        probe=devices.TorchMemoryProbe(),
        compute_device=runtime.device,
        settings=cache_settings(settings, runtime.memory_mode),
        discard=lambda components: devices.empty_cache(runtime.device),
        min_device_bytes=None if runtime.device == "cpu" else component_min_device_bytes,  # the CPU: never partial
    )
    holder: dict[str, Services] = {}
    queue_bytes = settings.max_queue_mb * 1024 * 1024  # waiting jobs' input images; kept results, the same
    queue = JobQueue(lambda job: holder["s"].run_job(job), max_queued=settings.max_queue, max_queued_bytes=queue_bytes,
                     max_finished_bytes=queue_bytes, size_of=image_bytes, release=without_input_images,
                     group_size=lambda head, waiting: holder["s"].group_size(head, waiting),
                     run_group=lambda jobs: holder["s"].run_group(jobs))
    access = access or ClientAccess()
    saver = HookedSaver(settings.samples_format, hooks, outputs)  # A1111's samples_format: png, jpg or webp files
    services = Services(settings, runtime, registry, models, saver, queue, build_extra_networks(settings, hashes), access,
                        hooks=hooks)
    target = target_from_settings(settings, allow_downloads, access.allow_server_paths)
    services.installer = Installer(target, on_installed=lambda _: training_job.refresh_lists(services))
    holder["s"] = services
    if start:
        queue.start()
    return services
