"""Checkpoint discovery, short hashes, safe .ckpt reading and architecture detection."""

from __future__ import annotations

import hashlib
import pickle

import pytest
import torch
from safetensors.torch import save_file

from modules import checkpoints
from modules.checkpoints import (
    CheckpointError,
    CheckpointRegistry,
    HashCache,
    UnsafeCheckpointError,
    detect_architecture,
    read_state_dict,
    scan_checkpoints,
)


def test_scan_finds_single_files_folders_and_companion_yaml(tiny_models_dir, tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "notes.txt").write_text("not a model")
    save_file({"x": torch.zeros(1)}, str(sub / "other.safetensors"))
    found = {c.name: c for c in scan_checkpoints([tiny_models_dir, tmp_path])}
    assert found["tiny-a.safetensors"].kind == "single"
    assert found["tiny-a.safetensors"].config_path == tiny_models_dir / "tiny-a.yaml"
    assert found["tiny-folder"].kind == "diffusers"
    assert found["sub/other.safetensors"].config_path is None
    # weights inside a diffusers folder are not listed as checkpoints of their own
    assert not any(name.startswith("tiny-folder/") for name in found)


def test_short_hash_is_a1111s_and_computed_once(tiny_models_dir, tmp_path, monkeypatch):
    path = tiny_models_dir / "tiny-a.safetensors"
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    calls = []
    real = checkpoints.file_sha256
    monkeypatch.setattr(checkpoints, "file_sha256", lambda p: calls.append(p) or real(p))
    reg = CheckpointRegistry([tiny_models_dir], HashCache(tmp_path / "hashes.json"))
    info = reg.get("tiny-a")
    assert reg.short_hash(info) == expected[:10]
    assert reg.title(info) == f"tiny-a.safetensors [{expected[:10]}]"
    reg.short_hash(info)
    # a new registry reads the hash from the cache file, without hashing again
    reg2 = CheckpointRegistry([tiny_models_dir], HashCache(tmp_path / "hashes.json"))
    assert reg2.short_hash(reg2.get("tiny-a")) == expected[:10]
    assert len(calls) == 1


def test_registry_lookup_by_title_name_stem_and_hash(tiny_models_dir, tmp_path):
    reg = CheckpointRegistry([tiny_models_dir], HashCache(tmp_path / "h.json"))
    info = reg.get("tiny-b.safetensors")
    h = reg.short_hash(info)
    assert reg.get(f"tiny-b.safetensors [{h}]") == info
    assert reg.get("tiny-b") == info
    assert reg.get(h) == info
    with pytest.raises(CheckpointError, match="not found; available: .*tiny-a.safetensors"):
        reg.get("nope")


class _WritesAFile:
    """A pickle payload that would create a file if it were ever unpickled with code execution."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_ckpt_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": {"w": _WritesAFile(marker)}}, f)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        read_state_dict(evil)
    assert not marker.exists()


def test_plain_tensor_ckpt_loads_safely(tmp_path):
    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"a": torch.ones(2), "b": torch.zeros(3)}, "global_step": 5}, path)
    state = read_state_dict(path)
    assert set(state) == {"a", "b"} and torch.equal(state["a"], torch.ones(2))


def test_corrupt_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        read_state_dict(bad)
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "missing.safetensors")


def _keys(in_channels=4, context=768, sdxl=False, openclip=False):
    state = {checkpoints.UNET_IN_KEY: torch.empty(320, in_channels, 3, 3),
             checkpoints.SD2_CONTEXT_KEY: torch.empty(320, context)}
    if sdxl:
        state[checkpoints.SDXL_KEY] = torch.empty(3 * 1280, 1280)
    elif openclip:
        state[checkpoints.OPENCLIP_KEY] = torch.empty(3 * 1024, 1024)
    else:
        state[checkpoints.CLIP_KEYS[0]] = torch.empty(49408, 768)
    return state


@pytest.mark.parametrize(
    "state, yaml_cfg, arch",
    [
        (_keys(), None, "sd1"),
        (_keys(in_channels=9), None, "sd1-inpaint"),
        (_keys(context=1024, openclip=True), None, "sd2"),
        (_keys(context=1024, openclip=True), {"model": {"params": {"parameterization": "v"}}}, "sd2"),
        (_keys(context=1024, openclip=True), {"model": {"params": {}}}, "sd2-base"),
        (_keys(context=2048, sdxl=True), None, "sdxl"),
    ],
)
def test_detect_architecture(state, yaml_cfg, arch):
    assert detect_architecture(state, yaml_cfg) == arch


def test_detect_rejects_what_is_not_a_checkpoint():
    with pytest.raises(CheckpointError, match="LoRA"):
        detect_architecture({"lora_unet_down.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="input channels 5"):
        detect_architecture(_keys(in_channels=5))


def mixed_file(tmp_path):
    """A .safetensors file with tensors of several dtypes, sizes and shapes (a scalar, an empty one)."""
    gen = torch.Generator().manual_seed(0)
    state = {
        "big.f16": torch.randn(37, 29, generator=gen).half(), "w.bf16": torch.randn(700, generator=gen).bfloat16(),
        "w.f32": torch.randn(3, 5, 7, generator=gen), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4),
        "ids": torch.arange(300), "mask": torch.rand(50, generator=gen) > 0.5,
    }
    path = tmp_path / "mixed.safetensors"
    save_file(state, str(path), metadata={"note": "x"})
    return path, state


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.bfloat16, torch.float16])
def test_safetensors_reader_gives_the_files_tensors_in_the_asked_dtype(tmp_path, dtype):
    path, state = mixed_file(tmp_path)
    got = checkpoints.read_safetensors(path, dtype)
    assert set(got) == set(state)
    for name, tensor in state.items():
        want = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        assert got[name].dtype == want.dtype and got[name].shape == want.shape and torch.equal(got[name], want), name
    only = checkpoints.read_safetensors(path, dtype, prefixes=("w.",))
    assert set(only) == {"w.bf16", "w.f32"}


def test_safetensors_reader_hashes_the_file_and_each_tensor_while_reading(tmp_path):
    path, state = mixed_file(tmp_path)
    digests = checkpoints.ReadDigests()
    got = checkpoints.read_safetensors(path, torch.float32, prefixes=("big.",), digests=digests)
    assert set(got) == {"big.f16"}  # only that one kept, but every byte hashed
    assert digests.file.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
    header, start = checkpoints.safetensors_header(path)
    data = path.read_bytes()
    for name in state:
        begin, end = header[name]["data_offsets"]
        assert digests.tensors[name] == hashlib.sha256(data[start + begin:start + end]).hexdigest(), name
