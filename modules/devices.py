"""Device and dtype choice, memory probing, attention and memory modes.

Everything here is a plain function of its arguments: nothing is stored at
module level. The composition root picks a device once (``choose_device``),
a dtype (``choose_dtype``) and an attention backend (``choose_attention``),
then applies them to each pipeline it builds.

Memory modes follow AUTOMATIC1111's flags:

* ``normal``  - the whole pipeline lives on the device.
* ``medvram`` - one whole model (text encoder, unet, vae) on the device at a
  time: diffusers' ``enable_model_cpu_offload``.
* ``lowvram`` - each submodule streamed to the device when it runs:
  diffusers' ``enable_sequential_cpu_offload``. Slow, but fits tiny cards.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
from typing import Any, Protocol

import torch

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ATTENTION_BACKENDS = ("sdpa", "xformers")
MEMORY_MODES = ("normal", "medvram", "lowvram")
# Pipeline components whose attention processors Easel manages.
ATTENTION_COMPONENTS = ("unet", "vae", "controlnet")


class MemoryProbe(Protocol):
    """Reports free and total memory of a device ("cpu" means system RAM)."""

    def free_bytes(self, device: str) -> int: ...

    def total_bytes(self, device: str) -> int: ...


def device_type(device: str) -> str:
    """Return the device type of a device string: "cuda:1" -> "cuda"."""
    return torch.device(device).type


def _meminfo_bytes(field: str) -> int | None:
    """Read one field (in kB) of /proc/meminfo as bytes; None when unavailable."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name == field:
                    return int(value.split()[0]) * 1024
    except OSError:
        return None
    return None


def _sysconf_bytes(pages_name: str) -> int:
    """Multiply a sysconf page count by the page size."""
    return os.sysconf(pages_name) * os.sysconf("SC_PAGE_SIZE")


class TorchMemoryProbe:
    """Memory probe backed by torch (CUDA, MPS) and the OS (system RAM).

    CUDA free memory counts what the driver reports free plus what torch's
    caching allocator holds but does not use (it can hand that out again), as
    ComfyUI does.
    """

    def free_bytes(self, device: str) -> int:
        kind = device_type(device)
        if kind == "cuda":
            index = torch.device(device)
            driver_free, _ = torch.cuda.mem_get_info(index)
            cached_unused = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
            return int(driver_free + cached_unused)
        if kind == "mps":
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
        if kind == "cpu":
            available = _meminfo_bytes("MemAvailable")
            return available if available is not None else _sysconf_bytes("SC_AVPHYS_PAGES")
        raise ValueError(f"cannot probe memory of device {device!r}; expected cpu, cuda[:N] or mps")

    def total_bytes(self, device: str) -> int:
        kind = device_type(device)
        if kind == "cuda":
            _, total = torch.cuda.mem_get_info(torch.device(device))
            return int(total)
        if kind == "mps":
            return int(torch.mps.recommended_max_memory())
        if kind == "cpu":
            total = _meminfo_bytes("MemTotal")
            return total if total is not None else _sysconf_bytes("SC_PHYS_PAGES")
        raise ValueError(f"cannot probe memory of device {device!r}; expected cpu, cuda[:N] or mps")


def available_devices() -> list[str]:
    """List the device types usable on this machine, best first, "cpu" last."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if torch.backends.mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def choose_device(requested: str = "auto") -> str:
    """Resolve a device request ("auto", "cpu", "cuda", "cuda:N", "mps") to a usable device.

    "auto" picks cuda, then mps, then cpu. An unknown or unavailable device
    raises ValueError naming what is available.
    """
    available = available_devices()
    name = requested.strip().lower()
    if name == "auto":
        return available[0]
    try:
        parsed = torch.device(name)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {requested!r}; choose one of: auto, {', '.join(available)}")
    if parsed.type not in available:
        raise ValueError(f"device {requested!r} is not available here; available: auto, {', '.join(available)}")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"device {requested!r} does not exist; this machine has cuda:0 to cuda:{count - 1}")
    return name


NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX / AVX512-BF16; aarch64 "bf16" (BFDOT, BFMMLA)
CPU_BF16_ENV = "EASEL_CPU_BF16"  # "1"/"0" overrides the detection (tests pin fp32 with "0")


def cpu_bf16_flags(cpuinfo: str | None = None) -> set[str]:
    """The native-bf16 flags of this CPU: from torch's CPU capabilities, else ``/proc/cpuinfo``
    (``cpuinfo`` is that file's text, for tests)."""
    if cpuinfo is None:
        try:
            caps = torch.cpu.get_capabilities()
            return {flag for flag in NATIVE_BF16_FLAGS[:2] if caps.get(flag)}
        except (AttributeError, RuntimeError):
            try:
                with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
                    cpuinfo = handle.read()
            except OSError:
                return set()
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            found |= set(value.split()) & set(NATIVE_BF16_FLAGS)
    return found


def cpu_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AMX, AVX512-BF16 or Arm's BF16 extension), so
    bf16 is faster than fp32 there (an SD 1.5 UNet step 2.6x on AVX512-BF16, bench/README.md).
    ``EASEL_CPU_BF16=1`` or ``0`` overrides the detection."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return bool(cpu_bf16_flags())


def choose_dtype(device: str, precision: str = "auto", native_bf16: bool | None = None) -> torch.dtype:
    """Pick the weight dtype for a device.

    "auto" gives float16 on cuda; on the CPU bfloat16 where the CPU computes it natively
    (``native_bf16``, detected by ``cpu_native_bf16`` when None) and float32 otherwise; float32
    on mps (fp16 there is allowed but not the default: the SD VAE is prone to NaNs there).
    "fp32", "fp16" and "bf16" are explicit. fp16 on the CPU is refused because
    many CPU kernels lack half precision.
    """
    kind = device_type(device)
    name = precision.strip().lower()
    if name == "auto":
        if kind == "cuda":
            return torch.float16
        if kind == "cpu" and (cpu_native_bf16() if native_bf16 is None else native_bf16):
            return torch.bfloat16
        return torch.float32
    if name not in PRECISION_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose one of: auto, {', '.join(PRECISION_DTYPES)}")
    if name == "fp16" and kind == "cpu":
        raise ValueError("fp16 is not supported on the CPU; use precision 'fp32' (or 'bf16' to save memory)")
    if name == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use precision 'fp16' or 'fp32'")
    return PRECISION_DTYPES[name]


def cast_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Bring every floating-point parameter and buffer of ``module`` to ``dtype`` (integer buffers
    such as CLIP's ``position_ids`` stay as they are).

    Unlike a check of ``module.dtype`` (the first parameter's), this also catches a model whose
    file mixed dtypes (an fp16 UNet with an fp32 VAE, an fp32 file with fp16 norms).
    """
    if any(t.is_floating_point() and t.dtype != dtype for t in (*module.parameters(), *module.buffers())):
        module.to(dtype=dtype)
    return module


def cast_components(components: dict[str, Any], dtype: torch.dtype, vae_dtype: torch.dtype | None = None) -> None:
    """Bring every torch component of a pipeline (UNet, text encoders, VAE, ControlNet) to the
    runtime dtype, whatever dtype its file had; the VAE to ``vae_dtype`` when given."""
    for name, component in components.items():
        if isinstance(component, torch.nn.Module):
            cast_module(component, vae_dtype if name == "vae" and vae_dtype is not None else dtype)


def choose_vae_dtype(device: str, dtype: torch.dtype, vae_precision: str = "auto") -> torch.dtype:
    """The VAE's dtype: float32 when asked ("fp32", A1111's --no-half-vae), else ``dtype``. On the
    CPU a bf16 decode measured 1.7x faster than fp32 and about 1 of 255 from it (bench/README.md),
    so "auto" keeps the runtime dtype."""
    name = vae_precision.strip().lower()
    if name == "fp32":
        return torch.float32
    if name != "auto":
        raise ValueError(f"unknown VAE precision {vae_precision!r}; choose auto or fp32")
    return dtype


def choose_channels_last(device: str, dtype: torch.dtype, setting: str = "auto") -> bool:
    """Whether to put conv weights in channels_last: "on", "off", or "auto" = where it measured
    faster: bf16 on the CPU (an SD 1.5 UNet step x1.06 over bf16 alone; fp32 gained only x1.03)."""
    name = setting.strip().lower()
    if name not in ("auto", "on", "off"):
        raise ValueError(f"unknown channels_last setting {setting!r}; choose auto, on or off")
    if name != "auto":
        return name == "on"
    return device_type(device) == "cpu" and dtype == torch.bfloat16


def apply_channels_last(pipe: Any) -> None:
    """Put the UNet's, the VAE's and a ControlNet's weights in channels_last memory format, where
    CPU (oneDNN) and CUDA convolutions are faster (bench/README.md)."""
    for name in ATTENTION_COMPONENTS:
        component = getattr(pipe, name, None)
        if isinstance(component, torch.nn.Module):
            component.to(memory_format=torch.channels_last)


def compile_unet(pipe: Any) -> None:
    """torch.compile the UNet in place (``nn.Module.compile``: the module keeps its type, config and
    LoRA hooks). The first call per image size compiles (minutes for SD 1.5 on a small CPU; inductor
    keeps its compiled graphs in its on-disk cache, so later starts are faster); later calls are faster."""
    compile_module(pipe.unet)


def compile_module(module: Any) -> None:
    """torch.compile a UNet in place (see ``compile_unet``); done once, when the model cache loads it."""
    logger.info("torch.compile of the UNet: the first generation at each size compiles it (slow once)")
    module.compile()


def dtype_name(dtype: torch.dtype) -> str:
    """"fp32", "fp16" or "bf16" (the precision setting's names); other dtypes as torch names them."""
    return next((name for name, value in PRECISION_DTYPES.items() if value == dtype), str(dtype).removeprefix("torch."))


def xformers_installed() -> bool:
    """Return True when the xformers package can be imported."""
    return importlib.util.find_spec("xformers") is not None


def choose_attention(device: str, requested: str = "auto") -> str:
    """Pick the attention backend: "sdpa" (torch's scaled_dot_product_attention) or "xformers".

    "auto" picks xformers on CUDA when it is installed, sdpa otherwise.
    Requesting xformers where it cannot run raises ValueError.
    """
    name = requested.strip().lower()
    if name not in ("auto", *ATTENTION_BACKENDS):
        raise ValueError(f"unknown attention backend {requested!r}; choose one of: auto, {', '.join(ATTENTION_BACKENDS)}")
    on_cuda = device_type(device) == "cuda"
    if name == "auto":
        return "xformers" if on_cuda and xformers_installed() else "sdpa"
    if name == "xformers":
        if not xformers_installed():
            raise ValueError("attention 'xformers' requested but the xformers package is not installed; use 'sdpa'")
        if not on_cuda:
            raise ValueError(f"xformers only runs on CUDA, not on {device!r}; use attention 'sdpa'")
    return name


def apply_attention(pipe: Any, backend: str) -> None:
    """Set the attention backend on a pipeline's unet, vae and controlnet.

    "sdpa" installs diffusers' ``AttnProcessor2_0`` (torch SDPA); "xformers"
    calls ``pipe.enable_xformers_memory_efficient_attention()``.
    """
    if backend == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
        return
    if backend != "sdpa":
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {', '.join(ATTENTION_BACKENDS)}")
    from diffusers.models.attention_processor import AttnProcessor2_0

    for name in ATTENTION_COMPONENTS:
        component = getattr(pipe, name, None)
        if component is not None and hasattr(component, "set_attn_processor"):
            component.set_attn_processor(AttnProcessor2_0())


def apply_memory_mode(pipe: Any, mode: str, device: str) -> None:
    """Place a pipeline on ``device`` according to a memory mode (see MEMORY_MODES).

    On the CPU there is nothing to offload to, so every mode means normal
    placement (a note is logged for medvram/lowvram).
    """
    if mode not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {mode!r}; choose one of: {', '.join(MEMORY_MODES)}")
    if mode != "normal" and device_type(device) == "cpu":
        logger.info("memory mode %r has no effect on the CPU; placing the pipeline normally", mode)
        mode = "normal"
    if mode == "normal":
        if hasattr(pipe, "remove_all_hooks"):
            pipe.remove_all_hooks()  # undo a previous offload mode, if any
        pipe.to(device)
    elif mode == "medvram":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def apply_vae_tiling(pipe: Any, tiling: bool, slicing: bool) -> None:
    """Switch VAE tiling (large images in tiles) and slicing (batch one image at a time)."""
    vae = pipe.vae
    if tiling:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    if slicing:
        vae.enable_slicing()
    else:
        vae.disable_slicing()


def freeze_startup_objects() -> None:
    """Move the objects alive now (imported libraries, the built UI: over 400k objects) out of the
    garbage collector's reach once the app has started: they live as long as the process, and every
    full collection (one per model eviction, ``empty_cache``) would otherwise walk them all (0.2-0.3 s
    each here; about 0 after)."""
    gc.collect()
    gc.freeze()


def empty_cache(device: str) -> None:
    """Collect garbage and hand cached accelerator memory back to the driver."""
    gc.collect()
    kind = device_type(device)
    if kind == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif kind == "mps" and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def module_bytes(*modules: torch.nn.Module | None) -> int:
    """Return the bytes held by the parameters and buffers of the given modules.

    A tensor shared between modules is counted once; None entries are skipped
    (optional pipeline components).
    """
    seen: set[int] = set()
    total = 0
    for module in modules:
        if module is None:
            continue
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module_bytes expects torch.nn.Module objects, got {type(module).__name__}")
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total
