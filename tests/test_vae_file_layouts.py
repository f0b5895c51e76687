"""A standalone VAE file in diffusers' layout (what a VAE repo on the hub holds) loads like an LDM one."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from modules.model_loading import load_vae_file
from tests.tiny_models import tiny_components


def test_diffusers_layout_vae_file_loads(tmp_path):
    _, vae, _ = tiny_components(0)
    _, other, _ = tiny_components(1)
    path = tmp_path / "sd-vae-ft-mse.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, path)
    load_vae_file(path, vae)
    for name, value in other.state_dict().items():
        assert torch.equal(vae.state_dict()[name], value), name
