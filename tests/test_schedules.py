"""Sigma schedules (modules/samplers/schedules.py): the model's levels, every A1111 schedule type,
the table and its lookups, checked against their formulas, against each other and against diffusers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from modules.samplers.schedules import (
    AYS_SD15,
    AYS_SDXL,
    SCHEDULES,
    ZERO_SNR_LAST_ALPHAS_CUMPROD,
    ModelSigmas,
    ScheduleOptions,
    discard_next_to_last,
    get_schedule,
    make_sigmas,
)

SD15 = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
DEFAULT = ScheduleOptions()
FUNCTION_SCHEDULES = [s for s in SCHEDULES if s.function is not None]
NAMES = [s.name for s in FUNCTION_SCHEDULES]
# Schedules whose last level is not 0 (A1111 appends none) and those that start below sigma_max.
ENDS_AT_SIGMA_MIN = {"kl_optimal"}
STARTS_LOWER = {"ddim", "align_your_steps"}  # DDIM: leading spacing from t=1; AYS: its table (14.615)


@pytest.fixture(scope="module")
def ms() -> ModelSigmas:
    return ModelSigmas.from_config(SD15)


def sched(name: str, ms: ModelSigmas, steps: int, opts: ScheduleOptions = DEFAULT) -> torch.Tensor:
    return make_sigmas(get_schedule(name), ms, steps, opts)


def diffusers_sigmas(steps: int, **overrides) -> torch.Tensor:
    scheduler = EulerDiscreteScheduler.from_config({**SD15, **overrides})
    scheduler.set_timesteps(steps)
    return scheduler.sigmas


def ddim_count(steps: int, timesteps: int = 1000) -> int:
    """A1111's DDIM schedule: t = 1, 1 + k, ... below 1000 with k = 1000 // steps."""
    return len(range(1, timesteps, max(timesteps // steps, 1)))


# --- ModelSigmas --------------------------------------------------------------------------------


def test_sd15_levels(ms):
    assert ms.sigmas.dtype == torch.float32 and ms.sigmas.device.type == "cpu"
    assert ms.num_timesteps == 1000 and ms.sigmas.shape == (1000,)
    assert bool((ms.sigmas[1:] > ms.sigmas[:-1]).all())
    assert ms.sigma_max == pytest.approx(14.6146, abs=1e-4)
    assert ms.sigma_min == pytest.approx(0.0292, abs=1e-4)
    assert ms.sigma_max == float(ms.sigmas[-1]) and ms.sigma_min == float(ms.sigmas[0])


@pytest.mark.parametrize(
    "config",
    [SD15, {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, {"beta_schedule": "squaredcos_cap_v2"}],
    ids=["scaled_linear", "linear", "squaredcos_cap_v2"],
)
def test_alphas_cumprod_match_diffusers(config):
    ours = 1 / (1 + ModelSigmas.from_config(config).sigmas.double() ** 2)
    theirs = EulerDiscreteScheduler.from_config(config).alphas_cumprod.double()
    # float64 accumulation here (as A1111's LDM code), float32 over 1000 products in diffusers,
    # and ours recovered from float32 sigmas: 2e-5 relative
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=0)


def test_trained_betas_win_over_beta_schedule():
    betas = np.linspace(0.001, 0.02, 50)
    ms = ModelSigmas.from_config({"trained_betas": betas.tolist(), "beta_schedule": "no-such-schedule"})
    ac = np.cumprod(1 - betas)
    assert ms.num_timesteps == 50
    torch.testing.assert_close(ms.sigmas, torch.tensor(np.sqrt((1 - ac) / ac), dtype=torch.float32), rtol=1e-5, atol=0)


def test_unknown_beta_schedule_names_the_known_ones():
    with pytest.raises(ValueError, match="scaled_linear"):
        ModelSigmas.from_config({**SD15, "beta_schedule": "cosine"})


def test_zero_terminal_snr_is_finite_as_in_a1111(ms):
    zsnr = ModelSigmas.from_config({**SD15, "rescale_betas_zero_snr": True})
    last = ZERO_SNR_LAST_ALPHAS_CUMPROD
    assert math.isfinite(zsnr.sigma_max)
    assert zsnr.sigma_max == pytest.approx(math.sqrt((1 - last) / last), rel=1e-6)  # about 4519
    assert zsnr.sigma_min == pytest.approx(ms.sigma_min, rel=1e-4)  # the rescale keeps the first level
    # diffusers rescales the betas instead, in float32, and pins the last value to 2**-24: 1e-4 relative
    theirs = EulerDiscreteScheduler.from_config({**SD15, "rescale_betas_zero_snr": True}).alphas_cumprod.double()
    ours = 1 / (1 + zsnr.sigmas.double() ** 2)
    torch.testing.assert_close(ours[:-1], theirs[:-1], rtol=1e-4, atol=0)
    for schedule in FUNCTION_SCHEDULES:
        assert bool(torch.isfinite(make_sigmas(schedule, zsnr, 10, DEFAULT)).all()), schedule.name


def test_model_sigmas_reject_bad_tables():
    for bad in (torch.tensor([1.0]), torch.tensor([2.0, 1.0]), torch.tensor([0.0, 1.0]), torch.ones(2, 2)):
        with pytest.raises(ValueError):
            ModelSigmas(bad)


def test_t_to_sigma_on_integer_timesteps_is_the_table(ms):
    t = torch.tensor([0, 1, 500, 998, 999])
    torch.testing.assert_close(ms.t_to_sigma(t), ms.sigmas[t], rtol=1e-6, atol=0)


def test_t_to_sigma_interpolates_log_sigma(ms):
    expected = math.exp((math.log(ms.sigmas[10]) + math.log(ms.sigmas[11])) / 2)
    assert float(ms.t_to_sigma(10.5)) == pytest.approx(expected, rel=1e-6)


def test_sigma_to_t_and_t_to_sigma_round_trip_batched(ms):
    t = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) * 999
    sigma = ms.t_to_sigma(t)
    assert sigma.shape == (3, 4) and sigma.dtype == torch.float32
    back = ms.sigma_to_t(sigma)
    assert back.shape == (3, 4)
    torch.testing.assert_close(back, t, rtol=0, atol=1e-3)  # float32 logs: a thousandth of a timestep
    torch.testing.assert_close(ms.t_to_sigma(back), sigma, rtol=1e-5, atol=0)


def test_sigma_to_t_clamps_outside_the_table(ms):
    assert float(ms.sigma_to_t(ms.sigma_max * 10)) == 999
    assert float(ms.sigma_to_t(ms.sigma_min / 10)) == 0
    assert float(ms.sigma_to_t(torch.tensor(ms.sigma_max))) == pytest.approx(999, abs=1e-3)


# --- every schedule: shape, order, ends ---------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 7, 10, 11, 20, 30])
@pytest.mark.parametrize("name", NAMES)
def test_length_order_and_ends(ms, name, steps):
    sigmas = sched(name, ms, steps)
    assert sigmas.dtype == torch.float32 and sigmas.device.type == "cpu" and sigmas.ndim == 1
    assert len(sigmas) == (ddim_count(steps) + 1 if name == "ddim" else steps + 1)
    assert bool((sigmas[1:] < sigmas[:-1]).all()), sigmas  # strictly decreasing, down to the last level
    if name in ENDS_AT_SIGMA_MIN:
        assert float(sigmas[-1]) == pytest.approx(ms.sigma_min, rel=1e-6)
    else:
        assert float(sigmas[-1]) == 0.0
        assert float(sigmas[-2]) > 0.0
    if name not in STARTS_LOWER:
        assert float(sigmas[0]) == pytest.approx(ms.sigma_max, rel=1e-6)


@pytest.mark.parametrize("name", ["karras", "exponential", "polyexponential", "kl_optimal", "beta"])
def test_range_overrides_set_both_ends(ms, name):
    sigmas = sched(name, ms, 12, ScheduleOptions(sigma_min=0.1, sigma_max=10.0))
    assert float(sigmas[0]) == pytest.approx(10.0, rel=1e-6)
    low_end = sigmas[-1] if name in ENDS_AT_SIGMA_MIN else sigmas[-2]
    assert float(low_end) == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize("name", ["sgm_uniform", "normal"])
def test_range_overrides_move_the_timestep_range(ms, name):
    sigmas = sched(name, ms, 12, ScheduleOptions(sigma_min=0.1, sigma_max=10.0))
    assert float(sigmas[0]) == pytest.approx(10.0, rel=1e-5)  # via t(10) and back
    if name == "normal":
        assert float(sigmas[-2]) == pytest.approx(0.1, rel=1e-5)


@pytest.mark.parametrize("name", ["uniform", "simple", "ddim", "align_your_steps"])
def test_schedules_from_the_model_table_ignore_range_overrides(ms, name):
    torch.testing.assert_close(sched(name, ms, 12, ScheduleOptions(sigma_min=0.1, sigma_max=10.0)), sched(name, ms, 12))


# --- known values -------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [None, 3.0])
def test_karras_formula(ms, rho):
    steps, lo, hi = 9, ms.sigma_min, ms.sigma_max
    sigmas = sched("karras", ms, steps, ScheduleOptions(rho=rho))
    r = 7.0 if rho is None else rho
    expected = [(hi ** (1 / r) + i / (steps - 1) * (lo ** (1 / r) - hi ** (1 / r))) ** r for i in range(steps)]
    torch.testing.assert_close(sigmas[:-1], torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=0)
    assert float(sigmas[0]) == pytest.approx(hi, rel=1e-6) and float(sigmas[-2]) == pytest.approx(lo, rel=1e-6)


def test_exponential_is_log_linear(ms):
    logs = sched("exponential", ms, 15)[:-1].double().log()
    step = (math.log(ms.sigma_min) - math.log(ms.sigma_max)) / 14
    torch.testing.assert_close(logs.diff(), torch.full((14,), step, dtype=torch.float64), rtol=0, atol=1e-5)


def test_polyexponential_rho_one_is_exponential_and_rho_bends_it(ms):
    torch.testing.assert_close(sched("polyexponential", ms, 15), sched("exponential", ms, 15), rtol=1e-5, atol=0)
    bent = sched("polyexponential", ms, 15, ScheduleOptions(rho=2.0))
    assert float(bent[7]) < float(sched("exponential", ms, 15)[7])  # ramp**2 falls faster: lower levels sooner


def test_kl_optimal_is_even_in_arctan(ms):
    angles = sched("kl_optimal", ms, 12).double().atan()
    step = (math.atan(ms.sigma_min) - math.atan(ms.sigma_max)) / 12
    torch.testing.assert_close(angles.diff(), torch.full((12,), step, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("sdxl", "table"), [(False, AYS_SD15), (True, AYS_SDXL)], ids=["sd15", "sdxl"])
def test_align_your_steps_table_verbatim_at_a1111s_count(ms, sdxl, table):
    # A1111 1.10 compares the step count with the table's length (11 levels), so its 10-step table
    # comes back unchanged at steps=11; every other count is interpolated.
    sigmas = sched("align_your_steps", ms, 11, ScheduleOptions(sdxl=sdxl))
    assert sigmas.tolist() == torch.tensor([*table, 0.0], dtype=torch.float32).tolist()


@pytest.mark.parametrize(("sdxl", "table"), [(False, AYS_SD15), (True, AYS_SDXL)], ids=["sd15", "sdxl"])
@pytest.mark.parametrize("steps", [10, 20, 21])
def test_align_your_steps_interpolation_keeps_the_ends(ms, sdxl, table, steps):
    sigmas = sched("align_your_steps", ms, steps, ScheduleOptions(sdxl=sdxl))
    assert float(sigmas[0]) == pytest.approx(table[0], rel=1e-6)
    assert float(sigmas[-2]) == pytest.approx(table[-1], rel=1e-6)
    if steps == 21:  # 21 evenly spaced points hold the table's 11: every other level is the table's
        torch.testing.assert_close(sigmas[:-1:2], torch.tensor(table, dtype=torch.float32), rtol=1e-6, atol=0)
    if steps == 10:
        assert float(sigmas[1]) != pytest.approx(table[1], rel=1e-3)  # A1111 interpolates at 10 steps too


def test_align_your_steps_tables_differ_between_sd15_and_sdxl(ms):
    assert not torch.equal(sched("align_your_steps", ms, 20), sched("align_your_steps", ms, 20, ScheduleOptions(sdxl=True)))


def test_uniform_and_normal_agree_on_the_model_range(ms):
    torch.testing.assert_close(sched("normal", ms, 17), sched("uniform", ms, 17), rtol=1e-5, atol=0)


@pytest.mark.parametrize(("name", "steps"), [("uniform", 4), ("normal", 4), ("sgm_uniform", 3), ("sgm_uniform", 9)])
def test_timestep_schedules_land_on_model_levels(ms, name, steps):
    # these step counts put every timestep on an integer: 999, 666, 333, (0) and 999, 888, ..., 111
    sigmas = sched(name, ms, steps)[:-1]
    t = ms.sigma_to_t(sigmas).round().long()
    torch.testing.assert_close(sigmas, ms.sigmas[t], rtol=1e-6, atol=0)


@pytest.mark.parametrize("steps", [3, 7, 20, 30])
def test_simple_and_ddim_pick_model_levels(ms, steps):
    simple = sched("simple", ms, steps)
    expected = [float(ms.sigmas[-(1 + int(i * (1000 / steps)))]) for i in range(steps)]
    assert simple[:-1].tolist() == expected
    ddim = sched("ddim", ms, steps)
    stride = 1000 // steps
    assert ddim[:-1].tolist() == ms.sigmas[1::stride].flip(0).tolist()


def test_beta_spans_the_model_range_between_model_levels(ms):
    sigmas = sched("beta", ms, 10)
    assert float(sigmas[0]) == pytest.approx(ms.sigma_max, rel=1e-6)
    assert float(sigmas[-2]) == pytest.approx(ms.sigma_min, rel=1e-6)
    # Beta(0.6, 0.6) quantiles are symmetric around 1/2: the levels mirror around the range's middle
    mid = (ms.sigma_max + ms.sigma_min) / 2
    torch.testing.assert_close(sigmas[:-1] - mid, (mid - sigmas[:-1]).flip(0), rtol=0, atol=1e-4)


def test_beta_options_change_the_shape(ms):
    assert not torch.equal(sched("beta", ms, 10), sched("beta", ms, 10, ScheduleOptions(beta_alpha=0.5, beta_beta=0.7)))


# --- against diffusers --------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize(
    ("name", "flag"), [("karras", "use_karras_sigmas"), ("exponential", "use_exponential_sigmas"), ("beta", "use_beta_sigmas")]
)
def test_sigma_formulas_match_diffusers(ms, name, flag, steps):
    theirs = diffusers_sigmas(steps, **{flag: True, "timestep_spacing": "linspace"})
    # same formula; float32 here vs float64 there, and diffusers' float32 alphas_cumprod: 1e-5 relative
    torch.testing.assert_close(sched(name, ms, steps), theirs, rtol=1e-5, atol=0)


@pytest.mark.parametrize("steps", [10, 25])
def test_uniform_matches_diffusers_linspace(ms, steps):
    theirs = diffusers_sigmas(steps, timestep_spacing="linspace")
    # same timesteps; diffusers interpolates sigma linearly, k-diffusion in log sigma: 1e-4 relative
    torch.testing.assert_close(sched("uniform", ms, steps), theirs, rtol=1e-4, atol=0)


@pytest.mark.parametrize("steps", [10, 25, 30])
def test_sgm_uniform_matches_diffusers_trailing(ms, steps):
    scheduler = EulerDiscreteScheduler.from_config({**SD15, "timestep_spacing": "trailing"})
    scheduler.set_timesteps(steps)
    ours = ms.sigma_to_t(sched("sgm_uniform", ms, steps)[:-1])
    # A1111 spaces t = 999 (1 - k/n) continuously; diffusers rounds 1000 (1 - k/n) and subtracts 1:
    # at most 1 + 0.5 timesteps apart
    assert float((ours - scheduler.timesteps).abs().max()) <= 1.5


@pytest.mark.parametrize("steps", [10, 20, 25, 50])
def test_ddim_matches_diffusers_leading_timesteps(ms, steps):
    scheduler = DDIMScheduler.from_config(SD15)  # "leading" spacing, steps_offset 1
    scheduler.set_timesteps(steps)
    ours = sched("ddim", ms, steps)[:-1]
    assert ms.sigma_to_t(ours).round().long().tolist() == scheduler.timesteps.tolist()
    ac = scheduler.alphas_cumprod[scheduler.timesteps]
    # diffusers' float32 alphas_cumprod vs float64 here: 1e-3 relative at the lowest levels
    torch.testing.assert_close(ours, ((1 - ac) / ac) ** 0.5, rtol=1e-3, atol=0)


# --- the table ----------------------------------------------------------------------------------


def test_table_is_a1111s():
    assert [s.name for s in SCHEDULES] == [
        "automatic", "uniform", "karras", "exponential", "polyexponential", "sgm_uniform",
        "kl_optimal", "align_your_steps", "simple", "normal", "ddim", "beta",
    ]  # fmt: skip
    assert [s.label for s in SCHEDULES][:2] == ["Automatic", "Uniform"]
    assert SCHEDULES[0].function is None and all(s.function is not None for s in SCHEDULES[1:])
    assert {s.name: s.default_rho for s in SCHEDULES if s.default_rho != -1} == {"karras": 7.0, "polyexponential": 1.0}
    assert {s.name for s in SCHEDULES if s.need_inner_model} == {"uniform", "sgm_uniform", "simple", "normal", "ddim", "beta"}
    assert get_schedule("sgm_uniform").aliases == ("SGMUniform",)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_every_spelling_resolves(schedule):
    for spelling in (schedule.name, schedule.label, *schedule.aliases):
        assert get_schedule(spelling) is schedule
        assert get_schedule(f"  {spelling.upper()} ") is schedule
        assert get_schedule(spelling.lower().replace(" ", "")) is schedule


def test_lookup_ignores_inner_whitespace():
    assert get_schedule("align  your\tsteps").name == "align_your_steps"
    assert get_schedule("sgm uniform").name == get_schedule("SGMUniform").name == "sgm_uniform"


@pytest.mark.parametrize("bad", ["", "karras exponential", "Karras2", "uni form x"])
def test_unknown_schedule_is_a_key_error_listing_the_labels(bad):
    with pytest.raises(KeyError, match="Align Your Steps"):
        get_schedule(bad)


def test_make_sigmas_checks_its_input(ms):
    with pytest.raises(ValueError, match="sampler's default"):
        make_sigmas(get_schedule("Automatic"), ms, 20)
    for steps in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            make_sigmas(get_schedule("karras"), ms, steps)
    with pytest.raises(ValueError, match="below sigma_max"):
        make_sigmas(get_schedule("karras"), ms, 20, ScheduleOptions(sigma_min=20.0))
    for bad in ({"rho": 0.0}, {"sigma_min": -1.0}, {"sigma_max": math.inf}, {"beta_alpha": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ScheduleOptions(**bad)


def test_make_sigmas_defaults_to_no_overrides(ms):
    assert torch.equal(make_sigmas(get_schedule("karras"), ms, 20), make_sigmas(get_schedule("karras"), ms, 20, DEFAULT))


# --- discard next-to-last -----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_discard_next_to_last_keeps_the_step_count(ms, name):
    steps = 20
    full = sched(name, ms, steps + 1)
    sigmas = discard_next_to_last(full)
    assert len(sigmas) == len(full) - 1
    assert torch.equal(sigmas, torch.cat([full[:-2], full[-1:]]))
    if name != "ddim":  # DDIM's count is its own (see ddim_count)
        assert len(sigmas) == steps + 1


def test_discard_next_to_last_needs_three_levels():
    assert discard_next_to_last(torch.tensor([3.0, 1.0, 0.0])).tolist() == [3.0, 0.0]
    with pytest.raises(ValueError, match="at least 3"):
        discard_next_to_last(torch.tensor([1.0, 0.0]))
