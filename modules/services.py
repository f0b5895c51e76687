"""The services container: every long-lived object, built once and handed in explicitly.

``build_services(settings)`` wires checkpoints, the model cache, the image saver and the job
queue together; ``Services.run_job`` is the queue's one worker routine, the only code that
touches the device. Clients (CLI, UI, API) only build requests and call ``submit``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from modules import devices
from modules.checkpoints import CheckpointError, CheckpointRegistry, HashCache
from modules.config import Settings
from modules.images import ImageSaver
from modules.jobs import Job, JobQueue
from modules.model_loading import LoadedModel, load_checkpoint
from modules.model_manager import CacheSettings, ModelManager
from modules.processing import extras, img2img, outpaint, txt2img
from modules.processing.context import RunContext
from modules.schemas import GenerationRequest, RequestError

VERSION = "easel-0.1"


@dataclass
class Runtime:
    """Device choices made once from the settings."""

    device: str
    dtype: Any
    attention: str
    memory_mode: str


def cache_settings(settings: Settings) -> CacheSettings:
    gb = 1 << 30
    return CacheSettings(
        max_models=settings.sd_checkpoints_limit,
        max_ram_bytes=int(settings.sd_checkpoints_max_ram_gb * gb) if settings.sd_checkpoints_max_ram_gb else None,
        reserve_bytes=int(settings.reserve_vram_gb * gb),
    )


def make_runtime(settings: Settings) -> Runtime:
    device = devices.choose_device(settings.device)
    return Runtime(
        device=device,
        dtype=devices.choose_dtype(device, settings.precision),
        attention=devices.choose_attention(device, settings.attention),
        memory_mode=settings.memory_mode,
    )


@dataclass
class Services:
    settings: Settings
    runtime: Runtime
    checkpoints: CheckpointRegistry
    models: ModelManager
    saver: ImageSaver
    queue: JobQueue
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
        return self.queue.submit("load_model", name)

    # -- settings (added for the HTTP API's POST /sdapi/v1/options) -------------------------
    def update_settings(self, new_settings: Settings) -> None:
        """Replace the settings: jobs that start from now on see them; a running job keeps its own.

        The model cache limits follow at once. Settings read once at start-up (device,
        precision, attention, memory mode, max_queue) take effect at the next start. The caller
        saves config.json; selecting another checkpoint is ``select_checkpoint``'s job.
        """
        with self._lock:
            self.settings = new_settings
        self.models.set_settings(cache_settings(new_settings))

    # -- jobs ------------------------------------------------------------------------------
    def submit(self, kind: str, request: GenerationRequest) -> Job:
        """Queue a generation; the model it runs on is fixed now, at submission."""
        if kind not in RUNNERS:
            raise RequestError(f"unknown job kind {kind!r}; known: {', '.join(sorted(RUNNERS))}")
        name = request.sd_model_checkpoint or request.override_settings.get("sd_model_checkpoint")
        name = self.checkpoints.get(name).name if name else self.selected_checkpoint
        request = request.model_copy(update={"sd_model_checkpoint": name})
        return self.queue.submit(kind, request)

    def run_job(self, job: Job) -> Any:
        """The worker routine: runs one job on the device."""
        if job.kind == "load_model":
            with self.models.use(job.request) as model:
                return model.info.name
        runner = RUNNERS[job.kind]
        if job.kind in MODEL_FREE:
            return runner(job.request, RunContext(None, self.settings, self.saver, job.token, job.progress, VERSION))
        with self.models.use(job.request.sd_model_checkpoint) as model:
            ctx = RunContext(model, self.settings, self.saver, job.token, job.progress, VERSION)
            return runner(job.request, ctx)

    def close(self) -> None:
        self.queue.stop()
        self.models.clear()


RUNNERS = {
    "txt2img": txt2img.run,
    "img2img": img2img.run,  # also sketch (init image = drawing over the picture) and inpaint (mask set)
    "inpaint": img2img.run,
    "outpaint": outpaint.run,
    "extras": extras.run,
}
MODEL_FREE = {"extras"}  # job kinds that load no checkpoint


def load_model_for(services_runtime: Runtime, registry: CheckpointRegistry, name: str) -> LoadedModel:
    """Load a checkpoint by name and prepare it for the runtime's device, dtype and attention."""
    info = registry.get(name)
    model = load_checkpoint(info, registry.short_hash(info))
    pipe = model.pipe
    if pipe.unet.dtype != services_runtime.dtype:
        pipe.to(dtype=services_runtime.dtype)
    devices.apply_attention(pipe, services_runtime.attention)
    return model


def build_services(settings: Settings, start: bool = True) -> Services:
    runtime = make_runtime(settings)
    registry = CheckpointRegistry(settings.checkpoint_dirs, HashCache(settings.cache_dir / "hashes.json"))

    def move(model: LoadedModel, device: str) -> None:
        mode = runtime.memory_mode if device != "cpu" else "normal"
        devices.apply_memory_mode(model.pipe, mode, device)
        devices.apply_vae_tiling(model.pipe, settings.vae_tiling, settings.vae_slicing)

    def estimate(name: str) -> int:
        try:
            info = registry.get(name)
        except CheckpointError:
            return 0
        return info.path.stat().st_size if info.kind == "single" else 0

    models = ModelManager(
        load=lambda name: load_model_for(runtime, registry, name),
        size_of=lambda m: m.size_bytes(),
        move=move,
        probe=devices.TorchMemoryProbe(),
        compute_device=runtime.device,
        settings=cache_settings(settings),
        estimate_size=estimate,
        discard=lambda m: devices.empty_cache(runtime.device),
    )
    holder: dict[str, Services] = {}
    queue = JobQueue(lambda job: holder["s"].run_job(job), max_queued=settings.max_queue)
    services = Services(settings, runtime, registry, models, ImageSaver(), queue)
    holder["s"] = services
    if start:
        queue.start()
    return services
