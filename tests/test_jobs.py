"""Tests for modules.jobs: the FIFO queue, its one worker, cancellation and progress.

Real threads with short timeouts; runs are driven by events so nothing
depends on sleep timing except the explicit "stops within one step" bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import pytest

from modules.jobs import (
    CancelToken,
    Job,
    JobCancelled,
    JobQueue,
    JobState,
    PreviewWatch,
    Progress,
    ProgressSink,
    QueueFull,
)

pytestmark = pytest.mark.timeout(5)

WAIT = 2.0  # seconds: the longest any single wait in these tests may take


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll until predicate() is true; fail the test if it never becomes true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


class Runner:
    """A run function for tests: records the order of runs and blocks "gate" jobs until released."""

    def __init__(self) -> None:
        self.ran: list[Any] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def __call__(self, job: Job) -> Any:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.ran.append(job.request)
            self.threads.append(threading.current_thread())
        try:
            if job.kind == "gate":
                self.entered.set()
                assert self.gate.wait(WAIT), "test never opened the gate"
            elif job.kind == "sleep":
                time.sleep(0.01)
            elif job.kind == "loop":
                return loop_steps(job, steps=1000, delay=0.005)
            elif job.kind == "fail":
                raise ValueError(f"bad request {job.request!r}\nsecond line")
            elif job.kind == "crash":
                return 1 // 0
            return f"result-{job.request}"
        finally:
            with self.lock:
                self.active -= 1


def loop_steps(job: Job, steps: int, delay: float) -> int:
    """A run that checks its token and reports progress every step, like a sampler loop."""
    for step in range(steps):
        job.token.check()
        time.sleep(delay)
        job.progress.update(step + 1, steps, textinfo=f"step {step + 1}")
    return steps


@pytest.fixture
def runner() -> Runner:
    return Runner()


@pytest.fixture
def queue(runner: Runner) -> Iterator[JobQueue]:
    q = JobQueue(runner, max_queued=8, keep_finished=16)
    q.start()
    yield q
    runner.gate.set()
    q.stop(timeout=WAIT)


def test_jobs_run_in_submission_order(queue: JobQueue, runner: Runner) -> None:
    first = queue.submit("gate", "a")
    assert runner.entered.wait(WAIT)
    jobs = [queue.submit("plain", name) for name in "bcdef"]
    runner.gate.set()
    assert [job.wait(WAIT) for job in jobs] == [f"result-{name}" for name in "bcdef"]
    assert first.wait(WAIT) == "result-a"
    assert runner.ran == list("abcdef")


def test_jobs_submitted_before_start_run_in_order(runner: Runner) -> None:
    q = JobQueue(runner)
    jobs = [q.submit("plain", i) for i in range(4)]
    assert runner.ran == []
    q.start()
    try:
        assert [job.wait(WAIT) for job in jobs] == [f"result-{i}" for i in range(4)]
        assert runner.ran == [0, 1, 2, 3]
    finally:
        q.stop()


def test_never_two_runs_at_once(queue: JobQueue, runner: Runner) -> None:
    jobs = [queue.submit("sleep", i) for i in range(8)]
    for job in jobs:
        job.wait(WAIT)
    assert runner.max_active == 1
    assert runner.ran == list(range(8))
    for earlier, later in pairwise(jobs):
        assert earlier.finished <= later.started


def test_worker_thread_is_a_named_daemon(queue: JobQueue, runner: Runner) -> None:
    assert queue.run_sync("plain", "x", timeout=WAIT) == "result-x"
    (thread,) = runner.threads
    assert thread.name == "easel-worker"
    assert thread.daemon
    assert thread is not threading.current_thread()


def test_queue_full_raises_and_running_job_does_not_count(runner: Runner) -> None:
    q = JobQueue(runner, max_queued=2)
    q.start()
    try:
        q.submit("gate", "running")
        assert runner.entered.wait(WAIT)
        q.submit("plain", "q1")
        q.submit("plain", "q2")
        with pytest.raises(QueueFull, match="max_queued=2"):
            q.submit("plain", "q3")
        assert q.job_count() == 3
        runner.gate.set()
        wait_until(lambda: q.job_count() == 0)
        assert q.submit("plain", "later").wait(WAIT) == "result-later"
        assert "q3" not in runner.ran
    finally:
        runner.gate.set()
        q.stop()


def test_bad_limits_are_rejected(runner: Runner) -> None:
    with pytest.raises(ValueError, match="max_queued"):
        JobQueue(runner, max_queued=0)
    with pytest.raises(ValueError, match="keep_finished"):
        JobQueue(runner, keep_finished=-1)


def test_cancel_queued_job_never_runs(queue: JobQueue, runner: Runner) -> None:
    a = queue.submit("gate", "a")
    assert runner.entered.wait(WAIT)
    b = queue.submit("plain", "b")
    c = queue.submit("plain", "c")
    assert queue.cancel(b.id) is True
    assert b.state is JobState.cancelled  # at once, before the worker gets there
    assert b.finished is not None and b.started is None
    assert queue.pending() == [c]
    with pytest.raises(JobCancelled):
        b.wait(0)
    runner.gate.set()
    assert c.wait(WAIT) == "result-c"
    assert a.state is JobState.done
    assert runner.ran == ["a", "c"]
    assert queue.get(b.id) is b  # still pollable
    assert queue.cancel(b.id) is False  # already finished


def test_cancel_running_job_stops_within_a_step_and_next_job_runs(queue: JobQueue) -> None:
    looping = queue.submit("loop", "long")
    after = queue.submit("plain", "next")
    wait_until(lambda: looping.progress.snapshot().step >= 3)
    assert queue.cancel(looping.id) is True
    step_at_cancel = looping.progress.snapshot().step
    with pytest.raises(JobCancelled):
        looping.wait(WAIT)
    assert looping.state is JobState.cancelled
    assert looping.progress.snapshot().step <= step_at_cancel + 1
    assert looping.error is None
    assert after.wait(WAIT) == "result-next"
    assert after.state is JobState.done
    assert not after.token.cancelled


def test_interrupt_cancels_only_the_running_job(queue: JobQueue) -> None:
    queue.interrupt()  # nothing running: no effect, no error
    looping = queue.submit("loop", "long")
    after = queue.submit("plain", "next")
    wait_until(lambda: looping.progress.snapshot().step >= 1)
    assert queue.current() is looping
    queue.interrupt()
    with pytest.raises(JobCancelled):
        looping.wait(WAIT)
    assert after.wait(WAIT) == "result-next"
    assert queue.current() is None


def test_skip_abandons_current_image_and_continues() -> None:
    started_image = [threading.Event() for _ in range(3)]

    def batch(job: Job) -> list[str]:
        images = []
        for index in range(3):
            started_image[index].set()
            outcome = "done"
            deadline = time.monotonic() + WAIT
            for _ in range(10 if index else 10_000):  # image 0 runs until skipped
                job.token.check()
                if job.token.skipped:
                    job.token.clear_skip()
                    outcome = "skipped"
                    break
                assert time.monotonic() < deadline
                time.sleep(0.001)
            images.append(outcome)
        return images

    q = JobQueue(batch)
    q.start()
    try:
        job = q.submit("txt2img", None)
        assert started_image[0].wait(WAIT)
        q.skip()
        assert job.wait(WAIT) == ["skipped", "done", "done"]
        assert job.state is JobState.done
        assert not job.token.skipped and not job.token.cancelled
    finally:
        q.stop()


def test_failing_job_is_reported_and_worker_goes_on(queue: JobQueue) -> None:
    bad = queue.submit("fail", "x")
    good = queue.submit("plain", "y")
    with pytest.raises(ValueError, match="bad request 'x'") as raised:
        bad.wait(WAIT)
    assert bad.state is JobState.failed
    assert bad.error == "ValueError: bad request 'x' second line"
    assert bad._exception is raised.value  # the original exception, re-raised
    assert good.wait(WAIT) == "result-y"
    with pytest.raises(ZeroDivisionError):
        queue.run_sync("crash", "boom", timeout=WAIT)
    assert queue.run_sync("plain", "z", timeout=WAIT) == "result-z"


def test_position_values(queue: JobQueue, runner: Runner) -> None:
    a = queue.submit("gate", "a")
    assert runner.entered.wait(WAIT)
    b = queue.submit("plain", "b")
    c = queue.submit("plain", "c")
    assert [queue.position(j.id) for j in (a, b, c)] == [0, 1, 2]
    queue.cancel(b.id)
    assert [queue.position(j.id) for j in (a, b, c)] == [0, -1, 1]
    runner.gate.set()
    c.wait(WAIT)
    assert [queue.position(j.id) for j in (a, b, c)] == [-1, -1, -1]
    with pytest.raises(KeyError, match="no job with id 'nope'"):
        queue.position("nope")


def test_get_current_pending_and_unknown_id(queue: JobQueue, runner: Runner) -> None:
    a = queue.submit("gate", "a")
    assert runner.entered.wait(WAIT)
    b = queue.submit("plain", "b")
    assert queue.get(a.id) is a and queue.get(b.id) is b
    assert queue.current() is a
    assert queue.pending() == [b]
    assert queue.job_count() == 2
    assert len(a.id) == 32 and int(a.id, 16) >= 0 and a.id != b.id
    with pytest.raises(KeyError, match="no job with id 'missing'"):
        queue.get("missing")
    with pytest.raises(KeyError):
        queue.cancel("missing")


def test_finished_jobs_are_bounded_oldest_dropped(runner: Runner) -> None:
    q = JobQueue(runner, keep_finished=2)
    q.start()
    try:
        jobs = [q.submit("plain", i) for i in range(4)]
        for job in jobs:
            job.wait(WAIT)
        wait_until(lambda: q.job_count() == 0)
        for dropped in jobs[:2]:
            with pytest.raises(KeyError):
                q.get(dropped.id)
        assert [q.get(j.id).result for j in jobs[2:]] == ["result-2", "result-3"]
    finally:
        q.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_fraction_and_eta() -> None:
    clock = FakeClock()
    sink = ProgressSink(clock=clock)
    assert sink.snapshot() == Progress(step=0, total=0, eta_seconds=None, preview=None, textinfo="")
    assert sink.snapshot().fraction == 0.0
    sink.start()
    clock.now += 4.0
    preview = object()
    sink.update(2, 10, preview=preview, textinfo="sampling")
    snap = sink.snapshot()
    assert snap.fraction == pytest.approx(0.2)
    assert snap.eta_seconds == pytest.approx(16.0)  # 2 s per step, 8 steps left
    assert snap.preview is preview and snap.textinfo == "sampling"
    clock.now += 6.0
    sink.update(5, 10)  # no new preview: the last one is kept
    snap = sink.snapshot()
    assert snap.eta_seconds == pytest.approx(10.0) and snap.preview is preview
    sink.update(10, 10)
    assert sink.snapshot().fraction == 1.0 and sink.snapshot().eta_seconds == 0.0


def test_progress_eta_restarts_with_a_new_phase() -> None:
    clock = FakeClock()
    sink = ProgressSink(clock=clock)
    sink.start()
    clock.now += 10.0
    sink.update(10, 10)  # first pass: 1 s per step
    clock.now += 1.0
    sink.update(1, 4)  # second pass: new total, timed from the previous update
    assert sink.snapshot().eta_seconds == pytest.approx(3.0)


def test_progress_rejects_impossible_steps() -> None:
    sink = ProgressSink()
    with pytest.raises(ValueError, match="past the total"):
        sink.update(11, 10)
    with pytest.raises(ValueError, match="step >= 0"):
        sink.update(-1, 10)


def test_progress_is_visible_while_job_runs(queue: JobQueue) -> None:
    job = queue.submit("loop", "long")
    wait_until(lambda: job.progress.snapshot().step >= 2)
    snap = job.progress.snapshot()
    assert snap.total == 1000
    assert 0 < snap.fraction < 1
    assert snap.eta_seconds is not None and snap.eta_seconds > 0
    assert snap.textinfo == f"step {snap.step}"
    queue.cancel(job.id)


def test_wait_timeout_raises_and_run_sync_timeout_cancels(queue: JobQueue, runner: Runner) -> None:
    a = queue.submit("gate", "a")
    assert runner.entered.wait(WAIT)
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="still running"):
        a.wait(timeout=0.05)
    assert time.monotonic() - began < 0.5
    with pytest.raises(TimeoutError, match="still queued"):
        queue.run_sync("plain", "b", timeout=0.05)
    assert queue.pending() == []  # the abandoned job was cancelled, not left to run
    runner.gate.set()
    assert a.wait(WAIT) == "result-a"
    assert runner.ran == ["a"]


def test_stop_cancels_running_and_pending_jobs(runner: Runner) -> None:
    q = JobQueue(runner)
    q.start()
    looping = q.submit("loop", "long")
    queued = [q.submit("plain", i) for i in range(3)]
    wait_until(lambda: looping.progress.snapshot().step >= 1)
    began = time.monotonic()
    q.stop(timeout=WAIT)
    assert time.monotonic() - began < 1.0
    assert looping.state is JobState.cancelled
    assert [job.state for job in queued] == [JobState.cancelled] * 3
    for job in [looping, *queued]:
        with pytest.raises(JobCancelled):
            job.wait(0)
    assert runner.ran == ["long"]
    assert not runner.threads[0].is_alive()  # the worker was joined
    with pytest.raises(RuntimeError, match="stopped"):
        q.submit("plain", "late")
    q.start()  # a stopped queue can be started again
    try:
        assert q.run_sync("plain", "again", timeout=WAIT) == "result-again"
    finally:
        q.stop()


def test_cancel_token_flags() -> None:
    token = CancelToken()
    token.check()  # not cancelled: no error
    token.skip()
    assert token.skipped and not token.cancelled
    token.check()  # a skip is not a cancel
    token.clear_skip()
    assert not token.skipped
    token.cancel()
    assert token.cancelled
    with pytest.raises(JobCancelled):
        token.check()


def test_interrupt_keeps_what_was_made_and_cancel_discards_it() -> None:
    token = CancelToken()
    token.interrupt()
    assert token.cancelled and token.interrupted  # the run stops, and keeps what it made
    with pytest.raises(JobCancelled):
        token.check()  # a run that cannot keep anything just stops
    token.cancel()
    assert token.cancelled and not token.interrupted  # a cancel wins: nothing is kept

    def keeps_partial(job: Job) -> list[int]:
        made = []
        for step in range(10_000):
            if job.token.interrupted:
                return made  # what was made, as a generation returns its partial images
            job.token.check()
            made.append(step)
            job.progress.update(step + 1, 10_000)
            time.sleep(0.002)
        return made

    q = JobQueue(keeps_partial)
    q.start()
    try:
        running = q.submit("gen", None)
        queued = q.submit("gen", None)
        wait_until(lambda: running.progress.snapshot().step >= 2)
        assert q.cancel(queued.id) and queued.state is JobState.cancelled and not queued.interrupted
        assert q.cancel(running.id)  # the running job: interrupted
        made = running.wait(WAIT)
        assert running.state is JobState.done and running.interrupted and len(made) >= 2
        assert not q.submit("gen", None).interrupted
    finally:
        q.stop()


def test_previews_are_wanted_only_while_a_reader_watches() -> None:
    clock = FakeClock()
    watch = PreviewWatch(window=10.0, clock=clock)
    sink = ProgressSink(clock=clock, watch=watch)
    assert not watch.watched() and not sink.previews_wanted()  # nobody has looked yet
    watch.touch()
    clock.now += 10.0
    assert sink.previews_wanted()
    clock.now += 0.5
    assert not sink.previews_wanted()  # the last look is past the window
    assert ProgressSink(clock=clock).previews_wanted()  # a sink without a watch: always


def test_queued_jobs_ask_the_queues_preview_watch() -> None:
    q = JobQueue(lambda job: job.progress.previews_wanted())
    q.start()
    try:
        assert q.submit("x", None).wait(WAIT) is False
        q.preview_watch.touch()
        assert q.submit("x", None).wait(WAIT) is True
    finally:
        q.stop()
