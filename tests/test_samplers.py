"""The sampler registry: A1111's names, each sampler's own schedule and options, and every one of
the 240 sampler x schedule-type pairs really sampling through the one core."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules import samplers
from modules.samplers import UnknownSamplerError, schedules
from modules.samplers.noise import BrownianTreeNoise, GeneratorNoise
from modules.samplers.schedules import ModelSigmas
from modules.schemas import Txt2ImgRequest

SD_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
MODEL = ModelSigmas.from_config(SD_CONFIG)

A1111_SAMPLERS = ("DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
                  "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart",
                  "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM")  # fmt: skip
A1111_SCHEDULES = ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                   "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")  # fmt: skip


def test_the_whole_a1111_matrix_is_offered():
    assert samplers.SAMPLER_NAMES == A1111_SAMPLERS
    assert samplers.SCHEDULE_TYPES == A1111_SCHEDULES


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (("DPM++ 2M Karras", None), ("DPM++ 2M", "Karras")),
        (("LMS Karras", None), ("LMS", "Karras")),
        (("DPM++ SDE Karras", "Automatic"), ("DPM++ SDE", "Karras")),
        (("DPM2 a Karras", ""), ("DPM2 a", "Karras")),
        (("DPM++ 2M SDE Exponential", None), ("DPM++ 2M SDE", "Exponential")),
        (("DPM++ 2M SDE Heun Karras", None), ("DPM++ 2M SDE Heun", "Karras")),
        (("DPM++ 2M Karras", "karras"), ("DPM++ 2M", "Karras")),
        (("  dpm++ 2m   KARRAS ", None), ("DPM++ 2M", "Karras")),
        ((" euler A", None), ("Euler a", "Automatic")),
        (("k_euler_a", None), ("Euler a", "Automatic")),
        (("k_euler_a", "karras"), ("Euler a", "Karras")),
        (("k_dpmpp_2m_ka", None), ("DPM++ 2M", "Karras")),
        (("k_dpmpp_2m_sde_exp", None), ("DPM++ 2M SDE", "Exponential")),
        (("Euler", "sgm_uniform"), ("Euler", "SGM Uniform")),
        (("Euler", "SGMUniform"), ("Euler", "SGM Uniform")),
        (("DDIM", "normal"), ("DDIM", "Normal")),  # SillyTavern's defaults
        (("Euler a", "Karras"), ("Euler a", "Karras")),  # Open WebUI's common pair
        (("dpm fast", "align your steps"), ("DPM fast", "Align Your Steps")),
        (("DPM++ 2M Align Your Steps", None), ("DPM++ 2M", "Align Your Steps")),
    ],
)
def test_resolve(given, expected):
    assert samplers.resolve(*given) == expected


def test_a_legacy_name_contradicting_the_schedule_type_is_an_error():
    with pytest.raises(ValueError, match="implies schedule type 'Karras'"):
        samplers.resolve("DPM++ 2M Karras", "Exponential")


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownSamplerError) as err:
        samplers.resolve("Euler b")
    assert all(name in str(err.value) for name in samplers.SAMPLER_NAMES)
    with pytest.raises(UnknownSamplerError) as err:
        samplers.resolve("Euler", "Karas")
    assert all(label in str(err.value) for label in samplers.SCHEDULE_TYPES)


def test_automatic_is_each_samplers_own_schedule_as_a1111():
    own = {name: samplers.effective_schedule_type(name) for name in samplers.SAMPLER_NAMES}
    assert own["DPM++ 2M"] == own["DPM++ SDE"] == own["DPM2"] == own["Restart"] == "Karras"
    assert own["DPM++ 2M SDE"] == own["DPM++ 3M SDE"] == "Exponential"
    assert own["DDIM"] == own["PLMS"] == "DDIM"
    assert own["LCM"] == "SGM Uniform"
    assert own["Euler"] == own["Euler a"] == own["UniPC"] == "Uniform"
    assert samplers.effective_schedule_type("DPM++ 2M", "Beta") == "Beta"


# --- what prepare builds ------------------------------------------------------------------------


def test_prepare_builds_the_schedule_of_the_steps():
    run = samplers.prepare("Euler", "Karras", MODEL, 10, [1])
    assert run.schedule.label == "Karras" and len(run.sigmas) == 11
    torch.testing.assert_close(run.sigmas, schedules.karras(MODEL, 10, schedules.ScheduleOptions()))
    assert samplers.prepare("DPM++ 2M", None, MODEL, 10, [1]).schedule.label == "Karras"


def test_dpm2_discards_the_next_to_last_sigma_as_a1111():
    run = samplers.prepare("DPM2", "Karras", MODEL, 10, [1])
    full = schedules.karras(MODEL, 11, schedules.ScheduleOptions())
    assert len(run.sigmas) == 11
    torch.testing.assert_close(run.sigmas, torch.cat([full[:-2], full[-1:]]))
    always = samplers.prepare("Euler", "Karras", MODEL, 10, [1], samplers.SamplerSettings(
        always_discard_next_to_last_sigma=True))
    torch.testing.assert_close(always.sigmas, run.sigmas)
    assert always.params == {"Discard penultimate sigma": True}


def test_overrides_of_the_schedule_reach_it_and_the_infotext():
    settings = samplers.SamplerSettings(sigma_min=0.1, sigma_max=10.0, rho=3.0)
    run = samplers.prepare("Euler", "Karras", MODEL, 8, [1], settings)
    assert float(run.sigmas[0]) == pytest.approx(10.0) and float(run.sigmas[-2]) == pytest.approx(0.1)
    assert run.params == {"Schedule min sigma": 0.1, "Schedule max sigma": 10.0, "Schedule rho": 3.0}


def test_eta_goes_to_the_sampler_that_reads_it():
    settings = samplers.SamplerSettings(eta_ancestral=0.5, eta_ddim=0.25)
    assert samplers.prepare("Euler a", None, MODEL, 4, [1], settings).options.eta == 0.5
    assert samplers.prepare("DDIM", None, MODEL, 4, [1], settings).options.eta == 0.25
    assert samplers.prepare("Euler", None, MODEL, 4, [1], settings).options.eta == 0.0
    assert samplers.prepare("DDIM", None, MODEL, 4, [1]).options.eta == 0.0  # A1111: DDIM deterministic by default
    assert samplers.prepare("Euler a", None, MODEL, 4, [1], settings).params == {"Eta": 0.5}
    assert samplers.prepare("DDIM", None, MODEL, 4, [1], settings).params == {"Eta DDIM": 0.25}


def test_ensd_seeds_the_step_noise_of_ancestral_samplers_only():
    settings = samplers.SamplerSettings(eta_noise_seed_delta=31337)
    ancestral = samplers.prepare("Euler a", None, MODEL, 4, [1, 2], settings)
    assert ancestral.noise_seeds == (31338, 31339) and ancestral.params == {"ENSD": 31337}
    sde = samplers.prepare("DPM++ 2M SDE", None, MODEL, 4, [1, 2], settings)
    assert sde.noise_seeds == (1, 2) and "ENSD" not in sde.params  # A1111: Brownian trees take the image seeds


def test_sde_samplers_draw_brownian_noise_others_generator_noise():
    x = torch.zeros(2, 4, 2, 2)
    sde = samplers.prepare("DPM++ SDE", None, MODEL, 4, [1, 2])
    assert isinstance(sde.noise_source(x, sde.sigmas), BrownianTreeNoise)
    euler_a = samplers.prepare("Euler a", None, MODEL, 4, [1, 2])
    source = euler_a.noise_source(x, euler_a.sigmas)
    assert isinstance(source, GeneratorNoise)
    # the step noise continues each image's generator after its initial noise, as A1111's ImageRNG
    first = torch.randn((4, 2, 2), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(source(torch.tensor(1.0), torch.tensor(0.5))[0], first)


def test_sgm_noise_multiplier_scales_the_initial_noise():
    sigma = torch.tensor(14.6)
    assert float(samplers.prepare("Euler", None, MODEL, 4, [1]).initial_scale(sigma)) == pytest.approx(14.6)
    sgm = samplers.prepare("Euler", None, MODEL, 4, [1], samplers.SamplerSettings(sgm_noise_multiplier=True))
    assert float(sgm.initial_scale(sigma)) == pytest.approx((1 + 14.6**2) ** 0.5)
    assert sgm.params == {"SGM noise multiplier": True}


# --- the A1111 API lists ------------------------------------------------------------------------


def test_sampler_list_has_a1111_shape():
    items = samplers.sampler_list()
    assert [item["name"] for item in items] == list(samplers.SAMPLER_NAMES)
    for item in items:
        assert set(item) == {"name", "aliases", "options"}
        assert all(isinstance(v, str) for v in item["options"].values())
        for alias in item["aliases"]:
            assert samplers.resolve(alias)[0] == item["name"]
    by_name = {item["name"]: item for item in items}
    assert by_name["DPM++ 2M"]["options"] == {"scheduler": "karras"}
    assert by_name["DPM++ SDE"]["options"] == {"scheduler": "karras", "second_order": "True", "brownian_noise": "True"}
    assert by_name["DPM2 a"]["options"]["discard_next_to_last_sigma"] == "True"


def test_scheduler_list_has_a1111_shape():
    items = samplers.scheduler_list()
    assert [item["label"] for item in items] == list(samplers.SCHEDULE_TYPES)
    for item in items:
        assert set(item) == {"name", "label", "aliases", "default_rho", "need_inner_model"}
        assert samplers.resolve("Euler", item["name"]) == samplers.resolve("Euler", item["label"])
    by_name = {item["name"]: item for item in items}
    assert by_name["karras"]["default_rho"] == 7.0 and by_name["polyexponential"]["default_rho"] == 1.0
    assert by_name["sgm_uniform"]["aliases"] == ["SGMUniform"]


# --- every pair samples, on a tiny model through the job queue -----------------------------------


def run(services, sampler: str, schedule: str, seed: int = 3, steps: int = 3):
    return services.submit("txt2img", Txt2ImgRequest(
        prompt="a red circle", negative_prompt="blurry", seed=seed, steps=steps, sampler_name=sampler,
        scheduler=schedule, cfg_scale=5.0, width=32, height=32, save_images=False)).wait(timeout=120)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("sampler", samplers.SAMPLER_NAMES)
def test_every_sampler_draws_its_own_reproducible_image(services, sampler):
    first = run(services, sampler, "Automatic")
    again = run(services, sampler, "Automatic")
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))
    other = run(services, "Euler" if sampler != "Euler" else "DDIM", "Automatic")
    assert np.abs(pixels(first.images[0]) - pixels(other.images[0])).max() > 0, f"{sampler} drew Euler's image"
    schedule = samplers.effective_schedule_type(sampler)
    assert f"Sampler: {sampler}, Schedule type: {schedule}," in first.infotexts[0]
