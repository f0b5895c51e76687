"""Loading checkpoints: the single-file path and the diffusers-folder path agree; errors are clear."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from modules.checkpoints import CheckpointError, CheckpointInfo
from modules.model_loading import load_checkpoint
from tests.tiny_models import write_diffusers_folder, write_single_file


def _forward(pipe):
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 16, 16)
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ctx = pipe.text_encoder(ids)[0]
        eps = pipe.unet(latents, torch.tensor([500]), ctx).sample
        img = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return eps, img


def test_single_file_and_diffusers_folder_load_the_same_weights(tmp_path):
    single = write_single_file(tmp_path, "m", seed=5)
    folder = write_diffusers_folder(tmp_path, "f", seed=5)
    a = load_checkpoint(CheckpointInfo("m.safetensors", single, "single", single.with_suffix(".yaml")), None)
    b = load_checkpoint(CheckpointInfo("f", folder, "diffusers", None), None)
    assert (a.arch, b.arch) == ("sd1", "sd1")
    assert a.native_size == b.native_size == 32
    for x, y in zip(_forward(a.pipe), _forward(b.pipe), strict=True):
        assert torch.allclose(x, y, atol=1e-5)  # same weights; kernels may differ in the last bits


def test_inpainting_checkpoint_is_detected(tmp_path):
    path = write_single_file(tmp_path, "inp", in_channels=9)
    model = load_checkpoint(CheckpointInfo("inp.safetensors", path, "single", path.with_suffix(".yaml")), None)
    assert model.arch == "sd1-inpaint" and model.pipe.unet.config.in_channels == 9


def test_without_its_yaml_a_non_standard_model_fails_clearly(tmp_path):
    path = write_single_file(tmp_path, "noyaml", yaml=False)
    with pytest.raises(CheckpointError, match="does not match its detected architecture"):
        load_checkpoint(CheckpointInfo("noyaml.safetensors", path, "single", None), None)


def test_bad_yaml_is_a_clear_error(tmp_path):
    path = write_single_file(tmp_path, "badyaml")
    path.with_suffix(".yaml").write_text("model: [unclosed")
    with pytest.raises(CheckpointError, match="not valid YAML"):
        load_checkpoint(CheckpointInfo("badyaml.safetensors", path, "single", path.with_suffix(".yaml")), None)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = write_single_file(tmp_path, "cut")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(CheckpointInfo("cut.safetensors", path, "single", path.with_suffix(".yaml")), None)


def test_loading_works_offline_from_a_copied_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = write_diffusers_folder(tmp_path, "f", seed=1)
    moved = tmp_path / "elsewhere"
    shutil.move(folder, moved)
    model = load_checkpoint(CheckpointInfo("elsewhere", moved, "diffusers", None), None)
    assert np.isfinite(_forward(model.pipe)[0].numpy()).all()


def test_native_size_hint_reads_configs_without_loading(tmp_path):
    from modules.model_loading import native_size_hint

    single = write_single_file(tmp_path, "m", seed=1)
    folder = write_diffusers_folder(tmp_path, "f", seed=1)
    assert native_size_hint(CheckpointInfo("m.safetensors", single, "single", single.with_suffix(".yaml"))) == 32
    assert native_size_hint(CheckpointInfo("f", folder, "diffusers", None)) == 32
    assert native_size_hint(CheckpointInfo("m.safetensors", single, "single", None)) == 512  # SD 1.x default
