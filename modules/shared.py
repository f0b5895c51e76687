"""A1111's ``modules.shared`` for extensions: a view onto the running app's services, not state.

``opts`` (settings and extension options), ``cmd_opts`` (the command line with the extensions'
preload flags), ``state`` (the running job), ``sd_model`` (the model of the running job, read-only),
``OptionInfo`` and ``options_section``. See ``modules.a1111_compat``.
"""

from __future__ import annotations

import logging
from typing import Any

from modules.a1111_compat import runtime
from modules.a1111_compat.options import OptionInfo, options_section, opts  # noqa: F401

log = logging.getLogger("extensions")


class State:
    """A1111's ``shared.state``, read from the job queue."""

    def _job(self) -> Any:
        services = runtime.bound()
        return services.queue.current() if services is not None else None

    @property
    def interrupted(self) -> bool:
        job = self._job()
        return bool(job and job.token.cancelled)

    @property
    def skipped(self) -> bool:
        job = self._job()
        return bool(job and job.token.skipped)

    @property
    def job_count(self) -> int:
        services = runtime.bound()
        return services.queue.job_count() if services is not None else 0

    @property
    def sampling_step(self) -> int:
        job = self._job()
        return job.progress.snapshot().step if job else 0

    @property
    def sampling_steps(self) -> int:
        job = self._job()
        return job.progress.snapshot().total if job else 0

    @property
    def job(self) -> str:
        job = self._job()
        return job.kind if job else ""

    def interrupt(self) -> None:
        job = self._job()
        if job is not None:
            runtime.services().queue.cancel(job.id)

    def skip(self) -> None:
        job = self._job()
        if job is not None:
            job.token.skip()


state = State()


def __getattr__(name: str) -> Any:
    if name == "cmd_opts":
        services = runtime.services()
        return services.extensions.cmd_opts
    if name == "sd_model":
        job = runtime.current_job()
        return job[0].model if job else None
    if name in ("models_path", "data_path"):
        settings = runtime.services().settings
        return str(settings.models_dir if name == "models_path" else settings.data_dir)
    if name == "device":
        return runtime.services().runtime.device
    raise AttributeError(f"module 'modules.shared' has no attribute {name!r} (Easel supports: opts, cmd_opts, state,"
                         " sd_model, OptionInfo, options_section, log, models_path, data_path, device)")
