"""The training job: ``run(request, ctx)`` on the queue's worker, and ``build_request`` before it.

Clients (CLI, API, UI) call ``build_request`` (images read, every check that can be made before
the job: the base checkpoint's family, the LoRA to continue from, an existing output, warnings)
and submit the request as job kind ``train``. The worker runs ``run``, which owns the device like
any job (generation submitted meanwhile waits its turn in the queue):

1. resolve the base model (SD 1.x/2.x), resolution, device, precision and the output path;
2. prepare the instance images; generate (or reuse) the class images with the base model;
3. encode the images once with the VAE; build the method on private copies of what it trains;
4. resume from ``cache/train-state/<method>-<name>/state.pt`` when the same training saved one;
5. train: progress, loss history and samples in the request's ``TrainMonitor``; a state every
   ``save_every`` steps; a cancel saves the state at the step reached, then ends the job;
6. write the result atomically (temporary file, rename), then drop the state.

The cached model that generation uses is never changed: DreamBooth and LoRA train copies, textual
inversion only its own vectors (through a hook removed when the job ends).
"""

from __future__ import annotations

import inspect
import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.checkpoints import UNET_IN_KEY, CheckpointInfo
from modules.jobs import JobCancelled, ProgressSink
from modules.lora import LoraError, tensor_shapes
from modules.processing.context import RunContext
from modules.schemas import RequestError, Txt2ImgRequest
from modules.training import data, outputs
from modules.training.config import TrainOptions, TrainRequest, parse_train_request, training_warnings
from modules.training.loop import (
    LoopData,
    LoopState,
    averaged_weights,
    encode_latents,
    fingerprint,
    load_state,
    make_ema,
    make_lr_scheduler,
    make_optimizer,
    make_precision,
    run_loop,
    save_state,
)

KIND = "train"
CONTEXT_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
SDXL_PREFIX = "conditioner.embedders.1."
MAX_LOSSES_SHOWN = 2000


# --------------------------------------------------------------------------- live state


@dataclass(frozen=True)
class TrainSnapshot:
    """The monitor at one moment (copies, safe to read from any thread)."""

    phase: str
    step: int
    total: int
    losses: list[float]
    samples: list[Any]
    sample_step: int
    warnings: list[str]
    output_path: str | None
    resumed_from: int
    started: float | None


class TrainMonitor:
    """Thread-safe live state of one training: the worker writes, the API and UI read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phase = "queued"
        self._step = 0
        self._total = 0
        self._losses: list[float] = []
        self._samples: list[Any] = []
        self._sample_step = 0
        self._warnings: list[str] = []
        self._output: str | None = None
        self._resumed_from = 0
        self._started: float | None = None

    def phase(self, phase: str) -> None:
        with self._lock:
            self._phase = phase
            if phase != "queued" and self._started is None:
                self._started = time.time()

    def warn(self, messages: list[str]) -> None:
        with self._lock:
            self._warnings.extend(m for m in messages if m not in self._warnings)

    def steps(self, step: int, total: int, losses: list[float] | None = None) -> None:
        with self._lock:
            self._step, self._total = step, total
            if losses is not None:
                self._losses = list(losses)

    def resumed(self, step: int) -> None:
        with self._lock:
            self._resumed_from = step

    def samples(self, images: list[Any], step: int) -> None:
        with self._lock:
            self._samples, self._sample_step = list(images), step

    def output(self, path: Path) -> None:
        with self._lock:
            self._output = str(path)

    def snapshot(self) -> TrainSnapshot:
        with self._lock:
            return TrainSnapshot(self._phase, self._step, self._total, list(self._losses), list(self._samples),
                                 self._sample_step, list(self._warnings), self._output, self._resumed_from, self._started)


@dataclass
class TrainResult:
    """What a finished training returns (``job.result``)."""

    method: str
    output_path: str
    steps: int
    losses: list[float]
    resumed_from: int
    warnings: list[str] = field(default_factory=list)
    samples: list[Any] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.method} training of {self.steps} steps written to {self.output_path}"


# --------------------------------------------------------------------------- before the job


def read_header_shapes(info: CheckpointInfo) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a single-file ``.safetensors`` checkpoint from its header ({} otherwise)."""
    if info.kind != "single" or info.path.suffix.lower() != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(info.path), "pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()
                    if key in (UNET_IN_KEY, CONTEXT_KEY) or key.startswith(SDXL_PREFIX)}
    except Exception:  # noqa: BLE001 - a damaged file fails properly when the job loads it
        return {}


def base_context_width(info: CheckpointInfo) -> int | None:
    """The UNet's cross-attention width (768 SD 1.x, 1024 SD 2.x), read without loading the model."""
    if info.kind == "diffusers":
        try:
            return int(json.loads((info.path / "unet" / "config.json").read_text())["cross_attention_dim"])
        except (OSError, KeyError, ValueError, TypeError):
            return None
    shape = read_header_shapes(info).get(CONTEXT_KEY)
    return shape[1] if shape else None


def check_base(info: CheckpointInfo) -> None:
    """RequestError for a base the trainers do not handle (SDXL, inpainting), read from the header."""
    shapes = read_header_shapes(info)
    if any(k.startswith(SDXL_PREFIX) for k in shapes):
        raise RequestError(f"sd_model_checkpoint: {info.name} is an SDXL checkpoint; training supports SD 1.x and "
                           "2.x checkpoints")
    if UNET_IN_KEY in shapes and shapes[UNET_IN_KEY][1] != 4:
        raise RequestError(f"sd_model_checkpoint: {info.name} is an inpainting checkpoint; train on its base model")


def lora_width(shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The cross-attention width a LoRA was made for (the input width of an attn2 to_k down matrix)."""
    for key, shape in shapes.items():
        flat = key.replace(".", "_")
        if "attn2" in flat and "to_k" in flat and ("lora_down" in flat or "lora_A" in flat) and len(shape) == 2:
            return shape[1]
    return None


def check_init_lora(services: Any, request: TrainOptions, info: CheckpointInfo) -> None:
    """RequestError when the LoRA to continue from is unknown or of another model family than the base."""
    try:
        lora = services.networks.loras.find(request.init_lora)
        shapes = tensor_shapes(lora.path)
    except LoraError as err:
        raise RequestError(f"init_lora: {err}") from None
    width, base = lora_width(shapes), base_context_width(info)
    if width is not None and base is not None and width != base:
        from modules.lora import WIDTH_FAMILIES

        family = WIDTH_FAMILIES.get(width, f"a {width}-wide model")
        base_family = WIDTH_FAMILIES.get(base, f"a {base}-wide model")
        raise RequestError(f"init_lora: LoRA {lora.name!r} is for {family} (cross-attention width {width}); the base "
                           f"checkpoint {info.name!r} is {base_family} ({base}). Choose a base of the LoRA's family")


def build_request(services: Any, values: dict[str, Any], uploads: list[Any] | None = None,
                  folder: str | None = None) -> TrainRequest:
    """A checked TrainRequest from named values and the images (uploads and/or a server folder).

    Everything that can fail before the job fails here, as a RequestError (or CheckpointError)
    naming the field: bad values, fewer than 3 readable images, an unknown or unsuitable base, a
    LoRA of another family, an existing output without overwrite, resume 'yes' without a state.
    """
    from modules.model_loading import make_tokenizer

    folder = folder or values.get("instance_dir")
    if folder:
        folder = services.access.server_folder("instance_dir", str(folder))
    max_pixels = services.settings.max_input_pixels
    found = data.load_instance_images(uploads, folder, values.get("instance_captions"), max_pixels)
    warnings, images = found.warnings, found.images
    fields = {**values, "instance_dir": str(folder) if folder else None, "instance_images": images,
              "instance_captions": found.captions}
    request = parse_train_request(fields)
    if request.class_dir and request.with_prior_preservation:
        folder_path = services.access.server_folder("class_dir", request.class_dir)
        request = _with_class_images(request, folder_path, warnings, max_pixels)
    elif request.class_dir:
        warnings.append("class_dir is used only with prior preservation: its images are ignored")
    info = services.checkpoints.get(request.sd_model_checkpoint or services.selected_checkpoint)
    check_base(info)
    if request.init_lora:
        check_init_lora(services, request, info)
    settings = services.settings
    try:
        outputs.check_name_free(outputs.output_path(settings, request.method, request.output_name), request.overwrite)
    except outputs.OutputExists as err:
        raise RequestError(str(err)) from None
    state = outputs.state_path(settings, request.method, request.output_name)
    if request.resume == "yes" and not state.exists():
        raise RequestError(f"resume: there is no saved state of a {request.method} training named "
                           f"{request.output_name!r} to resume; start it instead")
    warnings += training_warnings(request, len(images), make_tokenizer())
    if request.resume == "auto" and state.exists():
        warnings.append(f"a saved state of {request.output_name!r} exists: the training continues from it if its "
                        "settings and images are the same")
    return request.model_copy(update={"sd_model_checkpoint": info.name, "warnings": warnings})


def _with_class_images(request: TrainRequest, folder: Path, warnings: list[str], max_pixels: int) -> TrainRequest:
    """The request with the class images of ``class_dir`` (``folder``: at most num_class_images) and their captions."""
    if not folder.is_dir():
        raise RequestError(f"class_dir: folder {str(folder)!r} not found (give a folder of class images on the server, "
                           "or none to generate them with the base model)")
    found = data.load_instance_images(folder=folder, max_pixels=max_pixels)
    if not found.images:
        raise RequestError(f"class_dir: no readable images in {str(folder)!r}")
    warnings += [f"class image {w}" for w in found.warnings]
    n = request.num_class_images
    bare = [name for name, caption in zip(found.names[:n], found.captions[:n], strict=True) if not caption]
    if bare and not request.class_prompt.strip():
        raise RequestError(f"class_prompt: required for the class images without a caption: {', '.join(bare[:5])}")
    return request.model_copy(update={"class_images": found.images[:n], "class_captions": found.captions[:n]})


def submit(services: Any, request: TrainRequest):
    """Queue the training (it waits for the jobs before it; later jobs wait for it)."""
    request.monitor.warn(request.warnings)
    return services.submit(KIND, request)


# --------------------------------------------------------------------------- the job


def _noise_scheduler(config: Any):
    from diffusers import DDPMScheduler

    accepted = inspect.signature(DDPMScheduler.__init__).parameters
    return DDPMScheduler(**{k: v for k, v in dict(config).items() if k in accepted})


def _build_method(request: TrainRequest, pipe: Any, device: str, services_lora_dir: Path):
    if request.method == "dreambooth":
        from modules.training.dreambooth import FullDreamBooth

        return FullDreamBooth(pipe, request, device)
    if request.method == "lora":
        from modules.training.lora_train import InitLoraError, LoraMethod

        init = None
        if request.init_lora:
            from modules.checkpoints import read_state_dict

            init = read_state_dict(_find_lora_file(services_lora_dir, request.init_lora))
        try:
            return LoraMethod(pipe, request, device, init)
        except InitLoraError as err:
            raise RequestError(str(err)) from None
    from modules.training.textual_inversion import TextualInversion

    return TextualInversion(pipe, request, device)


def _find_lora_file(folder: Path, name: str) -> Path:
    from modules.lora import scan_loras

    for lora in scan_loras(folder):
        if name in (lora.name, lora.alias):
            return lora.path
    raise RequestError(f"init_lora: LoRA {name!r} not found in {folder}")


def _check_model(ctx: RunContext, request: TrainRequest) -> int:
    """The training resolution; RequestError for an unsuitable model or size."""
    model = ctx.model
    if model.is_sdxl or model.pipe.unet.config.in_channels != 4:
        raise RequestError(f"sd_model_checkpoint: {model.info.name} is {'SDXL' if model.is_sdxl else 'an inpainting model'}; "
                           "training supports SD 1.x and 2.x checkpoints")
    resolution = request.resolution or model.native_size
    step = model.vae_scale_factor * 2 ** (len(model.pipe.unet.config.block_out_channels) - 1)
    if resolution % step:
        raise RequestError(f"resolution: {resolution} must be a multiple of {step} for this model "
                           f"(nearest: {max(step, round(resolution / step) * step)})")
    if resolution > ctx.settings.max_side:
        raise RequestError(f"resolution: {resolution} is larger than the limit of {ctx.settings.max_side} (max_side)")
    return resolution


def _class_images(ctx: RunContext, request: TrainRequest, resolution: int, checkpoint_id: str,
                  monitor: TrainMonitor) -> list:
    """The class images of prior preservation: cached, or generated with the base model (txt2img core)."""
    from modules.processing import txt2img

    settings = ctx.settings
    sampler = settings.default_sampler
    prompts = request.class_prompts()
    key = data.class_key(checkpoint_id, ctx.model.vae_name, prompts if len(prompts) > 1 else prompts[0], resolution,
                         request.class_steps, request.class_cfg_scale, sampler)
    folder = settings.cache_dir / "class_images" / key
    monitor.phase("class images")

    def generate(first_seed: int, n: int) -> list:
        """Images first_seed .. first_seed+n-1; image i is drawn for class prompt i (cycling), seed i."""
        images: list = []
        while len(images) < n:
            seed = first_seed + len(images)
            batch = 1 if len(prompts) > 1 else n  # one prompt: a batch; several: one image each
            req = Txt2ImgRequest(prompt=prompts[seed % len(prompts)], seed=seed, batch_size=batch,
                                 steps=request.class_steps, cfg_scale=request.class_cfg_scale, width=resolution,
                                 height=resolution, sampler_name=sampler, save_images=False)
            sub = RunContext(ctx.model, settings, None, ctx.token, ProgressSink(), ctx.version)  # no LoRAs: the base
            images += txt2img.run(req, sub).images
        return images

    def progress(done: int, total: int) -> None:
        ctx.progress.update(done, total, textinfo="generating class images")
        monitor.steps(done, total)

    return data.generate_class_images(folder, request.num_class_images, generate, progress)


def _resume_state(request: TrainRequest, path: Path, expected: str) -> dict[str, Any] | None:
    """The saved state to continue from, or None to start; RequestError when it cannot be used."""
    if request.resume == "no" or not path.exists():
        if request.resume == "yes":
            raise RequestError(f"resume: no saved state at {path}")
        return None
    saved = load_state(path)
    if saved.get("fingerprint") != expected:
        raise RequestError(
            f"resume: the saved state of {request.output_name!r} (step {saved.get('step')}) was made with other "
            "settings, images or base model; use the same ones to continue, another output name, or resume 'no' "
            "to start over")
    return saved


def _metadata(request: TrainRequest, model: Any, steps: int, resolution: int) -> dict[str, str]:
    return {
        "ss_output_name": request.output_name,
        "ss_sd_model_name": model.info.model_name,
        "ss_steps": str(steps),
        "ss_learning_rate": str(request.lr),
        "ss_resolution": f"({resolution}, {resolution})",
        "easel_method": request.method,
        "easel_instance_prompt": request.instance_prompt,
        "easel_class_prompt": request.class_prompt,
        "easel_base_hash": model.short_hash or "",
        "sd_checkpoint": model.short_hash or "",
        "sd_checkpoint_name": model.info.model_name,
        "step": str(steps),
    }


def run(request: TrainRequest, ctx: RunContext) -> TrainResult:
    """Train as the request says; returns where the result was written."""
    monitor = request.monitor
    monitor.phase("preparing")
    # 1. the base model, resolution, device, precision, output
    model, settings = ctx.model, ctx.settings
    pipe = model.pipe
    resolution = _check_model(ctx, request)
    device = str(next(pipe.unet.parameters()).device)
    runtime_warnings: list[str] = []
    precision = make_precision(device, request.mixed_precision, runtime_warnings)
    out = outputs.output_path(settings, request.method, request.output_name)
    try:
        outputs.check_name_free(out, request.overwrite)
    except outputs.OutputExists as err:
        raise RequestError(str(err)) from None
    state_file = outputs.state_path(settings, request.method, request.output_name)
    checkpoint_id = f"{model.info.name}:{model.short_hash}:{model.vae_name}"
    # 2. images: instance (prepared), class (generated once, cached)
    images = [data.prepare_image(image, resolution) for image in request.instance_images]
    fp = fingerprint(request, checkpoint_id, images)
    saved = _resume_state(request, state_file, fp)
    class_images = []
    if request.with_prior_preservation:
        class_images = list(request.class_images) or _class_images(ctx, request, resolution, checkpoint_id, monitor)
    # 3. latents once; the method on its own copies
    monitor.phase("preparing")
    loop_data = LoopData(encode_latents(pipe.vae, pipe.image_processor, images), request.instance_prompts())
    if class_images:
        classes = [data.prepare_image(image, resolution) for image in class_images]
        loop_data.classes = encode_latents(pipe.vae, pipe.image_processor, classes)
        prompts = request.class_prompts()
        loop_data.class_prompts = [prompts[i % len(prompts)] for i in range(len(classes))]
        loop_data.prior_loss_weight = request.prior_loss_weight
    method = _build_method(request, pipe, device, settings.path(settings.lora_dir))
    try:
        params = method.parameters()
        weight_decay = 0.0 if request.method == "textual_inversion" else 1e-2
        optimizer = make_optimizer(method.param_groups(), request, device, weight_decay, runtime_warnings)
        state = LoopState(optimizer, make_lr_scheduler(optimizer, request), ema=make_ema(params, request.ema_decay))
        monitor.warn(runtime_warnings)
        # 4. resume
        if saved is not None:
            state.restore(saved, method, precision)
            monitor.resumed(state.step)
        saved_at = state.step
        # 5. train
        monitor.phase("training")
        monitor.steps(state.step, request.steps, state.losses)
        ctx.progress.update(state.step, request.steps, textinfo="training")
        sample_texts = request.sample_prompts or request.instance_prompts()[:1]

        def checkpoint(loop_state: LoopState) -> None:
            nonlocal saved_at
            save_state(state_file, loop_state.to_dict(method, precision, fp))
            saved_at = loop_state.step

        def before_step(loop_state: LoopState) -> None:
            if ctx.token.cancelled:
                if loop_state.step > saved_at:
                    checkpoint(loop_state)  # cancel keeps what was trained: resume continues from here
                raise JobCancelled(f"training cancelled at step {loop_state.step}; its state is kept for resume")

        def on_step(loop_state: LoopState) -> None:
            preview = None
            step = loop_state.step
            if request.sample_every and step % request.sample_every == 0 and step < request.steps:
                preview = _samples(pipe, method, request, sample_texts, resolution, monitor, step)[0]
            if request.save_every and step % request.save_every == 0 and step < request.steps:
                checkpoint(loop_state)
            monitor.steps(step, request.steps, loop_state.losses[-MAX_LOSSES_SHOWN:])
            ctx.progress.update(step, request.steps, preview=preview, textinfo=f"loss {loop_state.losses[-1]:.4f}")

        run_loop(method, loop_data, _noise_scheduler(pipe.scheduler.config), request, state, precision, on_step,
                 before_step)
        # 6. final samples, the result file, the state dropped
        samples: list[Any] = []
        with averaged_weights(state, params):  # the EMA weights, when kept, are the result
            if request.sample_prompts or request.sample_every:
                samples = _samples(pipe, method, request, sample_texts, resolution, monitor, state.step)
            monitor.phase("saving")
            _write_output(request, model, method, out, state.step, resolution)
        monitor.output(out)
        shutil.rmtree(state_file.parent, ignore_errors=True)
        monitor.phase("done")
        return TrainResult(request.method, str(out), state.step, list(state.losses), monitor.snapshot().resumed_from,
                           monitor.snapshot().warnings, samples)
    finally:
        method.close()


def _samples(pipe: Any, method: Any, request: TrainRequest, texts: list[str], resolution: int,
             monitor: TrainMonitor, step: int) -> list[Any]:
    from modules.training.sampling import sample_images

    images = sample_images(pipe, method, texts, request.seed, request.sample_steps, resolution)
    monitor.samples(images, step)
    return images


def _write_output(request: TrainRequest, model: Any, method: Any, out: Path, steps: int, resolution: int) -> None:
    """The result file (and a DreamBooth model's companion yaml, written first and taken back if the model fails)."""
    metadata = _metadata(request, model, steps, resolution)
    yaml = out.with_suffix(".yaml")
    wrote_yaml = False
    if request.method == "dreambooth" and model.info.config_path is not None:  # the base's companion config
        yaml_text = model.info.config_path.read_text()
        outputs.write_atomically(yaml, lambda p: p.write_text(yaml_text), len(yaml_text), request.overwrite)
        wrote_yaml = True
    try:
        outputs.write_atomically(out, lambda p: method.write(p, metadata), method.estimate_bytes(), request.overwrite)
    except BaseException:
        if wrote_yaml:
            yaml.unlink(missing_ok=True)
        raise


def refresh_lists(services: Any) -> None:
    """Make a new checkpoint or LoRA show up in the lists (embeddings are scanned at every job)."""
    services.checkpoints.refresh()
    services.networks.loras.refresh()


def status_of(job: Any) -> TrainSnapshot:
    """The live state of a training job."""
    return job.request.monitor.snapshot()
