"""The one job queue: FIFO order, one worker thread that owns the device.

Every piece of device work goes through a :class:`JobQueue`: generation from
the web UI or the A1111-style HTTP API, model switches and training. Because
all of them are jobs in one line, a job always runs on the model that was
loaded for it by the jobs before it, and two jobs never share the device.

The queue knows nothing about diffusion. It is built with one ``run``
function, ``run(job) -> result``, which reads ``job.kind`` and
``job.request`` and reports through two hooks:

- ``job.token`` (:class:`CancelToken`): the run calls ``token.check()``
  between steps; it raises :class:`JobCancelled` once the job is asked to
  stop. Two ways to stop a running job: ``interrupt()`` (A1111 "interrupt",
  ``JobQueue.interrupt`` and ``JobQueue.cancel`` of the running job) lets a run
  that can keep what it made return it (``token.interrupted``: a generation
  returns its finished images and the partial one, and ends ``done``);
  ``cancel()`` (the queue stopping) discards it. ``token.skipped`` asks the
  run to cut the current image of a batch short and go on with the next (A1111
  "skip"); the run calls ``token.clear_skip()`` once it has done so.
- ``job.progress`` (:class:`ProgressSink`): the run calls
  ``progress.update(step, total, preview, textinfo)``; pollers call
  ``progress.snapshot()``. A run makes previews only while someone watches:
  the readers that show them call ``queue.preview_watch.touch()``
  (:class:`PreviewWatch`), and ``progress.previews_wanted()`` says whether one
  did lately.

Outcome of a job:

- the run returns → ``done``, ``job.result`` is the value returned (a run
  that was interrupted returns what it made, as A1111 does; ``job.interrupted``
  says so);
- the run raises :class:`JobCancelled` → ``cancelled``;
- the run raises anything else → ``failed``, ``job.error`` is a one-line
  message, and the worker goes on with the next job.

Batching (opt-in): a queue built with ``group_size`` and ``run_group`` may start several waiting
jobs at once. When the worker takes the next job, ``group_size(head, waiting)`` says how many of
the jobs waiting right behind it (in order) run with it; ``run_group(jobs)`` then runs them
together and returns one outcome per job (its result, or the exception it ended with). Each job
keeps its own token, progress, state and result: cancelling one job of a group stops that job
only. The queue knows nothing of what makes jobs fit together (``modules.job_batching`` does).

Memory: the queue is bounded in jobs (``max_queued``) and, with a ``size_of``
estimate (bytes a request or result holds, e.g. its decoded images), in bytes:
the waiting jobs' requests together stay within ``max_queued_bytes``. A
finished job keeps only ``release(request)`` (its inputs dropped) and no
preview; the kept finished jobs' results together stay within
``max_finished_bytes`` (the oldest are forgotten first; the newest is always
kept, so its poller can read it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

logger = logging.getLogger(__name__)

WORKER_THREAD_NAME = "easel-worker"


class JobCancelled(Exception):
    """Raised inside a run when its token is cancelled, and by ``Job.wait`` for a cancelled job."""


class QueueFull(RuntimeError):
    """Raised by ``JobQueue.submit`` when the queue already holds ``max_queued`` waiting jobs, or
    ``max_queued_bytes`` would be passed: a retry later may succeed."""


class JobTooLarge(ValueError):
    """Raised by ``JobQueue.submit`` for a job whose request alone holds more than ``max_queued_bytes``:
    it could never be queued, so a retry cannot help."""


class CancelToken:
    """Thread-safe stop and skip flags for one job.

    ``interrupt()`` ends the whole job and keeps what it made (A1111
    /interrupt); ``cancel()`` ends it and discards everything; ``skip()`` cuts
    only the image being made short and lets the run continue with the next
    one (A1111 /skip).
    """

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._interrupted = threading.Event()
        self._skipped = threading.Event()

    def cancel(self) -> None:
        """Ask the run to stop and discard what it made; its next ``check()`` raises :class:`JobCancelled`."""
        self._cancelled.set()

    def interrupt(self) -> None:
        """Ask the run to stop and keep what it made: a run that can (a generation) returns its finished
        images and the partial one; any other run's next ``check()`` raises :class:`JobCancelled`."""
        self._interrupted.set()

    def skip(self) -> None:
        """Ask the run to abandon the current image of its batch and go on with the next."""
        self._skipped.set()

    @property
    def cancelled(self) -> bool:
        """True once ``cancel()`` or ``interrupt()`` was called: the run should stop."""
        return self._cancelled.is_set() or self._interrupted.is_set()

    @property
    def interrupted(self) -> bool:
        """True once ``interrupt()`` was called and ``cancel()`` was not: the run stops and returns what it made."""
        return self._interrupted.is_set() and not self._cancelled.is_set()

    @property
    def skipped(self) -> bool:
        """True from ``skip()`` until the run calls ``clear_skip()``."""
        return self._skipped.is_set()

    def clear_skip(self) -> None:
        """Acknowledge a skip: the run has abandoned the image and moves on."""
        self._skipped.clear()

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled or interrupted; otherwise do nothing."""
        if self.cancelled:
            raise JobCancelled("the job was cancelled (interrupted) while running")


@dataclass(frozen=True)
class Progress:
    """A snapshot of a job's progress, safe to hand to another thread."""

    step: int
    total: int
    eta_seconds: float | None = None
    preview: Any | None = None  # a PIL image, or None
    textinfo: str = ""

    @property
    def fraction(self) -> float:
        """Steps done as a fraction in [0, 1]; 0 while the total is unknown (0)."""
        if self.total <= 0:
            return 0.0
        return min(1.0, self.step / self.total)


PREVIEW_WATCH_SECONDS = 10.0  # a reader that shows previews keeps them coming this long after its last look


class PreviewWatch:
    """Whether a client watches live previews: the readers that show them (the UI's progress, the
    API's progress with its current image) ``touch()`` it on every look, and runs make a preview only
    while ``watched()``: someone looked within ``window`` seconds. A preview is a full VAE decode
    (some 7.6 s for a 512 px image on a 2-core CPU), so a run nobody watches (an API client that
    does not poll, a script) spends nothing on them; A1111 likewise decodes its live preview only
    when a progress request asks for it."""

    def __init__(self, window: float = PREVIEW_WATCH_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None

    def touch(self) -> None:
        """A reader that shows previews looked now."""
        with self._lock:
            self._last = self._clock()

    def watched(self) -> bool:
        """Whether a reader looked within the window."""
        with self._lock:
            return self._last is not None and self._clock() - self._last <= self._window


class ProgressSink:
    """Thread-safe progress of one job: the run writes, pollers read.

    The ETA is the elapsed time per step of the current phase times the
    steps left. A phase starts when the job starts (``start()``) and again
    whenever ``total`` changes or ``step`` goes backwards (for example the
    next image of a batch, or a hires-fix second pass); the new phase's time
    zero is the moment of the previous update.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, watch: PreviewWatch | None = None) -> None:
        self._clock = clock
        self._watch = watch  # None: previews always wanted (a sink outside a queue)
        self._lock = threading.Lock()
        self._step = 0
        self._total = 0
        self._preview: Any | None = None
        self._textinfo = ""
        self._phase_start: float | None = None
        self._last_update: float | None = None

    def start(self) -> None:
        """Mark now as time zero for the ETA (the worker calls this when the job starts running)."""
        with self._lock:
            now = self._clock()
            self._phase_start = now
            self._last_update = now

    def update(self, step: int, total: int, preview: Any | None = None, textinfo: str = "") -> None:
        """Record that ``step`` of ``total`` steps are done.

        ``preview`` replaces the last preview only when it is given, so a run
        may send a preview every few steps. ``textinfo`` is a short status line.
        """
        if total < 0 or step < 0:
            raise ValueError(f"progress needs step >= 0 and total >= 0, got step={step}, total={total}")
        if step > total:
            raise ValueError(f"progress step {step} is past the total of {total} steps; step must be <= total")
        with self._lock:
            now = self._clock()
            if self._phase_start is None:
                self._phase_start = now
            elif total != self._total or step < self._step:
                self._phase_start = self._last_update if self._last_update is not None else now
            self._step = step
            self._total = total
            self._last_update = now
            if preview is not None:
                self._preview = preview
            self._textinfo = textinfo

    def previews_wanted(self) -> bool:
        """Whether the run should make previews: someone watches (``PreviewWatch``), or no watch was given."""
        return self._watch is None or self._watch.watched()

    def drop_preview(self) -> None:
        """Forget the last preview (the queue calls this when the job ends: only running jobs show one)."""
        with self._lock:
            self._preview = None

    def snapshot(self) -> Progress:
        """The progress now, with the ETA in seconds (None until a step is done)."""
        with self._lock:
            return Progress(
                step=self._step,
                total=self._total,
                eta_seconds=self._eta_locked(),
                preview=self._preview,
                textinfo=self._textinfo,
            )

    def _eta_locked(self) -> float | None:
        """Seconds left, from the elapsed time per step of this phase; the caller holds the lock."""
        if self._step <= 0 or self._total <= 0 or self._phase_start is None:
            return None
        if self._step >= self._total:
            return 0.0
        elapsed = self._clock() - self._phase_start
        if elapsed <= 0:
            return None
        return elapsed / self._step * (self._total - self._step)


class JobState(StrEnum):
    """Where a job is in its life; ``done``, ``failed`` and ``cancelled`` are final."""

    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


@dataclass(eq=False)
class Job:
    """One unit of device work. The queue changes its state; clients read it and ``wait()`` (in a
    thread) or ``await wait_async()`` (in an event loop, e.g. an ``async def`` HTTP route)."""

    kind: str
    request: Any
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: JobState = JobState.queued
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: str | None = None
    token: CancelToken = field(default_factory=CancelToken, repr=False)
    progress: ProgressSink = field(default_factory=ProgressSink, repr=False)
    request_bytes: int = 0  # the queue's size_of(request) at submission
    result_bytes: int = 0  # the queue's size_of(result) once finished
    _exception: BaseException | None = field(default=None, init=False, repr=False)
    _finished_event: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _on_finish: list[Callable[[], None]] = field(default_factory=list, init=False, repr=False)
    _on_finish_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def is_finished(self) -> bool:
        """True once the job is done, failed or cancelled."""
        return self._finished_event.is_set()

    @property
    def interrupted(self) -> bool:
        """True for a job that was interrupted while running and returned what it made (state ``done``)."""
        return self.state is JobState.done and self.token.interrupted

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends and return its result.

        Raises the run's own exception if the job failed, :class:`JobCancelled`
        if it was cancelled, and ``TimeoutError`` if it has not ended within
        ``timeout`` seconds (None waits forever).
        """
        if not self._finished_event.wait(timeout):
            raise TimeoutError(f"job {self.id} ({self.kind}) is still {self.state.value} after waiting {timeout} s")
        if self.state is JobState.done:
            return self.result
        if self.state is JobState.cancelled:
            raise JobCancelled(f"job {self.id} ({self.kind}) was cancelled")
        if self._exception is not None:
            raise self._exception
        raise RuntimeError(f"job {self.id} ({self.kind}) failed: {self.error}")

    async def wait_async(self, timeout: float | None = None) -> Any:
        """``wait()`` for asyncio code: await the end of the job without blocking the event loop or
        holding a thread, then return the result or raise exactly as ``wait()`` does.

        The worker thread wakes the awaiting loop with ``loop.call_soon_threadsafe`` when the job
        ends. A cancelled await (the client went away) leaves the job itself running.
        """
        if not self.is_finished:
            loop = asyncio.get_running_loop()
            ended: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                if not ended.done():
                    ended.set_result(None)

            def from_worker() -> None:
                try:
                    loop.call_soon_threadsafe(wake)
                except RuntimeError:  # the loop was closed meanwhile: nobody is awaiting any more
                    pass

            self._call_when_finished(from_worker)
            try:
                await asyncio.wait_for(ended, timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"job {self.id} ({self.kind}) is still {self.state.value} after waiting {timeout} s"
                ) from None
        return self.wait(0)

    def _call_when_finished(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the job has ended: now if it has, else from the thread that ends it."""
        with self._on_finish_lock:
            if not self._finished_event.is_set():
                self._on_finish.append(callback)
                return
        callback()

    def _finish(self, state: JobState, result: Any = None, exception: BaseException | None = None) -> None:
        """Record the final state and wake the waiters; the queue calls this under its lock."""
        self.result = result
        self._exception = exception
        self.error = one_line_error(exception) if exception is not None else None
        self.state = state
        self.finished = time.time()
        with self._on_finish_lock:
            self._finished_event.set()
            callbacks, self._on_finish = self._on_finish, []
        for callback in callbacks:
            callback()


def _mib(size: int | None) -> str:
    return f"{(size or 0) / (1024 * 1024):.1f} MiB"


def one_line_error(exc: BaseException) -> str:
    """``"TypeName: message"`` on one line, for ``Job.error`` and API responses."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class JobQueue:
    """A FIFO queue of jobs run one at a time by one daemon worker thread.

    Jobs may be submitted before ``start()``; they wait until the worker
    runs. The ``max_queued`` and ``max_queued_bytes`` limits count waiting
    jobs, not the running one (bytes as ``size_of`` estimates them; None: no
    byte limit). Finished jobs stay reachable through ``get()`` until
    ``keep_finished`` newer ones have finished, or until newer results fill
    ``max_finished_bytes``; they keep ``release(request)``, not the request.
    """

    def __init__(
        self,
        run: Callable[[Job], Any],
        max_queued: int = 64,
        keep_finished: int = 256,
        *,
        max_queued_bytes: int | None = None,
        max_finished_bytes: int | None = None,
        size_of: Callable[[Any], int] = lambda value: 0,
        release: Callable[[Any], Any] = lambda request: request,
        group_size: Callable[[Job, list[Job]], int] | None = None,
        run_group: Callable[[list[Job]], list[Any]] | None = None,
    ) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, got {max_queued}")
        if keep_finished < 0:
            raise ValueError(f"keep_finished must be 0 or more, got {keep_finished}")
        for name, limit in (("max_queued_bytes", max_queued_bytes), ("max_finished_bytes", max_finished_bytes)):
            if limit is not None and limit < 0:
                raise ValueError(f"{name} must be 0 or more (None: no limit), got {limit}")
        self._run = run
        self._max_queued = max_queued
        self._keep_finished = keep_finished
        self._max_queued_bytes = max_queued_bytes
        self._max_finished_bytes = max_finished_bytes
        self._size_of = size_of
        self._release = release
        self._group_size = group_size if run_group is not None else None
        self._run_group = run_group
        self._queued_bytes = 0
        self._finished_bytes = 0
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: list[Job] = []  # the job running now, or the jobs of a group running together
        self._finished: OrderedDict[str, Job] = OrderedDict()
        self._accepting = True
        self._stopping = False
        self._worker: threading.Thread | None = None
        self.preview_watch = PreviewWatch()  # readers that show previews touch it; the jobs' sinks ask it

    # ----- lifecycle -----

    def start(self) -> None:
        """Start the worker thread (again, after ``stop()``)."""
        with self._cond:
            if self._worker is not None and self._worker.is_alive():
                raise RuntimeError("the job queue worker is already running; call stop() before start()")
            self._accepting = True
            self._stopping = False
            self._worker = threading.Thread(target=self._work, name=WORKER_THREAD_NAME, daemon=True)
            self._worker.start()

    def stop(self, timeout: float = 5) -> None:
        """Cancel the running job and every queued one, then join the worker.

        New submissions are refused until ``start()``. If the running job does
        not honour its token within ``timeout`` seconds, this logs a warning
        and returns; the daemon worker exits when that run finally returns.
        """
        with self._cond:
            self._accepting = False
            self._stopping = True
            for job in self._running:
                job.token.cancel()
            while self._queue:
                self._cancel_queued_locked(self._dequeue_locked())
            self._cond.notify_all()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
            if worker.is_alive():
                logger.warning("job queue worker did not stop within %s s; the running job ignores cancellation", timeout)

    # ----- submitting and waiting -----

    def submit(self, kind: str, request: Any) -> Job:
        """Add a job at the end of the line and return it at once.

        Raises :class:`QueueFull` when the queue holds ``max_queued`` waiting jobs or this job would
        take the waiting jobs past ``max_queued_bytes``, and :class:`JobTooLarge` when the job alone
        is past it.
        """
        size = self._size_of(request)
        with self._cond:
            if not self._accepting:
                raise RuntimeError("the job queue is stopped; call start() before submitting jobs")
            if len(self._queue) >= self._max_queued:
                raise QueueFull(
                    f"the job queue already holds {len(self._queue)} waiting jobs (max_queued={self._max_queued}); "
                    "wait for some to finish or cancel one"
                )
            limit = self._max_queued_bytes
            if limit is not None and size > limit:
                raise JobTooLarge(f"the job's inputs take {_mib(size)} in memory, more than the whole queue may hold"
                                  f" ({_mib(limit)}, setting max_queue_mb): send fewer or smaller images")
            if limit is not None and self._queued_bytes + size > limit:
                raise QueueFull(
                    f"the waiting jobs' inputs take {_mib(self._queued_bytes)} in memory and this job's"
                    f" {_mib(size)} more, over the queue's {_mib(limit)} (setting max_queue_mb);"
                    " wait for some to finish or cancel one"
                )
            job = Job(kind=kind, request=request, request_bytes=size, progress=ProgressSink(watch=self.preview_watch))
            self._queue.append(job)
            self._queued_bytes += size
            self._cond.notify_all()
            return job

    def run_sync(self, kind: str, request: Any, timeout: float | None = None) -> Any:
        """Submit a job and block until it ends; return its result or raise as ``Job.wait`` does.

        On timeout the job is cancelled (nobody is left to read its result)
        and ``TimeoutError`` is raised.
        """
        job = self.submit(kind, request)
        try:
            return job.wait(timeout)
        except TimeoutError:
            self.cancel(job.id)
            raise

    # ----- looking at jobs -----

    def get(self, job_id: str) -> Job:
        """The job with this id: queued, running, or one of the kept finished jobs."""
        with self._cond:
            return self._find_locked(job_id)

    def position(self, job_id: str) -> int:
        """0 if the job is running, 1.. its place in line if queued, -1 if it has finished."""
        with self._cond:
            job = self._find_locked(job_id)
            if job in self._running:
                return 0
            if job.state is JobState.queued:
                return self._queue.index(job) + 1
            return -1

    def current(self) -> Job | None:
        """The running job (the first of a group running together), or None when the worker is idle."""
        with self._cond:
            return self._running[0] if self._running else None

    def running(self) -> list[Job]:
        """The jobs running now: one, several for a group run together, none when idle (a copy)."""
        with self._cond:
            return list(self._running)

    def pending(self) -> list[Job]:
        """The queued jobs, next first (a copy)."""
        with self._cond:
            return list(self._queue)

    def job_count(self) -> int:
        """How many jobs are running or queued."""
        with self._cond:
            return len(self._queue) + len(self._running)

    def queued_bytes(self) -> int:
        """What the waiting jobs' requests hold together, as ``size_of`` estimates it."""
        with self._cond:
            return self._queued_bytes

    def finished_bytes(self) -> int:
        """What the kept finished jobs' results hold together, as ``size_of`` estimates it."""
        with self._cond:
            return self._finished_bytes

    # ----- cancelling -----

    def cancel(self, job_id: str) -> bool:
        """Cancel a job: a queued one is removed and marked cancelled at once, a running one is
        interrupted (it stops and keeps what it made, as ``interrupt()``); the other jobs of its
        group, if it runs in one, go on.

        Returns False if the job had already finished.
        """
        with self._cond:
            job = self._find_locked(job_id)
            if job in self._running:
                job.token.interrupt()
                return True
            if job.state is JobState.queued:
                self._queue.remove(job)
                self._queued_bytes -= job.request_bytes
                self._cancel_queued_locked(job)
                return True
            return False

    def interrupt(self) -> None:
        """Interrupt the running job, if any (A1111 /sdapi/v1/interrupt): it stops and keeps what it made.
        Every job of a group running together is interrupted (together they are what runs)."""
        with self._cond:
            for job in self._running:
                job.token.interrupt()

    def skip(self) -> None:
        """Ask the running job (each of a group) to abandon its current image, if any (A1111 /sdapi/v1/skip)."""
        with self._cond:
            for job in self._running:
                job.token.skip()

    # ----- internals -----

    def _find_locked(self, job_id: str) -> Job:
        """Look a job up by id; the caller holds the lock."""
        for job in self._running:
            if job.id == job_id:
                return job
        if job_id in self._finished:
            return self._finished[job_id]
        for job in self._queue:
            if job.id == job_id:
                return job
        budget = f" and their results within {_mib(self._max_finished_bytes)}" if self._max_finished_bytes is not None else ""
        raise KeyError(
            f"no job with id {job_id!r}: it was never submitted, or it finished long enough ago "
            f"to be dropped (only the last {self._keep_finished} finished jobs{budget} are kept)"
        )

    def _dequeue_locked(self) -> Job:
        """Take the next waiting job off the line; the caller holds the lock."""
        job = self._queue.popleft()
        self._queued_bytes -= job.request_bytes
        return job

    def _cancel_queued_locked(self, job: Job) -> None:
        """Mark a job that never ran as cancelled; the caller holds the lock and has dequeued it."""
        job.token.cancel()
        self._drop_inputs_locked(job)
        job._finish(JobState.cancelled)
        self._remember_locked(job)

    def _drop_inputs_locked(self, job: Job) -> None:
        """Before a job is marked finished: keep ``release(request)`` instead of its request, and no preview."""
        job.progress.drop_preview()
        try:
            job.request = self._release(job.request)
        except Exception:  # noqa: BLE001 - a finished job must never kill the worker
            logger.exception("job %s (%s): could not drop its inputs; the request is kept", job.id, job.kind)

    def _remember_locked(self, job: Job) -> None:
        """Keep a finished job for polling; drop the oldest beyond ``keep_finished`` jobs or
        ``max_finished_bytes`` of results (the newest job is always kept)."""
        try:
            job.result_bytes = self._size_of(job.result) if job.result is not None else 0
        except Exception:  # noqa: BLE001 - a finished job must never kill the worker
            logger.exception("job %s (%s): could not size its result; counted as 0 bytes", job.id, job.kind)
        self._finished[job.id] = job
        self._finished_bytes += job.result_bytes
        limit = self._max_finished_bytes
        while len(self._finished) > self._keep_finished or (
            limit is not None and self._finished_bytes > limit and len(self._finished) > 1
        ):
            _, old = self._finished.popitem(last=False)
            self._finished_bytes -= old.result_bytes

    def _next_jobs(self) -> list[Job]:
        """Block until a job is queued and make it current, with the waiting jobs ``group_size`` puts
        in its group; an empty list when the queue is stopping."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return []
            jobs = [self._dequeue_locked()]
            if self._group_size is not None and self._queue:
                try:
                    more = self._group_size(jobs[0], list(self._queue))
                except Exception:  # noqa: BLE001 - a grouping error must never kill the worker: run alone
                    logger.exception("job %s (%s): could not group it with the waiting jobs", jobs[0].id, jobs[0].kind)
                    more = 0
                jobs += [self._dequeue_locked() for _ in range(max(0, min(more, len(self._queue))))]
            now = time.time()
            for job in jobs:
                job.state = JobState.running
                job.started = now
                job.progress.start()
            self._running = jobs
            return jobs

    def _work(self) -> None:
        """The worker loop: run jobs one at a time (or one group at a time), in order, until stopped."""
        while True:
            jobs = self._next_jobs()
            if not jobs:
                return
            outcomes = [self._run_one(jobs[0])] if len(jobs) == 1 else self._run_together(jobs)
            with self._cond:
                for job, (state, result, exception) in zip(jobs, outcomes, strict=True):
                    self._drop_inputs_locked(job)
                    job._finish(state, result, exception)
                    self._remember_locked(job)
                self._running = []
                self._cond.notify_all()

    def _run_one(self, job: Job) -> tuple[JobState, Any, BaseException | None]:
        """Call the run function and turn its outcome into (state, result, exception)."""
        try:
            result = self._run(job)
        except Exception as exc:  # noqa: BLE001 - one failing job must never kill the worker
            return _failed(job, exc)
        return JobState.done, result, None

    def _run_together(self, jobs: list[Job]) -> list[tuple[JobState, Any, BaseException | None]]:
        """Call ``run_group`` and turn its outcomes into one (state, result, exception) per job; if it
        raises, every job of the group ends with that exception."""
        try:
            outcomes = self._run_group(jobs)
            if len(outcomes) != len(jobs):
                raise RuntimeError(f"run_group returned {len(outcomes)} outcomes for {len(jobs)} jobs")
        except Exception as exc:  # noqa: BLE001 - one failing group must never kill the worker
            return [_failed(job, exc) for job in jobs]
        return [_failed(job, outcome) if isinstance(outcome, BaseException) else (JobState.done, outcome, None)
                for job, outcome in zip(jobs, outcomes, strict=True)]


def _failed(job: Job, exc: BaseException) -> tuple[JobState, Any, BaseException | None]:
    """The outcome of a job that ended with ``exc``: cancelled for :class:`JobCancelled`, else failed
    (a ValueError is bad input found inside the job: logged without a traceback)."""
    if isinstance(exc, JobCancelled):
        logger.info("job %s (%s) cancelled", job.id, job.kind)
        return JobState.cancelled, None, None
    if isinstance(exc, ValueError):
        logger.info("job %s (%s) refused: %s", job.id, job.kind, one_line_error(exc))
        return JobState.failed, None, exc
    if not isinstance(exc, Exception):
        raise exc  # KeyboardInterrupt, SystemExit: not a job's outcome
    logger.error("job %s (%s) failed", job.id, job.kind, exc_info=exc)
    return JobState.failed, None, exc
