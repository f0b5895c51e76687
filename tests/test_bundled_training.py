"""The bundled trainings' loss weights and learning-rate schedules (``bundled/weighting.py``) and
the resumable states of the base and ControlNet training scripts (``bundled/train.py``,
``bundled/train_controlnet.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bundled import train, train_controlnet
from bundled.shapes import Scene, render
from bundled.weighting import loss_weights, lr_at, outline_band, silhouette_map, weighted_mse

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "models" / "Stable-diffusion" / "easel-shapes.safetensors"


def square(cx: float = 0.5) -> np.ndarray:
    return np.asarray(render(Scene("square", "red", "blue", "large", "center", cx, 0.5)))


def test_outline_band_lies_on_the_shapes_edge():
    picture = square()
    band = outline_band(picture, width=2)
    ys, xs = np.nonzero(band)
    assert band.any()
    # the band hugs the square's silhouette: inside it only near the edge, outside it only near the edge
    rows, cols = np.nonzero(silhouette_map(picture))
    assert ys.min() >= rows.min() - 3 and ys.max() <= rows.max() + 3
    assert xs.min() >= cols.min() - 3 and xs.max() <= cols.max() + 3
    assert band[rows.min() + 6 : rows.max() - 6, cols.min() + 6 : cols.max() - 6].sum() == 0  # hollow
    assert band[:5].sum() == 0 and band[-5:].sum() == 0  # far background untouched


def test_loss_weights_raise_only_the_latent_pixels_on_the_outline():
    left, right = square(0.3), square(0.7)
    weights = loss_weights([left, right], latent_side=16, outline_weight=3.0)
    assert weights.shape == (2, 1, 16, 16)
    assert set(torch.unique(weights).tolist()) == {1.0, 4.0}
    # the raised cells follow the shape: more of them on the left half for the left square
    assert weights[0, 0, :, :8].sum() > weights[0, 0, :, 8:].sum()
    assert weights[1, 0, :, 8:].sum() > weights[1, 0, :, :8].sum()
    assert torch.equal(loss_weights([left], 16, 0.0), torch.ones(1, 1, 16, 16))


def test_cosine_schedule_decays_from_the_runs_first_step_to_zero():
    peak = 1e-4
    assert lr_at(5000, 5000, 7000, peak, "cosine") == pytest.approx(peak)
    assert lr_at(6000, 5000, 7000, peak, "cosine") == pytest.approx(peak / 2)
    assert lr_at(7000, 5000, 7000, peak, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_at(6000, 5000, 7000, peak, "constant") == peak
    assert lr_at(9, 0, 1000, peak, "constant") == pytest.approx(peak / 10)  # warm-up over the first 100 steps
    assert isinstance(lr_at(6000, 5000, 7000, peak, "cosine"), float)  # a numpy scalar would not load back


def test_warm_up_can_count_from_the_runs_first_step():
    peak = 5e-4
    # a run continued from step 12800 with a fresh optimizer: warm up again over 200 steps
    assert lr_at(12800, 12800, 15800, peak, "cosine", warmup=200, warmup_from=12800) == pytest.approx(peak / 200)
    assert lr_at(12899, 12800, 15800, peak, "constant", warmup=200, warmup_from=12800) == pytest.approx(peak / 2)
    # counted from 0 (the default) a late step is past its warm-up
    assert lr_at(12800, 12800, 15800, peak, "cosine", warmup=200) == pytest.approx(peak)


def test_weighted_mse_is_mse_for_even_weights_and_favours_the_weighted_pixels():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    assert weighted_mse(pred, target, torch.full((2, 1, 8, 8), 3.0)) == pytest.approx(float(F.mse_loss(pred, target)))
    weights = torch.ones(2, 1, 8, 8)
    weights[:, :, :4] = 4.0  # the top half counts 4x
    off_top, off_bottom = target.clone(), target.clone()
    off_top[:, :, :4] += 1.0
    off_bottom[:, :, 4:] += 1.0
    assert weighted_mse(off_top, target, weights) == pytest.approx(4 * float(weighted_mse(off_bottom, target, weights)))


@pytest.mark.skipif(not BUNDLED.exists(), reason="needs the bundled checkpoint")
def test_a_controlnet_run_saves_a_state_that_loads_safely_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--out", str(out), "--batch", "2", "--save-every", "1", "--lr-schedule", "cosine",
              "--outline-weight", "3", "--timesteps", "uniform", "--threads", "1"]
    train_controlnet.main(common + ["--steps", "1"])
    state = torch.load(out / "state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 1 and state["start_step"] == 0
    first = {k: v.clone() for k, v in state["controlnet"].items()}
    capsys.readouterr()
    train_controlnet.main(common + ["--steps", "2"])
    assert "resumed at step 1" in capsys.readouterr().out
    state = torch.load(out / "state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 2
    assert any(not torch.equal(first[k], v) for k, v in state["controlnet"].items())  # the second step trained


@pytest.mark.skipif(not BUNDLED.exists(), reason="needs the bundled checkpoint")
def test_a_base_run_continued_from_the_shipped_file_resumes_with_its_start_step(tmp_path, capsys):
    from safetensors import safe_open

    with safe_open(str(BUNDLED), "pt") as f:
        shipped_step = int(f.metadata()["easel_train_step"])
    out = tmp_path / "base"
    common = ["--out", str(out), "--batch", "2", "--save-every", "1", "--threads", "1", "--init-from", str(BUNDLED),
              "--pyramid-noise", "0.1", "--lr-schedule", "cosine", "--rewarm", "10", "--outline-weight", "3"]
    train.main(common + ["--steps", str(shipped_step + 1)])
    state = torch.load(out / "state.pt", map_location="cpu", weights_only=True)
    assert (state["start_step"], state["step"]) == (shipped_step, shipped_step + 1)
    first = {k: v.clone() for k, v in state["unet"].items()}
    capsys.readouterr()
    train.main(common + ["--steps", str(shipped_step + 2)])
    assert f"resumed: vae 2000/2000, unet {shipped_step + 1}/{shipped_step + 2}" in capsys.readouterr().out
    state = torch.load(out / "state.pt", map_location="cpu", weights_only=True)
    assert (state["start_step"], state["step"]) == (shipped_step, shipped_step + 2)  # the start survives a resume
    assert any(not torch.equal(first[k], v) for k, v in state["unet"].items())
