"""Running generation jobs from the UI: submit typed requests to the one job queue, then stream
progress, live preview and results to the output panel.

``stream_jobs`` is a generator handler body: each ``yield`` is a ``{component: update}`` dict
for the panel. It never raises: a bad request or a failed job shows its message in the panel's
error box and as a toast (gr.Warning).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import gradio as gr

from modules.batches import Batch, Shown, shown_from_results
from modules.jobs import Job, JobCancelled, JobState
from modules.schemas import GenerationResult
from webui.widgets import OutputPanel, progress_html

POLL_SECONDS = 0.2
__all__ = ["Batch", "Shown", "shown_from_results", "stream_jobs"]  # the batch types live in the core


ERROR_LABEL = "Error"
STOPPED_LABEL = "Stopped"  # an interrupt is the user's choice, not an error
INTERRUPTED = "Interrupted."


def user_message(err: BaseException) -> str:
    """An exception as the one line a user reads: the message of Easel's own errors (a ValueError,
    RequestError or CheckpointError says what was wrong) without the type name; other exceptions
    keep it (``KeyError: 'x'`` says more than ``'x'``)."""
    message = " ".join(str(err).split())
    if isinstance(err, ValueError) and message:
        return message
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def error_box(panel: OutputPanel, message: str, label: str = ERROR_LABEL) -> dict:
    """The panel's message box showing ``message`` under ``label``."""
    return {panel.error: gr.update(value=message, visible=True, label=label)}


def error_updates(panel: OutputPanel, message: str) -> dict:
    """Show ``message`` in the error box and as a toast; put the buttons back."""
    gr.Warning(message)
    return {
        **error_box(panel, message),
        panel.generate: gr.update(visible=True),
        panel.interrupt: gr.update(visible=False),
        panel.skip: gr.update(visible=False),
        panel.progress: progress_html(None, None),
        panel.preview: gr.update(visible=False),
    }


def _position(services, job: Job) -> int:
    try:
        return services.queue.position(job.id)
    except KeyError:
        return -1


def stream_jobs(
    services,
    panel: OutputPanel,
    make_batch: Callable[[], Batch],
    poll_seconds: float = POLL_SECONDS,
) -> Iterator[dict]:
    """Build the batch, submit it, and stream the panel's updates until all its jobs end."""
    try:
        batch = make_batch()
        jobs = services.submit_all(batch.requests)
    except Exception as err:  # RequestError, CheckpointError, QueueFull, ...: all shown, none raised
        yield error_updates(panel, user_message(err))
        return
    yield {
        panel.generate: gr.update(visible=False),
        panel.interrupt: gr.update(visible=True),
        panel.skip: gr.update(visible=True),
        panel.error: gr.update(value="", visible=False),
        panel.job_id: [job.id for job in jobs],
        panel.preview: gr.update(value=None, visible=True),
    }
    last_preview = None
    for index, job in enumerate(jobs):
        while not job.is_finished:
            services.queue.preview_watch.touch()  # this page shows previews while it polls
            time.sleep(poll_seconds)
            snap = job.progress.snapshot()
            info = snap.textinfo if len(jobs) == 1 else f"job {index + 1}/{len(jobs)} {snap.textinfo}".strip()
            update = {panel.progress: progress_html(snap.step, snap.total, snap.eta_seconds,
                                                    _position(services, job), info)}
            if snap.preview is not None and snap.preview is not last_preview:
                last_preview = snap.preview
                update[panel.preview] = gr.update(value=snap.preview, visible=True)
            yield update
    yield finish_updates(panel, jobs, batch.show)


def finish_updates(panel: OutputPanel, jobs: list[Job], show: Callable[[list[GenerationResult]], Shown]) -> dict:
    """The final update: gallery and infotext, or the error; buttons back to Generate."""
    results, problems = [], []
    for job in jobs:
        try:
            results.append(job.wait(0))
        except JobCancelled:
            problems.append("interrupted")
        except Exception as err:  # the run's own error, as one line without its type name
            problems.append(user_message(err))
    done = {
        panel.generate: gr.update(visible=True),
        panel.interrupt: gr.update(visible=False),
        panel.skip: gr.update(visible=False),
        panel.preview: gr.update(visible=False),
        panel.progress: progress_html(None, None),
        panel.job_id: [],
    }
    failed = [p for p in problems if p != "interrupted"]
    if failed:
        gr.Warning(failed[0])
        done.update(error_box(panel, "; ".join(dict.fromkeys(failed))))
    interrupted = len(results) < len(jobs) or any(getattr(r, "interrupted", False) for r in results)
    if interrupted and not failed:
        done.update(error_box(panel, INTERRUPTED, STOPPED_LABEL))
    if results and len(results) == len(jobs):
        shown = show(results)
        done.update({
            panel.gallery: shown.images,
            panel.infotexts: shown.infotexts,
            panel.seeds: shown.seeds,
            panel.selected: 0,
            panel.infotext: shown.infotexts[0] if shown.infotexts else "",
        })
        not_saved = not_saved_warning(results)
        if not_saved:
            gr.Warning(not_saved)
            done.update(error_box(panel, not_saved, "Not saved"))
    return done


def not_saved_warning(results: list[GenerationResult]) -> str:
    """One line when some images could not be saved (they are shown all the same); "" when all were."""
    problems = list(dict.fromkeys(m for r in results for m in getattr(r, "save_errors", [])))
    if not problems:
        return ""
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return f"The images are shown but were not saved: {problems[0]}{more}"


def interrupt(services, job_ids: list[str]) -> None:
    """Cancel this browser tab's jobs only (other tabs' jobs go on)."""
    for job_id in job_ids or []:
        try:
            services.queue.cancel(job_id)
        except KeyError:
            pass


def skip(services, job_ids: list[str]) -> None:
    """Skip the current image of this tab's running job."""
    for job_id in job_ids or []:
        try:
            job = services.queue.get(job_id)
        except KeyError:
            continue
        if job.state is JobState.running:
            job.token.skip()


def bind_panel(services, panel: OutputPanel) -> None:
    """Interrupt, Skip and gallery selection (shows the selected image's infotext)."""
    panel.interrupt.click(lambda ids: interrupt(services, ids), inputs=[panel.job_id], outputs=None,
                          concurrency_limit=None, queue=False)
    panel.skip.click(lambda ids: skip(services, ids), inputs=[panel.job_id], outputs=None,
                     concurrency_limit=None, queue=False)

    def on_select(infotexts: list[str], evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        text = infotexts[index] if 0 <= index < len(infotexts) else ""
        return index, text

    panel.gallery.select(on_select, inputs=[panel.infotexts], outputs=[panel.selected, panel.infotext])
