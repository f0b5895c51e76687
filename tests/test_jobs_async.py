"""``Job.wait_async``: an event loop awaits jobs without a thread per waiter and gets what ``wait()`` gives."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from modules.jobs import Job, JobCancelled, JobQueue

pytestmark = pytest.mark.timeout(10)


def run(job: Job) -> Any:
    if job.kind == "gate":
        assert job.request.wait(5), "the test never opened the gate"
        return "opened"
    if job.kind == "fail":
        raise ValueError(f"bad request {job.request!r}")
    return f"result-{job.request}"


@pytest.fixture
def queue() -> Iterator[JobQueue]:
    q = JobQueue(run, max_queued=200)
    q.start()
    yield q
    q.stop(timeout=2)


def test_wait_async_returns_results_and_raises_like_wait(queue: JobQueue) -> None:
    async def main() -> tuple[list[Any], BaseException, BaseException]:
        results = await asyncio.gather(*(queue.submit("echo", i).wait_async() for i in range(100)))
        with pytest.raises(ValueError, match="bad request 'x'") as failed:
            await queue.submit("fail", "x").wait_async()
        gate = threading.Event()
        running = queue.submit("gate", gate)
        queued = queue.submit("echo", "never")
        queue.cancel(queued.id)
        with pytest.raises(JobCancelled) as cancelled:
            await queued.wait_async()
        gate.set()
        assert await running.wait_async() == "opened"
        assert await running.wait_async() == "opened"  # a finished job answers at once
        return results, failed.value, cancelled.value

    results, failed, cancelled = asyncio.run(main())
    assert results == [f"result-{i}" for i in range(100)]
    assert "cancelled" in str(cancelled)


def test_wait_async_holds_no_thread_and_times_out(queue: JobQueue) -> None:
    gate = threading.Event()
    blocker = queue.submit("gate", gate)
    waiting = [queue.submit("echo", i) for i in range(50)]

    async def main() -> list[Any]:
        threads_before = threading.active_count()
        tasks = [asyncio.create_task(job.wait_async()) for job in waiting]
        await asyncio.sleep(0.1)
        assert threading.active_count() == threads_before, "a waiter took a thread"
        with pytest.raises(TimeoutError, match="still running after waiting 0.05 s"):
            await blocker.wait_async(timeout=0.05)
        gate.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [f"result-{i}" for i in range(50)]


def test_a_closed_loop_does_not_break_the_worker(queue: JobQueue) -> None:
    """A waiter whose loop is gone (its await cancelled, the loop closed) must not hurt the worker."""
    gate = threading.Event()
    job = queue.submit("gate", gate)

    async def give_up() -> None:
        with pytest.raises(TimeoutError):
            await job.wait_async(timeout=0.01)

    asyncio.run(give_up())
    gate.set()
    assert job.wait(5) == "opened"
    assert queue.submit("echo", 1).wait(5) == "result-1"
