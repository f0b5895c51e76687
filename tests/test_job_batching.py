"""Batched queue (setting batch_queue_jobs): waiting txt2img jobs that fit run as one UNet batch, and
each job gets exactly the images, seeds and infotexts it would have had alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from modules import job_batching
from modules.config import SettingsError, load_settings
from modules.jobs import JobQueue, JobState
from modules.schemas import Txt2ImgRequest
from modules.services import build_services
from modules.settings_update import validate_change

# ----- which jobs fit (no model) ------------------------------------------------------------


def t2i(**fields) -> tuple[str, Txt2ImgRequest]:
    return "txt2img", Txt2ImgRequest(**{"steps": 3, "sd_model_checkpoint": "tiny-a", **fields})


def test_jobs_differing_only_in_their_own_fields_fit():
    head = t2i(prompt="a red circle", seed=1)
    waiting = [t2i(prompt="a blue square", negative_prompt="red", seed=9, batch_size=2, clip_skip=2),
               t2i(prompt="x", subseed=4, subseed_strength=0.5, save_images=False)]
    assert job_batching.group_size(head, waiting, max_images=8) == 2
    assert job_batching.group_size(head, waiting, max_images=3) == 1  # 1 + 2 images; the third would pass 3


@pytest.mark.parametrize("change", [
    {"steps": 4}, {"cfg_scale": 5.0}, {"width": 40}, {"sampler_name": "Euler"}, {"scheduler": "Karras"},
    {"sd_model_checkpoint": "tiny-b"}, {"sd_vae": "other.safetensors"}, {"tiling": True}, {"eta": 0.5},
])
def test_a_different_shared_field_ends_the_group(change):
    head = t2i(prompt="a")
    assert job_batching.group_size(head, [t2i(prompt="b", **change), t2i(prompt="c")], max_images=8) == 0


@pytest.mark.parametrize("fields", [
    {"n_iter": 2}, {"enable_hr": True}, {"refiner_checkpoint": "tiny-b"}, {"styles": ["s"]},
    {"prompt": "a <lora:style:0.8> cat"}, {"negative_prompt": "<lora:bad:1>"},
])
def test_jobs_a_merged_batch_cannot_do_run_alone(fields):
    assert job_batching.batch_key(*t2i(**fields)) is None
    assert job_batching.group_size(t2i(**fields), [t2i(**fields)], max_images=8) == 0
    assert job_batching.group_size(t2i(), [t2i(**fields)], max_images=8) == 0


def test_only_txt2img_jobs_are_grouped():
    assert job_batching.batch_key("img2img", Txt2ImgRequest()) is None


def test_row_slices_follow_the_jobs_image_counts():
    assert job_batching.row_slices([1, 2, 1]) == [slice(0, 1), slice(1, 3), slice(3, 4)]


def test_the_settings_are_checked_as_the_others(tmp_path):
    settings = load_settings(tmp_path)
    assert settings.batch_queue_jobs is False and settings.batch_queue_max == 4
    new = validate_change(settings, {"batch_queue_jobs": True, "batch_queue_max": 6}, _access())
    assert (new.batch_queue_jobs, new.batch_queue_max) == (True, 6)
    with pytest.raises(SettingsError, match="batch_queue_max"):
        validate_change(settings, {"batch_queue_max": 0}, _access())


def _access():
    from modules.access import ClientAccess

    return ClientAccess()


# ----- the queue runs a group together (no model) ---------------------------------------------


def test_queue_runs_a_group_and_gives_each_job_its_own_outcome():
    groups: list[list[str]] = []

    def run_group(jobs):
        groups.append([job.request for job in jobs])
        return [ValueError("bad b") if job.request == "b" else job.request.upper() for job in jobs]

    queue = JobQueue(lambda job: job.request.upper(), group_size=lambda head, waiting: 2 if head.request == "a" else 0,
                     run_group=run_group)
    jobs = [queue.submit("x", name) for name in ("a", "b", "c", "d")]
    queue.start()
    try:
        assert jobs[0].wait(10) == "A" and jobs[2].wait(10) == "C" and jobs[3].wait(10) == "D"
        assert jobs[1].state is JobState.failed and "bad b" in jobs[1].error
        assert groups == [["a", "b", "c"]]  # d ran alone
    finally:
        queue.stop()


def test_cancelling_one_running_job_of_a_group_interrupts_only_it():
    started, release = threading.Event(), threading.Event()

    def run_group(jobs):
        started.set()
        release.wait(10)
        return ["stopped" if job.token.interrupted else "done" for job in jobs]

    queue = JobQueue(lambda job: "alone", group_size=lambda head, waiting: len(waiting), run_group=run_group)
    jobs = [queue.submit("x", i) for i in range(3)]
    queue.start()
    try:
        assert started.wait(10)
        assert queue.running() == jobs and [queue.position(job.id) for job in jobs] == [0, 0, 0]
        assert queue.cancel(jobs[1].id)
        release.set()
        assert [job.wait(10) for job in jobs] == ["done", "stopped", "done"]
    finally:
        queue.stop()


# ----- tiny models through the services -------------------------------------------------------


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def largest_difference(a, b) -> int:
    """The largest difference of one pixel channel, in levels of 255.

    Same seeds and prompts give the same noise and conditioning batched or alone, but the CPU's
    matrix kernels do not promise the same last bit for a row whatever the batch size (oneDNN picks
    its blocking by the batch; measured on the tiny UNet: up to 2e-6 apart), so a pixel may round
    one level the other way."""
    return int(np.abs(pixels(a) - pixels(b)).max())


@pytest.fixture
def paused(data_dir):
    """Services with the batched queue on and the worker not started (jobs wait until ``queue.start()``)."""
    s = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0, "batch_queue_jobs": True}),
                       start=False)
    yield s
    s.close()


class UnetCalls:
    """The rows of every UNet call of a model (a torch forward pre-hook: counts, changes nothing)."""

    def __init__(self, services, checkpoint: str = "tiny-a", on_call=None) -> None:
        self.rows: list[int] = []
        self.on_call = on_call
        with services.models.use(services.checkpoints.get(checkpoint).name) as model:
            self.handle = model.pipe.unet.register_forward_pre_hook(self._called)

    def _called(self, module, args) -> None:
        self.rows.append(int(args[0].shape[0]))
        if self.on_call is not None:
            self.on_call(len(self.rows))

    def take(self) -> list[int]:
        rows, self.rows = self.rows, []
        return rows


JOBS = [dict(prompt="a red circle", seed=7, subseed=1),
        dict(prompt="a blue square", negative_prompt="red", seed=20, subseed=2, batch_size=2, clip_skip=2),
        dict(prompt="[green:yellow:0.5] star", seed=33, subseed=5, subseed_strength=0.3)]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DPM++ SDE"])
def test_compatible_jobs_run_as_one_batch_with_the_images_they_get_alone(paused, sampler):
    calls = UnetCalls(paused)
    common = dict(steps=3, sampler_name=sampler, save_images=False)
    jobs = [paused.submit("txt2img", Txt2ImgRequest(**common, **fields)) for fields in JOBS]
    paused.queue.start()
    batched = [job.wait(120) for job in jobs]
    batched_rows = calls.take()
    paused.update_settings(paused.settings.model_copy(update={"batch_queue_jobs": False}))
    alone = [paused.submit("txt2img", Txt2ImgRequest(**common, **fields)).wait(120) for fields in JOBS]
    alone_rows = calls.take()
    per_job = len(alone_rows) // 3  # alone, each job makes the same number of UNet calls
    assert alone_rows == [2] * per_job + [4] * per_job + [2] * per_job  # job 1 has 2 images; with CFG
    assert batched_rows == [2 * 4] * per_job  # batched: one call per evaluation for the 4 images
    for job, got, want in zip(jobs, batched, alone, strict=True):
        assert job.state is JobState.done and not job.interrupted
        assert got.seeds == want.seeds and got.subseeds == want.subseeds and got.prompts == want.prompts
        assert got.infotexts == want.infotexts
        assert len(got.images) == len(want.images)
        assert max(largest_difference(a, b) for a, b in zip(got.images, want.images, strict=True)) <= 1
        snapshot = job.progress.snapshot()
        assert (snapshot.step, snapshot.total) == (3, 3)
    assert batched[1].seeds == [20, 21] and "Clip skip: 2" in batched[1].infotexts[0]
    assert np.abs(pixels(batched[0].images[0]) - pixels(batched[2].images[0])).mean() > 1  # not the same image


def test_incompatible_jobs_are_not_merged(paused):
    calls = UnetCalls(paused)
    requests = [dict(prompt="a", steps=3), dict(prompt="b", steps=2), dict(prompt="c", steps=2, width=40),
                dict(prompt="d", steps=2, width=40, n_iter=2), dict(prompt="e", steps=2, enable_hr=True)]
    jobs = [paused.submit("txt2img", Txt2ImgRequest(save_images=False, sampler_name="Euler", **r)) for r in requests]
    paused.queue.start()
    for job in jobs:
        job.wait(120)
    rows = calls.take()
    assert set(rows) == {2}  # every UNet call: one image with its negative row
    assert len(rows) > 3 + 2 + 2 + 2 * 2  # each job its own steps (and the hires fix its second pass)


def test_one_stopped_job_of_a_group_leaves_the_others_their_images(paused):
    jobs: list = []

    def on_call(n: int) -> None:  # in the worker, after the first sampling step's model call
        if n == 2:
            paused.queue.cancel(jobs[1].id)  # a running job: interrupted, keeps its partial image
            jobs[2].token.cancel()  # discarded

    calls = UnetCalls(paused, on_call=on_call)
    common = dict(steps=4, sampler_name="Euler", save_images=False)
    jobs += [paused.submit("txt2img", Txt2ImgRequest(**common, **fields)) for fields in JOBS]
    paused.queue.start()
    first = jobs[0].wait(120)
    assert len(calls.take()) == 4  # the batch went on for job 0
    second = jobs[1].wait(120)
    assert jobs[1].interrupted and len(second.images) == 2  # its partial images, both rows
    with pytest.raises(Exception, match="cancelled"):
        jobs[2].wait(120)
    assert jobs[2].state is JobState.cancelled
    calls.on_call = None
    paused.update_settings(paused.settings.model_copy(update={"batch_queue_jobs": False}))
    alone = paused.submit("txt2img", Txt2ImgRequest(**common, **JOBS[0])).wait(120)
    assert largest_difference(first.images[0], alone.images[0]) <= 1 and first.infotexts == alone.infotexts
    assert np.abs(pixels(second.images[0]) - pixels(alone.images[0])).mean() > 0  # partial, other prompt
