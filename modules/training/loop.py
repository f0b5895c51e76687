"""The training loop shared by the three methods, and the resumable state it saves.

A method (``dreambooth.FullDreamBooth``, ``lora_train.LoraMethod``, ``textual_inversion.TextualInversion``)
says what is trained and how a prompt is encoded; this module does the rest, top to bottom:

1. every step draws its randomness from a generator seeded with (seed, step): which images, the
   latent sample, the noise and the timesteps. A run resumed at step ``k`` therefore continues
   exactly as the uninterrupted run would have, given the saved weights, optimizer and LR scheduler;
2. the standard denoising loss (epsilon or v target, from the model's own scheduler config), optionally
   with offset noise, Min-SNR-gamma weights per timestep and caption dropout (the empty prompt); with
   prior preservation each batch also holds as many class images, whose loss is weighted apart;
3. AdamW (bitsandbytes' 8-bit AdamW when asked, on CUDA), diffusers' LR schedulers, gradient
   clipping, and on CUDA autocast to fp16/bf16 with a GradScaler for fp16; the trained weights
   stay fp32 (the CPU always trains in fp32); optionally an EMA of them (``averaged_weights``);
4. ``on_step`` (progress, samples, checkpoints, cancel) after every step.

The state file (``save_state``/``load_state``) holds the trained tensors, the optimizer, the LR
scheduler, the scaler, the loss history and a fingerprint of the request, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from modules.training.config import TrainOptions

CHUNK_TOKENS = 75  # tokens of one CLIP chunk between BOS and padding (as modules.prompts encodes)


# --------------------------------------------------------------------------- prompts


def text_token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without BOS/EOS, as ``modules.prompts`` reads a plain prompt."""
    return list(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))) if text else []


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """77 token ids as generation encodes a short prompt: BOS, the tokens (at most 75), then padding."""
    ids = text_token_ids(tokenizer, text)[:CHUNK_TOKENS]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [tokenizer.bos_token_id, *ids, *[pad] * (CHUNK_TOKENS + 1 - len(ids))]


def encode_ids(text_encoder: Any, ids: torch.Tensor) -> torch.Tensor:
    """The last hidden state for a batch of token ids [B, 77] (clip skip 1, as the samples use)."""
    return text_encoder(input_ids=ids.to(text_encoder.device)).last_hidden_state


def param_group(params: Any, lr: float | None = None, **options: Any) -> dict[str, Any]:
    """One optimizer parameter group; ``lr`` None: the optimizer's own (the request's learning rate)."""
    return {"params": list(params), **({"lr": lr} if lr is not None else {}), **options}


class TrainingMethod:
    """What one method trains. Subclasses set ``unet`` and implement the abstract parts."""

    name = "method"
    unet: torch.nn.Module

    def parameters(self) -> list[torch.nn.Parameter]:
        """The tensors the optimizer updates."""
        raise NotImplementedError

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Conditioning [B, 77, width] for the prompts, with a graph when the text side is trained."""
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (``param_group``): one, at the request's rate, unless a method says otherwise."""
        return [param_group(self.parameters())]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors (CPU copies), for the resumable state."""
        raise NotImplementedError

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def sample_parts(self) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, torch.Tensor] | None]:
        """(UNet, text encoder, embeddings for the prompt encoder) to draw sample images with."""
        raise NotImplementedError

    def write(self, path: Path, metadata: dict[str, str]) -> None:
        """Write the result file to ``path`` (a temporary name; the caller renames it)."""
        raise NotImplementedError

    def estimate_bytes(self) -> int:
        """About how many bytes ``write`` needs on disk."""
        raise NotImplementedError

    def close(self) -> None:
        """Undo anything done to the shared model (hooks, flags); called however the job ends."""

    def train_mode(self, on: bool) -> None:
        """Switch the private modules between training and evaluation (sampling)."""


# --------------------------------------------------------------------------- data on the device


@dataclass
class LatentSet:
    """Images encoded once by the VAE: the posterior's mean and std, scaled (sampled per step)."""

    mean: torch.Tensor  # [N, C, h, w]
    std: torch.Tensor

    def __len__(self) -> int:
        return self.mean.shape[0]

    def draw(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(self.mean[index].shape, generator=generator)
        return self.mean[index] + self.std[index] * noise


@torch.no_grad()
def encode_latents(vae: Any, image_processor: Any, images: list, batch: int = 8) -> LatentSet:
    """The VAE posterior of every image (same-size PIL images), on the CPU in fp32, times the scaling factor."""
    means, stds = [], []
    scale = vae.config.scaling_factor
    for start in range(0, len(images), batch):
        pixels = image_processor.preprocess(images[start : start + batch]).to(vae.device, vae.dtype)
        dist = vae.encode(pixels).latent_dist
        means.append(dist.mean.float().cpu() * scale)
        stds.append(dist.std.float().cpu() * scale)
    return LatentSet(torch.cat(means), torch.cat(stds))


# --------------------------------------------------------------------------- precision, optimizer


@dataclass
class Precision:
    """Autocast and loss scaling for the device: fp32 on the CPU, optional fp16/bf16 autocast on CUDA."""

    device: str
    dtype: torch.dtype | None  # None: no autocast
    scaler: Any

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=self.dtype)


def make_precision(device: str, mixed: str, warnings: list[str]) -> Precision:
    """fp16/bf16 autocast only on CUDA (with a GradScaler for fp16); otherwise fp32 and a warning."""
    on_cuda = torch.device(device).type == "cuda"
    if mixed != "no" and not on_cuda:
        warnings.append(f"mixed precision {mixed} is for CUDA; training on {device} in fp32")
        mixed = "no"
    dtype = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed]
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16) if on_cuda else None
    return Precision(device, dtype, scaler)


def make_optimizer(params: list, options: TrainOptions, device: str, weight_decay: float,
                   warnings: list[str]) -> torch.optim.Optimizer:
    """AdamW over ``params`` (tensors, or parameter groups that may set their own ``lr`` and ``weight_decay``);
    bitsandbytes' AdamW8bit when asked and both it and CUDA are there (else a warning)."""
    if options.use_8bit_adam:
        if torch.device(device).type != "cuda":
            warnings.append(f"8-bit Adam needs CUDA; using AdamW on {device}")
        else:
            try:
                import bitsandbytes as bnb  # noqa: PLC0415 - optional, CUDA only

                return bnb.optim.AdamW8bit(params, lr=options.lr, weight_decay=weight_decay)
            except ImportError:
                warnings.append("8-bit Adam needs the bitsandbytes package (not installed); using AdamW")
    return torch.optim.AdamW(params, lr=options.lr, weight_decay=weight_decay, foreach=True)


def make_lr_scheduler(optimizer: torch.optim.Optimizer, options: TrainOptions):
    from diffusers.optimization import get_scheduler

    return get_scheduler(options.lr_scheduler, optimizer, num_warmup_steps=options.lr_warmup_steps,
                         num_training_steps=options.steps)


# --------------------------------------------------------------------------- the resumable state


FINGERPRINT_EXCLUDES = {"overwrite", "resume", "sample_prompts", "sample_every", "sample_steps", "save_every",
                        "warnings", "instance_images", "instance_dir", "max_minutes", "class_images", "class_dir"}


def fingerprint(options: TrainOptions, checkpoint_id: str, images: list) -> str:
    """sha256 of what decides the trained weights: the options (not the output cadence), the base
    checkpoint and the image pixels (instance images, then any class images given as files). A saved
    state is resumed only by the same fingerprint."""
    h = hashlib.sha256()
    fields = options.model_dump(exclude=FINGERPRINT_EXCLUDES)
    h.update(json.dumps(fields, sort_keys=True, default=str).encode())
    h.update(checkpoint_id.encode())
    for image in [*images, *getattr(options, "class_images", [])]:
        h.update(image.tobytes())
    return h.hexdigest()


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: a kill mid-write leaves the previous state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(path: Path) -> dict[str, Any]:
    """A saved state, read with the safe ``weights_only`` loader."""
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- the loop


@dataclass
class LoopData:
    """What the loop draws batches from."""

    instance: LatentSet
    instance_prompts: list[str]  # one per instance image
    classes: LatentSet | None = None
    class_prompts: list[str] = field(default_factory=list)  # one per class image
    prior_loss_weight: float = 1.0


@dataclass
class LoopState:
    """Everything that changes from step to step (and what is saved to resume)."""

    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    step: int = 0
    losses: list[float] = field(default_factory=list)
    ema: Any = None  # diffusers' EMAModel of the trained tensors, when ema_decay is set

    def to_dict(self, method: TrainingMethod, precision: Precision, fingerprint_text: str) -> dict[str, Any]:
        return {
            "fingerprint": fingerprint_text,
            "step": self.step,
            "losses": list(self.losses),
            "trainable": method.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": precision.scaler.state_dict() if precision.scaler is not None else {},
            "ema": self.ema.state_dict() if self.ema is not None else {},
        }

    def restore(self, saved: dict[str, Any], method: TrainingMethod, precision: Precision) -> None:
        method.load_trainable_state(saved["trainable"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.lr_scheduler.load_state_dict(saved["lr_scheduler"])
        if precision.scaler is not None and saved.get("scaler"):
            precision.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None and saved.get("ema"):
            self.ema.load_state_dict(saved["ema"])
        self.step = int(saved["step"])
        self.losses = [float(x) for x in saved["losses"]]


def make_ema(params: list[torch.nn.Parameter], decay: float) -> Any:
    """diffusers' EMAModel of the trained tensors (its decay warms up as (1 + step) / (10 + step)); None when off."""
    if not decay:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=decay)


@contextmanager
def averaged_weights(state: LoopState, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """The EMA weights in the trained tensors for the duration (the last step's weights put back after)."""
    if state.ema is None:
        yield
        return
    state.ema.store(params)
    state.ema.copy_to(params)
    try:
        yield
    finally:
        state.ema.restore(params)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one step: the same (seed, step) always draws the same batch and noise."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


def min_snr_weights(noise_scheduler: Any, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights of each sample's loss: min(SNR, gamma) / SNR for an epsilon target,
    min(SNR, gamma) / (SNR + 1) for a v target (the weighting diffusers' training scripts use)."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def dropout_rates(options: TrainOptions, instances: int, images: int) -> torch.Tensor:
    """Each image's chance of being trained on the empty prompt: ``caption_dropout`` for every image;
    the class images (those after the ``instances`` instance images) at least ``class_caption_dropout``."""
    rates = torch.full((images,), options.caption_dropout)
    rates[instances:] = max(options.caption_dropout, options.class_caption_dropout)
    return rates


def training_step(method: TrainingMethod, data: LoopData, noise_scheduler: Any, options: TrainOptions,
                  state: LoopState, precision: Precision, params: list[torch.nn.Parameter]) -> float:
    """One optimizer step; returns its loss."""
    g = step_generator(options.seed, state.step)
    bs = options.batch_size
    index = torch.randint(len(data.instance), (bs,), generator=g)
    latents = data.instance.draw(index, g)
    prompts = [data.instance_prompts[i] for i in index.tolist()]
    if data.classes is not None:
        class_index = torch.randint(len(data.classes), (bs,), generator=g)
        latents = torch.cat([latents, data.classes.draw(class_index, g)])
        prompts += [data.class_prompts[i] for i in class_index.tolist()]
    rates = dropout_rates(options, bs, len(prompts))
    if rates.any():
        dropped = (torch.rand(len(prompts), generator=g) < rates).tolist()
        prompts = ["" if drop else text for text, drop in zip(prompts, dropped, strict=True)]
    noise = torch.randn(latents.shape, generator=g)
    if options.noise_offset:
        noise = noise + options.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=g)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    unet = method.unet
    device = next(unet.parameters()).device
    with precision.autocast():
        cond = method.encode(prompts)
        unet_dtype = next(unet.parameters()).dtype
        pred = unet(noisy.to(device, unet_dtype), timesteps.to(device), cond.to(unet_dtype)).sample
    pred, target = pred.float(), target.to(device)
    per_image = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    if options.snr_gamma is not None:
        per_image = per_image * min_snr_weights(noise_scheduler, timesteps, options.snr_gamma).to(device)
    if data.classes is not None:
        instance_loss, prior_loss = per_image.chunk(2)
        loss = instance_loss.mean() + data.prior_loss_weight * prior_loss.mean()
    else:
        loss = per_image.mean()
    scaler = precision.scaler
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward(inputs=params)
        scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(params, options.max_grad_norm)
        scaler.step(state.optimizer)
        scaler.update()
    else:
        loss.backward(inputs=params)  # gradients only for the trained tensors, never the shared model's
        torch.nn.utils.clip_grad_norm_(params, options.max_grad_norm)
        state.optimizer.step()
    state.lr_scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.ema is not None:
        state.ema.step(params)
    state.step += 1
    value = float(loss.detach())
    state.losses.append(value)
    return value


def run_loop(method: TrainingMethod, data: LoopData, noise_scheduler: Any, options: TrainOptions,
             state: LoopState, precision: Precision, on_step: Callable[[LoopState], None],
             before_step: Callable[[LoopState], None], clock: Callable[[], float] = time.monotonic) -> None:
    """Steps from ``state.step`` to ``options.steps`` (or until ``max_minutes`` have passed);
    ``before_step`` may raise to stop (cancel)."""
    params = method.parameters()
    method.train_mode(True)
    deadline = clock() + options.max_minutes * 60 if options.max_minutes else None
    while state.step < options.steps:
        if deadline is not None and clock() >= deadline:
            break
        before_step(state)
        training_step(method, data, noise_scheduler, options, state, precision, params)
        on_step(state)
