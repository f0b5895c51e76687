"""What the ingress decides from a request alone (no ray here, so it is tested on its own).

- the checkpoint a request names (``sd_model_checkpoint`` or ``override_settings.sd_model_checkpoint``,
  at the top of the body or in an ``/easel/v1/jobs`` submission's ``request``);
- how a request is sent: to one replica chosen by checkpoint, to every replica (settings,
  interrupt, skip, refreshes), to the replica that owns a job, or answered by the ingress itself;
- cluster job ids: ``<replica>.<job id>``, so a job id finds its replica. Generation jobs
  (``/easel/v1/jobs``), trainings (``/easel/v1/train``) and model installs
  (``/easel/v1/models/install``) all answer such ids, and their status and cancel routes take them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

JOBS_PREFIX = "/easel/v1/jobs"
TRAIN_PREFIX = "/easel/v1/train"
INSTALL_PREFIX = "/easel/v1/models/install"
SUBMIT_PATHS = frozenset({JOBS_PREFIX, TRAIN_PREFIX, INSTALL_PREFIX})  # POST answers 202 with a job id
LIST_PATHS = frozenset({JOBS_PREFIX, INSTALL_PREFIX})  # GET lists the jobs: merged over the replicas
CLUSTER_PATH = "/easel/v1/cluster"
JOB_SEP = "."
# a route naming one job: GET/DELETE /easel/v1/jobs/ID, GET /easel/v1/train/ID, POST /easel/v1/train/ID/cancel,
# GET/DELETE /easel/v1/models/install/ID
_JOB_PATH = re.compile(r"^(/easel/v1/jobs|/easel/v1/train|/easel/v1/models/install)/([^/]+)(/cancel)?$")

# Routes that change or read every replica's state: sent to all of them.
BROADCAST_POSTS = frozenset({
    "/sdapi/v1/options", "/sdapi/v1/interrupt", "/sdapi/v1/skip", "/sdapi/v1/refresh-checkpoints",
    "/sdapi/v1/refresh-loras", "/sdapi/v1/refresh-embeddings", "/sdapi/v1/refresh-vae",
    "/sdapi/v1/unload-checkpoint", "/sdapi/v1/reload-checkpoint",
})


class Route(StrEnum):
    one = "one"  # one replica, by checkpoint (multiplexed model id)
    broadcast = "broadcast"  # every replica; the first answer is returned
    progress = "progress"  # every replica; the busiest answer is returned
    job = "job"  # the replica that owns the job in the path (a generation job, training or install)
    job_submit = "job_submit"  # one replica (by checkpoint); the answer's job id is made a cluster id
    job_list = "job_list"  # every replica; the lists are merged
    cluster = "cluster"  # answered by the ingress


def route_of(method: str, path: str) -> Route:
    """How the ingress sends ``method path``."""
    method = method.upper()
    if path == CLUSTER_PATH:
        return Route.cluster
    if method == "POST" and path in SUBMIT_PATHS:
        return Route.job_submit
    if method == "GET" and path in LIST_PATHS:
        return Route.job_list
    if _JOB_PATH.match(path):
        return Route.job
    if method == "POST" and path in BROADCAST_POSTS:
        return Route.broadcast
    if method == "GET" and path == "/sdapi/v1/progress":
        return Route.progress
    return Route.one


def json_body(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None (empty, not JSON, not an object)."""
    if not body:
        return None
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def requested_checkpoint(body: bytes) -> str | None:
    """The checkpoint a request body names, or None (the replica's selected default applies)."""
    data = json_body(body)
    if data is None:
        return None
    for fields in (data, data.get("request")):  # /sdapi/v1 bodies; /easel/v1/jobs submissions
        if not isinstance(fields, dict):
            continue
        name = fields.get("sd_model_checkpoint")
        override = fields.get("override_settings")
        if not name and isinstance(override, dict):
            name = override.get("sd_model_checkpoint")
        if isinstance(name, str) and name.strip():
            return name.strip()
    return None


@dataclass(frozen=True)
class ClusterJobId:
    """A job id across replicas: the replica's id, then the id its own queue gave the job."""

    replica: str
    job: str

    def __str__(self) -> str:
        return f"{self.replica}{JOB_SEP}{self.job}"

    @classmethod
    def parse(cls, text: str) -> ClusterJobId | None:
        replica, sep, job = text.partition(JOB_SEP)
        return cls(replica, job) if sep and replica and job else None


def job_id_in_path(path: str) -> str | None:
    match = _JOB_PATH.match(path)
    return match.group(2) if match else None


def with_job_id(path: str, job_id: str) -> str:
    """``path`` (a route naming one job) naming ``job_id`` instead."""
    match = _JOB_PATH.match(path)
    if match is None:
        raise ValueError(f"{path!r} names no job")
    return f"{match.group(1)}/{job_id}{match.group(3) or ''}"


def is_cancel(method: str, path: str) -> bool:
    """Whether a request naming one job cancels it (DELETE, or a training's POST .../cancel)."""
    return method.upper() == "DELETE" or path.endswith("/cancel")


def with_cluster_ids(body: bytes, replica: str) -> bytes:
    """A jobs answer (one job or a list) with every ``id`` made a cluster id of ``replica``."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            item["id"] = str(ClusterJobId(replica, item["id"]))
    return json.dumps(value).encode()


def job_path(job_id: str, prefix: str = JOBS_PREFIX) -> str:
    """The status route of a job submitted to ``prefix`` (one of SUBMIT_PATHS)."""
    return f"{prefix}/{job_id}"

