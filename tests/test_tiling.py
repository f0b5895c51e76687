"""Seamless tiling (modules.tiling): circular padding makes the UNet commute with shifts, for one job only."""

from __future__ import annotations

import torch

from modules.tiling import seamless_tiling, tiled_convolutions


def unet_pair(unet, x, shift):
    """The UNet's output on ``x`` rolled by ``shift``, and on ``x`` rolled (sideways) by ``shift``."""
    t = torch.tensor([500])
    cond = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=cond).sample
        out_of_rolled = unet(torch.roll(x, shift, dims=3), t, encoder_hidden_states=cond).sample
    return torch.roll(out, shift, dims=3), out_of_rolled


def test_circular_padding_makes_the_unet_commute_with_shifts(services):
    name = services.checkpoints.get("tiny-a").name
    with services.models.use(name) as model:
        unet = model.pipe.unet.float()
        x = torch.randn(1, unet.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(0))
        with seamless_tiling(model.pipe, True):
            assert {conv.padding_mode for conv in tiled_convolutions(model.pipe)} == {"circular"}
            rolled_out, out_of_rolled = unet_pair(unet, x, 8)
        assert torch.allclose(rolled_out, out_of_rolled, atol=1e-4)  # no seam: the edges wrap around
        rolled_out, out_of_rolled = unet_pair(unet, x, 8)
        assert not torch.allclose(rolled_out, out_of_rolled, atol=1e-4)  # zero padding: the edges differ
        assert {conv.padding_mode for conv in tiled_convolutions(model.pipe)} == {"zeros"}


def test_the_padding_comes_back_after_an_error(services):
    name = services.checkpoints.get("tiny-a").name
    with services.models.use(name) as model:
        try:
            with seamless_tiling(model.pipe, True):
                raise RuntimeError("the job failed")
        except RuntimeError:
            pass
        assert {conv.padding_mode for conv in tiled_convolutions(model.pipe)} == {"zeros"}
