"""The sampler registry: A1111 names and schedule types → diffusers schedulers that really sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from modules import samplers
from modules.samplers import UnknownSamplerError, UnsupportedScheduleError

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "configs" / "tokenizer"

SD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
}

EXPECTED_CLASSES = {
    "Euler a": "EulerAncestralDiscreteScheduler",
    "Euler": "EulerDiscreteScheduler",
    "LMS": "LMSDiscreteScheduler",
    "Heun": "HeunDiscreteScheduler",
    "DPM2": "KDPM2DiscreteScheduler",
    "DPM2 a": "KDPM2AncestralDiscreteScheduler",
    "DPM++ 2S a": "DPMSolverSinglestepScheduler",
    "DPM++ 2M": "DPMSolverMultistepScheduler",
    "DPM++ SDE": "DPMSolverSDEScheduler",
    "DPM++ 2M SDE": "DPMSolverMultistepScheduler",
    "DPM++ 2M SDE Heun": "DPMSolverMultistepScheduler",
    "DPM++ 3M SDE": "DPMSolverMultistepScheduler",
    "DDIM": "DDIMScheduler",
    "PLMS": "PNDMScheduler",
    "UniPC": "UniPCMultistepScheduler",
    "LCM": "LCMScheduler",
}

STEPS = 5


def _tiny_pipeline() -> StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            vocab_size=49408,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            max_position_embeddings=77,
        )
    )
    tokenizer = CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), model_max_length=77)
    scheduler = samplers.make_scheduler(SD_SCHEDULER_CONFIG, "DDIM")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is many times faster on a busy machine
    yield _tiny_pipeline()
    torch.set_num_threads(threads)


def _generate(pipe: StableDiffusionPipeline, sampler: str, schedule: str = "Automatic", seed: int = 0) -> np.ndarray:
    """One 32x32 image with a fresh scheduler built from the model's own config."""
    pipe.scheduler = samplers.make_scheduler(pipe.scheduler.config, sampler, schedule, seed=seed)
    out = pipe(
        "a red apple",
        negative_prompt="blurry",
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        height=32,
        width=32,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    )
    return out.images


@pytest.fixture(scope="module")
def reference_images(pipe: StableDiffusionPipeline) -> dict[str, np.ndarray]:
    """Images of two samplers that every other sampler's image must differ from."""
    return {name: _generate(pipe, name) for name in ("Euler", "DDIM")}


# --- every sampler really samples --------------------------------------------------------------


@pytest.mark.parametrize("name", samplers.SAMPLER_NAMES)
def test_every_sampler_generates_a_reproducible_distinct_image(pipe, reference_images, name):
    first = _generate(pipe, name)
    assert type(pipe.scheduler).__name__ == EXPECTED_CLASSES[name]
    assert first.shape == (1, 32, 32, 3)
    assert np.isfinite(first).all()
    assert first.std() > 0.0
    second = _generate(pipe, name)
    np.testing.assert_array_equal(first, second)
    other = "DDIM" if name == "Euler" else "Euler"
    assert np.abs(first - reference_images[other]).max() > 1e-3, f"{name} gave the same image as {other}"


@pytest.mark.parametrize("name", ["Euler", "DPM++ 2M", "DPM2 a", "UniPC"])
def test_karras_generates_a_different_image_than_uniform(pipe, name):
    uniform = _generate(pipe, name, "Uniform")
    karras = _generate(pipe, name, "Karras")
    assert np.isfinite(karras).all()
    assert np.abs(uniform - karras).max() > 1e-3


def test_dpmpp_sde_noise_follows_the_seed(pipe):
    assert samplers.make_scheduler(SD_SCHEDULER_CONFIG, "DPM++ SDE", seed=1234).config.noise_sampler_seed == 1234
    a = _generate(pipe, "DPM++ SDE", seed=1)
    b = _generate(pipe, "DPM++ SDE", seed=2)
    assert np.abs(a - b).max() > 1e-3


def test_sampler_names_cover_a1111():
    required = ["Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
                "DPM++ 2M SDE", "DDIM", "PLMS", "UniPC"]  # fmt: skip
    assert set(required) <= set(samplers.SAMPLER_NAMES)
    assert set(samplers.SAMPLER_NAMES) == set(EXPECTED_CLASSES)
    assert samplers.SCHEDULE_TYPES == ("Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Beta")


# --- the options that make each class behave like the A1111 sampler -----------------------------


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("DPM++ 2M", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        ("DPM++ 2M SDE", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint"}),
        ("DPM++ 2M SDE Heun", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"}),
        ("DPM++ 3M SDE", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
        ("DPM++ 2S a", {"solver_order": 2}),
        ("PLMS", {"skip_prk_steps": True}),
        ("UniPC", {"solver_type": "bh2"}),
    ],
)
def test_sampler_options(name, options):
    config = samplers.make_scheduler(SD_SCHEDULER_CONFIG, name).config
    for key, value in options.items():
        assert config[key] == value, key


def test_sampler_options_override_a_conflicting_base_config():
    base = {**SD_SCHEDULER_CONFIG, "algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun"}
    config = samplers.make_scheduler(base, "DPM++ 2M").config
    assert (config.algorithm_type, config.solver_order, config.solver_type) == ("dpmsolver++", 2, "midpoint")


@pytest.mark.parametrize("name", samplers.SAMPLER_NAMES)
def test_model_config_survives(name):
    base = {**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction", "beta_end": 0.02, "num_train_timesteps": 900}
    scheduler = samplers.make_scheduler(base, name)
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_end == 0.02
    assert scheduler.config.num_train_timesteps == 900


def test_frozen_model_config_with_stale_keys():
    """A scheduler's own FrozenDict config works as a base, and its leftovers do not leak."""
    old = samplers.make_scheduler({**SD_SCHEDULER_CONFIG, "timestep_spacing": "leading"}, "DPM++ SDE", "Karras", seed=7)
    assert old.config.noise_sampler_seed == 7
    new = samplers.make_scheduler(old.config, "DPM++ SDE", "Uniform")
    assert new.config.noise_sampler_seed is None
    assert new.config.use_karras_sigmas is False
    assert new.config.timestep_spacing == "linspace"
    assert samplers.make_scheduler(old.config, "DPM++ SDE").config.timestep_spacing == "leading"
    assert "noise_sampler_seed" not in samplers.make_scheduler(old.config, "Euler").config


def test_each_call_builds_a_new_scheduler():
    a = samplers.make_scheduler(SD_SCHEDULER_CONFIG, "Euler")
    b = samplers.make_scheduler(SD_SCHEDULER_CONFIG, "Euler")
    assert a is not b


# --- schedule types -----------------------------------------------------------------------------


def _sigmas(name: str, schedule: str, base: dict | None = None, steps: int = 10) -> torch.Tensor:
    scheduler = samplers.make_scheduler(base or SD_SCHEDULER_CONFIG, name, schedule)
    scheduler.set_timesteps(steps)
    return scheduler.sigmas.double()


def test_karras_sigmas_follow_the_karras_formula():
    uniform, karras = _sigmas("Euler", "Uniform"), _sigmas("Euler", "Karras")
    assert not torch.allclose(uniform, karras)
    sigma_max, sigma_min, rho = float(karras[0]), float(karras[-2]), 7.0
    ramp = torch.linspace(0, 1, 10, dtype=torch.float64)
    expected = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    torch.testing.assert_close(karras[:-1], expected, rtol=1e-4, atol=1e-4)
    # Karras spends more steps at low noise than the uniform schedule does.
    assert karras[5] < uniform[5]


@pytest.mark.parametrize("schedule", ["Exponential", "Beta"])
def test_other_sigma_schedules_change_the_sigmas(schedule):
    assert not torch.allclose(_sigmas("DPM++ 2M", "Uniform"), _sigmas("DPM++ 2M", schedule))
    assert not torch.allclose(_sigmas("DPM++ 2M", "Karras"), _sigmas("DPM++ 2M", schedule))


def test_exponential_sigmas_are_log_linear():
    sigmas = _sigmas("Euler", "Exponential")[:-1]
    steps = torch.log(sigmas[1:]) - torch.log(sigmas[:-1])
    torch.testing.assert_close(steps, torch.full_like(steps, float(steps[0])), rtol=1e-3, atol=1e-3)


def test_karras_in_the_base_config_does_not_leak_into_uniform():
    base = {**SD_SCHEDULER_CONFIG, "use_karras_sigmas": True, "use_exponential_sigmas": False}
    scheduler = samplers.make_scheduler(base, "Euler", "Uniform")
    assert scheduler.config.use_karras_sigmas is False
    torch.testing.assert_close(_sigmas("Euler", "Uniform", base), _sigmas("Euler", "Uniform"))


def test_automatic_uses_a1111_default_schedule():
    assert samplers.make_scheduler(SD_SCHEDULER_CONFIG, "DPM++ 2M").config.use_karras_sigmas is True
    sde = samplers.make_scheduler(SD_SCHEDULER_CONFIG, "DPM++ 2M SDE", "Automatic").config
    assert (sde.use_exponential_sigmas, sde.use_karras_sigmas) == (True, False)
    euler = samplers.make_scheduler(SD_SCHEDULER_CONFIG, "Euler", None).config
    assert (euler.use_karras_sigmas, euler.use_exponential_sigmas, euler.use_beta_sigmas) == (False, False, False)
    assert samplers.effective_schedule_type("DPM++ 2M") == "Karras"
    assert samplers.effective_schedule_type("Euler") == "Automatic"
    assert samplers.effective_schedule_type("DPM++ 2M", "Uniform") == "Uniform"


def test_automatic_keeps_the_model_timestep_spacing():
    base = {**SD_SCHEDULER_CONFIG, "timestep_spacing": "trailing"}
    assert samplers.make_scheduler(base, "Euler").config.timestep_spacing == "trailing"
    assert samplers.make_scheduler(base, "Euler", "Uniform").config.timestep_spacing == "linspace"


@pytest.mark.parametrize("name", ["Euler a", "DDIM", "PLMS", "DPM++ 2M"])
def test_sgm_uniform_uses_trailing_timesteps(name):
    scheduler = samplers.make_scheduler(SD_SCHEDULER_CONFIG, name, "SGM Uniform")
    assert scheduler.config.timestep_spacing == "trailing"
    scheduler.set_timesteps(4)
    assert int(scheduler.timesteps[0]) == 999  # trailing starts at the last training step
    uniform = samplers.make_scheduler(SD_SCHEDULER_CONFIG, name, "Uniform")
    uniform.set_timesteps(4)
    assert not torch.equal(scheduler.timesteps, uniform.timesteps)


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
        (("k_dpmpp_2m", "Karras"), ("DPM++ 2M", "Karras")),
        (("k_dpmpp_2m_ka", None), ("DPM++ 2M", "Karras")),
        (("k_dpmpp_2m_sde_exp", None), ("DPM++ 2M SDE", "Exponential")),
        (("Euler", "sgm_uniform"), ("Euler", "SGM Uniform")),
        (("Euler", "SGMUniform"), ("Euler", "SGM Uniform")),
        (("ddim", " UNIFORM "), ("DDIM", "Uniform")),
        (("DPM++ 2M SDE", None), ("DPM++ 2M SDE", "Automatic")),
    ],
)
def test_resolve(given, expected):
    assert samplers.resolve(*given) == expected


def test_legacy_name_works_in_make_scheduler():
    assert samplers.make_scheduler(SD_SCHEDULER_CONFIG, "LMS Karras", "Automatic").config.use_karras_sigmas is True


def test_legacy_name_contradicting_the_schedule_type_raises():
    with pytest.raises(ValueError, match="implies schedule type 'Karras'"):
        samplers.resolve("DPM++ 2M Karras", "Exponential")
    with pytest.raises(ValueError, match="Karras"):
        samplers.make_scheduler(SD_SCHEDULER_CONFIG, "DPM++ 2M Karras", "Uniform")


def test_unknown_sampler_lists_the_valid_names():
    with pytest.raises(UnknownSamplerError) as err:
        samplers.resolve("Euler b")
    assert isinstance(err.value, ValueError)
    for name in samplers.SAMPLER_NAMES:
        assert name in str(err.value)
    with pytest.raises(UnknownSamplerError):
        samplers.make_scheduler(SD_SCHEDULER_CONFIG, "DPM fast")
    with pytest.raises(UnknownSamplerError):
        samplers.resolve("DPM++ 2M Polyexponential")


def test_unknown_schedule_type_lists_the_valid_names():
    with pytest.raises(UnknownSamplerError) as err:
        samplers.resolve("Euler", "Karas")
    for label in samplers.SCHEDULE_TYPES:
        assert label in str(err.value)
    with pytest.raises(UnknownSamplerError, match="diffusers cannot express it"):
        samplers.make_scheduler(SD_SCHEDULER_CONFIG, "Euler", "Align Your Steps")


@pytest.mark.parametrize(
    ("name", "schedule", "supported"),
    [
        ("DDIM", "Karras", "Automatic, Uniform, SGM Uniform"),
        ("PLMS", "Exponential", "Automatic, Uniform, SGM Uniform"),
        ("Euler a", "Karras", "Automatic, Uniform, SGM Uniform"),
        ("Euler a Karras", None, "Automatic, Uniform, SGM Uniform"),
        ("DPM++ 2S a", "SGM Uniform", "Automatic, Uniform, Karras, Exponential, Beta"),
        ("LCM", "Uniform", "Automatic"),
    ],
)
def test_unsupported_combination_names_what_is_supported(name, schedule, supported):
    with pytest.raises(UnsupportedScheduleError, match=f"supported: {supported}$"):
        samplers.make_scheduler(SD_SCHEDULER_CONFIG, name, schedule)
    assert issubclass(UnsupportedScheduleError, ValueError)


def test_missing_package_is_a_clear_import_error(monkeypatch):
    monkeypatch.setattr(samplers, "_is_installed", lambda package: package != "torchsde")
    with pytest.raises(ImportError, match="'DPM\\+\\+ SDE'.*torchsde"):
        samplers.make_scheduler(SD_SCHEDULER_CONFIG, "DPM++ SDE")
    assert samplers.make_scheduler(SD_SCHEDULER_CONFIG, "Euler") is not None


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
    assert "k_euler_a" in by_name["Euler a"]["aliases"]
    assert by_name["DPM++ 2M"]["options"]["scheduler"] == "karras"


def test_scheduler_list_has_a1111_shape():
    items = samplers.scheduler_list()
    assert [item["label"] for item in items] == list(samplers.SCHEDULE_TYPES)
    for item in items:
        assert set(item) == {"name", "label", "aliases", "default_rho", "need_inner_model"}
        assert item["name"] == item["name"].lower()
        assert samplers.resolve("Euler", item["name"]) == samplers.resolve("Euler", item["label"])
    by_name = {item["name"]: item for item in items}
    assert by_name["karras"]["default_rho"] == 7.0
    assert by_name["sgm_uniform"]["label"] == "SGM Uniform"
