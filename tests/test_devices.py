"""Tests of device, dtype and attention choice and of pipeline placement on this CPU machine."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from modules import devices

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
needs_no_xformers = pytest.mark.skipif(devices.xformers_installed(), reason="checks the error without xformers")


class TinyPipe(DiffusionPipeline):
    """A one-component diffusers pipeline: enough for placement and offload hooks."""

    model_cpu_offload_seq = "vae"

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.register_modules(vae=vae)


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    )


def decode(pipe: TinyPipe) -> torch.Tensor:
    latents = torch.linspace(-1, 1, 64).reshape(1, 4, 4, 4)
    with torch.no_grad():
        return pipe.vae.decode(latents).sample


def has_hooks(pipe: TinyPipe) -> bool:
    return any(hasattr(m, "_hf_hook") for m in pipe.vae.modules())


def test_choose_device_auto_picks_the_best_available():
    assert devices.choose_device("auto") == devices.available_devices()[0]
    assert devices.choose_device("CPU") == "cpu"


@needs_no_cuda
def test_choose_device_refuses_unavailable_cuda():
    with pytest.raises(ValueError, match="not available.*cpu"):
        devices.choose_device("cuda")


def test_choose_device_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        devices.choose_device("tpu")


def test_choose_dtype():
    assert devices.choose_dtype("cpu", native_bf16=False) == torch.float32
    assert devices.choose_dtype("cpu", "auto", native_bf16=True) == torch.bfloat16  # AMX / AVX512-BF16
    assert devices.choose_dtype("cpu", "fp32", native_bf16=True) == torch.float32
    assert devices.choose_dtype("cuda") == torch.float16
    assert devices.choose_dtype("cuda:1", "auto") == torch.float16
    assert devices.choose_dtype("cpu", "bf16") == torch.bfloat16
    assert devices.choose_dtype("cpu", "FP32") == torch.float32


CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {extra} avx512_vnni\n"


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch):
    assert devices.cpu_bf16_flags(CPUINFO.format(extra="avx512_bf16")) == {"avx512_bf16"}
    assert devices.cpu_bf16_flags(CPUINFO.format(extra="amx_bf16 amx_tile")) == {"amx_bf16"}
    assert devices.cpu_bf16_flags(CPUINFO.format(extra="")) == set()
    assert devices.cpu_bf16_flags("Features\t: fp asimd bf16 i8mm\n") == {"bf16"}  # aarch64
    monkeypatch.setenv(devices.CPU_BF16_ENV, "1")
    assert devices.cpu_native_bf16() and devices.choose_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv(devices.CPU_BF16_ENV, "0")
    assert not devices.cpu_native_bf16() and devices.choose_dtype("cpu") == torch.float32
    monkeypatch.delenv(devices.CPU_BF16_ENV)
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:  # this machine's own answer
        assert devices.cpu_native_bf16() == bool(devices.cpu_bf16_flags(handle.read()))


def test_choose_dtype_errors():
    with pytest.raises(ValueError, match="fp32"):
        devices.choose_dtype("cpu", "fp16")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        devices.choose_dtype("cpu", "fp8")


def test_choose_attention():
    assert devices.choose_attention("cpu") == "sdpa"
    assert devices.choose_attention("cpu", "sdpa") == "sdpa"
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        devices.choose_attention("cpu", "flash")


@needs_no_xformers
def test_choose_attention_refuses_missing_xformers():
    assert devices.choose_attention("cuda") == "sdpa"
    with pytest.raises(ValueError, match="xformers.*not installed"):
        devices.choose_attention("cuda", "xformers")


def test_apply_attention_sdpa_sets_attn_processor_2_0():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=8,
        attention_head_dim=2,
    )
    unet.set_attn_processor(AttnProcessor())
    pipe = type("Pipe", (), {"unet": unet, "vae": tiny_vae()})()
    pipe.vae.set_attn_processor(AttnProcessor())
    devices.apply_attention(pipe, "sdpa")
    processors = [*unet.attn_processors.values(), *pipe.vae.attn_processors.values()]
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)
    with pytest.raises(ValueError, match="unknown attention backend"):
        devices.apply_attention(pipe, "flash")


def test_module_bytes():
    assert devices.module_bytes(torch.nn.Linear(4, 3)) == (12 + 3) * 4
    assert devices.module_bytes(torch.nn.Linear(4, 3).half()) == (12 + 3) * 2
    # BatchNorm1d(4): weight, bias, running_mean, running_var (fp32) + num_batches_tracked (int64)
    assert devices.module_bytes(torch.nn.BatchNorm1d(4)) == 16 * 4 + 8
    shared = torch.nn.Linear(4, 3)
    assert devices.module_bytes(shared, shared, None) == (12 + 3) * 4
    with pytest.raises(TypeError, match="torch.nn.Module"):
        devices.module_bytes("unet")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", devices.MEMORY_MODES)
def test_apply_memory_mode_on_cpu_places_normally(mode):
    pipe = TinyPipe(tiny_vae())
    expected = decode(pipe)
    devices.apply_memory_mode(pipe, mode, "cpu")
    assert not has_hooks(pipe)
    assert all(p.device.type == "cpu" for p in pipe.vae.parameters())
    torch.testing.assert_close(decode(pipe), expected)


def test_normal_mode_undoes_a_previous_offload():
    pipe = TinyPipe(tiny_vae())
    expected = decode(pipe)
    pipe.enable_sequential_cpu_offload(device="cpu")
    assert has_hooks(pipe)
    devices.apply_memory_mode(pipe, "normal", "cpu")
    assert not has_hooks(pipe)
    torch.testing.assert_close(decode(pipe), expected)


def test_apply_memory_mode_refuses_unknown_mode():
    with pytest.raises(ValueError, match="unknown memory mode 'highvram'"):
        devices.apply_memory_mode(TinyPipe(tiny_vae()), "highvram", "cpu")


def test_apply_vae_tiling():
    pipe = TinyPipe(tiny_vae())
    devices.apply_vae_tiling(pipe, tiling=True, slicing=True)
    assert (pipe.vae.use_tiling, pipe.vae.use_slicing) == (True, True)
    devices.apply_vae_tiling(pipe, tiling=False, slicing=False)
    assert (pipe.vae.use_tiling, pipe.vae.use_slicing) == (False, False)


def test_torch_memory_probe_reads_system_ram():
    probe = devices.TorchMemoryProbe()
    free, total = probe.free_bytes("cpu"), probe.total_bytes("cpu")
    assert 0 < free <= total
    with pytest.raises(ValueError, match="cannot probe memory"):
        probe.free_bytes("meta")


def test_objects_alive_once_started_are_left_out_of_full_collections():
    import gc
    import weakref

    class Node:
        pass

    node = Node()
    node.cycle = node  # only a full collection can free it
    alive = weakref.ref(node)
    before = gc.get_freeze_count()
    devices.freeze_startup_objects()
    assert gc.get_freeze_count() > before
    del node
    gc.collect()
    assert alive() is not None  # frozen: the collection never walked it
