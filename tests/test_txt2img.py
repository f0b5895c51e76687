"""txt2img through the job queue on tiny checkpoints: seeds, prompts, swaps, infotext, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from modules.checkpoints import CheckpointError
from modules.images import read_infotext
from modules.infotext import infotext_to_fields, parse_infotext
from modules.jobs import JobState
from modules.schemas import RequestError, Txt2ImgRequest, parse_request


def run(services, **fields):
    return services.submit("txt2img", Txt2ImgRequest(**{"steps": 3, **fields})).wait(timeout=120)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_same_request_gives_bit_identical_images(services):
    a = run(services, prompt="a red circle", seed=7)
    b = run(services, prompt="a red circle", seed=7)
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert a.images[0].size == (32, 32)  # the tiny model's native size


def test_seed_and_negative_prompt_change_the_image(services):
    base = pixels(run(services, prompt="a red circle", seed=7).images[0])
    other_seed = pixels(run(services, prompt="a red circle", seed=8).images[0])
    negative = pixels(run(services, prompt="a red circle", negative_prompt="blue", seed=7).images[0])
    assert np.abs(base - other_seed).mean() > 1
    assert np.abs(base - negative).mean() > 0.5


def test_batch_image_i_uses_seed_plus_i(services):
    batch = run(services, prompt="x", seed=100, batch_size=2, n_iter=2, sampler_name="Euler")
    assert batch.seeds == [100, 101, 102, 103]
    single = run(services, prompt="x", seed=102, sampler_name="Euler")
    assert np.array_equal(pixels(batch.images[2]), pixels(single.images[0]))


def test_random_seed_is_recorded(services):
    r = run(services, prompt="x", seed=-1)
    assert 0 <= r.seeds[0] < 2**32 and f"Seed: {r.seeds[0]}," in r.infotexts[0]


def test_variation_seed(services):
    plain = pixels(run(services, prompt="x", seed=5, sampler_name="Euler").images[0])
    zero = pixels(run(services, prompt="x", seed=5, subseed=9, subseed_strength=0.0, sampler_name="Euler").images[0])
    half = run(services, prompt="x", seed=5, subseed=9, subseed_strength=0.5, sampler_name="Euler")
    full = pixels(run(services, prompt="x", seed=5, subseed=9, subseed_strength=1.0, sampler_name="Euler").images[0])
    other = pixels(run(services, prompt="x", seed=9, sampler_name="Euler").images[0])
    assert np.array_equal(plain, zero)
    assert np.abs(pixels(half.images[0]) - plain).mean() > 0.5
    assert np.array_equal(full, other)  # strength 1 is the variation seed's own noise
    assert "Variation seed: 9, Variation seed strength: 0.5" in half.infotexts[0]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M Karras", "DDIM", "UniPC", "Heun", "LMS"])
def test_samplers_run_through_the_core(services, sampler):
    r = run(services, prompt="x", seed=1, sampler_name=sampler)
    arr = pixels(r.images[0])
    assert arr.shape == (32, 32, 3) and arr.std() > 0
    parsed = parse_infotext(r.infotexts[0])
    assert parsed["Sampler"] == sampler.replace(" Karras", "")
    if "Karras" in sampler:
        assert parsed["Schedule type"] == "Karras"


def test_checkpoint_swap_gives_each_model_its_own_output(services):
    a1 = run(services, prompt="x", seed=3, sd_model_checkpoint="tiny-a")
    b = run(services, prompt="x", seed=3, sd_model_checkpoint="tiny-b.safetensors")
    folder = run(services, prompt="x", seed=3, sd_model_checkpoint="tiny-folder")
    a2 = run(services, prompt="x", seed=3, sd_model_checkpoint="tiny-a")
    assert (a1.model_name, b.model_name, folder.model_name) == ("tiny-a", "tiny-b", "tiny-folder")
    assert np.array_equal(pixels(a1.images[0]), pixels(a2.images[0]))
    assert np.abs(pixels(a1.images[0]) - pixels(b.images[0])).mean() > 1
    assert np.abs(pixels(a1.images[0]) - pixels(folder.images[0])).mean() > 1


def test_queued_switch_does_not_change_earlier_jobs(services):
    services.select_checkpoint("tiny-a")
    before = services.submit("txt2img", Txt2ImgRequest(prompt="x", steps=2, seed=1))
    switch = services.select_checkpoint("tiny-b")
    after = services.submit("txt2img", Txt2ImgRequest(prompt="x", steps=2, seed=1))
    assert before.wait(120).model_name == "tiny-a"
    assert switch.wait(120) == "tiny-b.safetensors"
    assert after.wait(120).model_name == "tiny-b"


def test_png_carries_infotext_and_round_trip_reproduces_the_image(services):
    first = run(services, prompt="a (red:1.2) circle\nsecond line", negative_prompt="blurry, dark",
                seed=11, sampler_name="DPM++ 2M", scheduler="Karras", cfg_scale=5.5, clip_skip=2)
    path = first.paths[0]
    assert path.parent.name.count("-") == 2 and path.name.endswith("-11.png")  # YYYY-MM-DD/NNNNN-SEED.png
    text = read_infotext(path)
    assert text == first.infotexts[0]
    fields = infotext_to_fields(parse_infotext(text))
    again = run(services, **{k: v for k, v in fields.items() if k in Txt2ImgRequest.model_fields})
    assert np.array_equal(pixels(again.images[0]), np.asarray(__import__("PIL.Image").Image.open(path), dtype=np.int16))


def test_save_images_false_writes_nothing(services, data_dir):
    r = run(services, prompt="x", seed=1, save_images=False)
    assert r.paths == [] and not (data_dir / "outputs").exists()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"width": 100}, "width: must be a multiple of 8"),
        ({"steps": 0}, "steps"),
        ({"cfg_scale": "high"}, "cfg_scale"),
        ({"seed": -5}, "seed"),
        ({"batch_size": 0}, "batch_size"),
        ({"subseed_strength": 2}, "subseed_strength"),
    ],
)
def test_bad_fields_are_named(fields, message):
    with pytest.raises(RequestError, match=message):
        parse_request(Txt2ImgRequest, fields)


def test_bad_values_against_the_model_and_settings(services):
    with pytest.raises(RequestError, match="sampler_name: .*Euler a"):
        run(services, sampler_name="Nonexistent")
    with pytest.raises(RequestError, match="width: 4096 is larger"):
        run(services, width=4096, height=64)
    with pytest.raises(CheckpointError, match="not found"):
        run(services, sd_model_checkpoint="missing-model")
    assert run(services, prompt="still fine", seed=1).images  # the queue survived


def test_interrupt_mid_run_stops_quickly_keeps_the_partial_image_and_next_job_is_correct(services):
    reference = run(services, prompt="x", seed=4, steps=2)
    started = threading.Event()

    class Watch:
        pass

    long = services.submit("txt2img", Txt2ImgRequest(prompt="x", seed=4, steps=150, save_images=False))
    while long.progress.snapshot().step < 2:
        started.wait(0.01)
    services.queue.cancel(long.id)  # a running job is interrupted: it keeps what it made
    partial = long.wait(60)
    assert long.state == JobState.done and long.interrupted and long.progress.snapshot().step < 150
    assert partial.interrupted and len(partial.images) == 1 and partial.seeds == [4]
    again = run(services, prompt="x", seed=4, steps=2)
    assert np.array_equal(pixels(reference.images[0]), pixels(again.images[0]))


def test_skip_abandons_the_current_iteration_only(services):
    job = services.submit("txt2img", Txt2ImgRequest(prompt="x", seed=1, steps=60, n_iter=2, save_images=False))
    while job.progress.snapshot().step < 2:
        threading.Event().wait(0.01)
    services.queue.skip()
    result = job.wait(120)
    assert result.skipped == 1 and len(result.images) == 2 and result.seeds == [1, 2]  # the partial one kept
    assert not result.interrupted


def test_progress_reports_steps(services):
    job = services.submit("txt2img", Txt2ImgRequest(prompt="x", seed=1, steps=4, n_iter=2))
    job.wait(120)
    snap = job.progress.snapshot()
    assert (snap.step, snap.total) == (8, 8)


def test_sde_sampler_reproduces_from_its_seed(services):
    a = run(services, prompt="x", seed=21, sampler_name="DPM++ SDE")
    b = run(services, prompt="x", seed=21, sampler_name="DPM++ SDE")
    c = run(services, prompt="x", seed=22, sampler_name="DPM++ SDE")
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert not np.array_equal(pixels(a.images[0]), pixels(c.images[0]))


def test_vae_override_from_models_vae(services, data_dir):
    from modules.ldm_export import save_ldm_checkpoint, vae_to_ldm
    from tests.tiny_models import tiny_components

    _, vae, _ = tiny_components(seed=9)
    ldm = {k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()}
    (data_dir / "models" / "VAE").mkdir()
    save_ldm_checkpoint(data_dir / "models" / "VAE" / "other.vae.safetensors", ldm, dtype=None)
    own = run(services, prompt="x", seed=2, sd_model_checkpoint="tiny-a")
    swapped = run(services, prompt="x", seed=2, sd_model_checkpoint="tiny-a", sd_vae="other.vae.safetensors")
    again = run(services, prompt="x", seed=2, sd_model_checkpoint="tiny-a", sd_vae="Automatic")
    assert np.abs(pixels(own.images[0]) - pixels(swapped.images[0])).mean() > 1
    assert np.array_equal(pixels(own.images[0]), pixels(again.images[0]))  # the checkpoint's own VAE is untouched
    assert "VAE: other.vae.safetensors" in swapped.infotexts[0] and "VAE hash: " in swapped.infotexts[0]
    assert infotext_to_fields(parse_infotext(swapped.infotexts[0]))["sd_vae"] == "other.vae.safetensors"
    with pytest.raises(RequestError, match="sd_vae: 'missing.pt' is not in models/VAE; .*other.vae.safetensors"):
        run(services, prompt="x", sd_vae="missing.pt")


def test_previews_are_decoded_only_while_a_client_watches(services):
    """A preview is a full VAE decode: a job nobody watches makes none (modules.jobs.PreviewWatch)."""
    services.update_settings(services.settings.model_copy(update={"show_progress_every_n_steps": 1}))
    with services.models.use(services.selected_checkpoint) as model:
        decodes = []
        handle = model.pipe.vae.decoder.register_forward_hook(lambda *_: decodes.append(1))
    try:
        unwatched = run(services, prompt="x", seed=1, steps=4, sampler_name="Euler")
        assert len(decodes) == 1  # the image itself
        decodes.clear()
        services.queue.preview_watch.touch()  # a client polls the progress with previews
        watched = run(services, prompt="x", seed=1, steps=4, sampler_name="Euler")
        assert len(decodes) == 1 + 3  # and one preview per step but the last (the image itself follows)
    finally:
        handle.remove()
    assert np.array_equal(pixels(unwatched.images[0]), pixels(watched.images[0]))
