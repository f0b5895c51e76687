"""Cold loads (#26 item 3): safetensors read in one pass from a memory map, converted on the way;
modules built on the meta device without weight init; tokenizer and configs built once per process."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from modules.checkpoints import CheckpointError, CheckpointInfo, read_state_dict
from modules.model_loading import load_checkpoint, make_tokenizer, shipped_configs
from tests.tiny_models import write_single_file

TENSORS = {
    "f16": torch.randn(3, 5).half(), "bf16": torch.randn(7).bfloat16(), "f32": torch.randn(2, 2, 3),
    "i64": torch.arange(77)[None], "u8": torch.tensor([1, 2, 255], dtype=torch.uint8), "empty": torch.zeros(0, 4),
    "scalar": torch.tensor(4.0),
}


def test_the_reader_gives_what_safetensors_gives(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file(TENSORS, str(path))
    ours, theirs = read_state_dict(path), load_file(str(path))
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape and torch.equal(ours[key], value)
    ours[next(iter(ours))].add_(1)  # its own memory, writable: the file is untouched
    assert torch.equal(load_file(str(path))["f16"], TENSORS["f16"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_floats_are_converted_while_read_and_integers_kept(tmp_path, dtype):
    path = tmp_path / "t.safetensors"
    save_file(TENSORS, str(path))
    state = read_state_dict(path, dtype)
    for key, value in TENSORS.items():
        expected = value.to(dtype) if value.is_floating_point() else value
        assert state[key].dtype == expected.dtype and torch.equal(state[key], expected), key


def test_a_damaged_header_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file({"a": torch.ones(4)}, str(path))
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    header["a"]["data_offsets"] = [0, 4096]  # past the end of the file
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + header_len:])
    with pytest.raises(CheckpointError, match="bad.safetensors.*outside the file"):
        read_state_dict(path)
    header["a"]["data_offsets"] = [0, 16]
    header["b"] = {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}  # inside a's bytes
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + header_len:])
    with pytest.raises(CheckpointError, match="bad.safetensors.*'a' overlaps another"):
        read_state_dict(path)
    path.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(CheckpointError, match="bad header length"):
        read_state_dict(path)


def test_tokenizer_and_configs_are_built_once_per_process():
    assert make_tokenizer() is make_tokenizer() and make_tokenizer("!") is not make_tokenizer()
    assert shipped_configs("sd1") is shipped_configs("sd1")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_loaded_model_has_no_meta_or_uninitialised_tensors(tmp_path, dtype):
    path = write_single_file(tmp_path, "m", seed=3)
    model = load_checkpoint(CheckpointInfo(path.name, path, "single", path.with_suffix(".yaml")), None, dtype)
    file = load_file(str(path))
    for module in model.modules():
        for name, tensor in (*module.named_parameters(), *module.named_buffers()):
            assert tensor.device.type == "cpu" and (not tensor.is_floating_point() or tensor.dtype == dtype), name
    unet_in = model.pipe.unet.conv_in.weight
    assert torch.equal(unet_in, file["model.diffusion_model.input_blocks.0.0.weight"].to(dtype))


def test_the_reader_works_where_the_os_cannot_be_asked_to_read_ahead(tmp_path, monkeypatch):
    """macOS has no posix_fadvise: the same tensors come back without it."""
    path = tmp_path / "t.safetensors"
    save_file(TENSORS, str(path))
    monkeypatch.delattr("os.posix_fadvise")
    state = read_state_dict(path, torch.float32)
    assert torch.equal(state["f16"], TENSORS["f16"].float()) and torch.equal(state["i64"], TENSORS["i64"])
