"""The ingress deployment: the API's HTTP face on Ray Serve.

It runs the app's own ``ApiGuard`` (the same credentials and body limit as ``--nowebui --api``)
around a small Starlette app that forwards each request to the worker deployment
(``modules.serve.worker``), as ``modules.serve.routing`` decides:

- generation requests carry the checkpoint they name (else the default) as Serve's multiplexed
  model id, so they go to a replica that holds it;
- settings, interrupt, skip and refreshes go to every replica; progress answers from the busiest;
- ``POST /easel/v1/jobs`` answers a cluster job id (``<replica>.<job>``); GET and DELETE on it go
  to that replica, on its own port (``modules.serve.directory``); ``GET /easel/v1/jobs`` merges all queues;
- ``GET /easel/v1/cluster`` describes the replicas.

Faults: a replica that dies under a request is retried on another one (``retries`` times); an
async job whose replica died is submitted again, once per retry, when its id is next asked for
(the ingress keeps each job's submission until the job ends, within ``job_table_bytes``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as StarletteRoute

from modules.serve.routing import (
    CLUSTER_PATH,
    INSTALL_PREFIX,
    JOBS_PREFIX,
    TRAIN_PREFIX,
    ClusterJobId,
    Route,
    is_cancel,
    job_id_in_path,
    job_path,
    json_body,
    requested_checkpoint,
    route_of,
    with_cluster_ids,
    with_job_id,
)
from modules.serve.worker import REPLICA_INFO_PATH, REPLICA_USER, answer

logger = logging.getLogger(__name__)

try:  # a replica that is restarting or unreachable (Ray's own names for it)
    from ray.exceptions import ActorUnavailableError

    REPLICA_FAULTS: tuple[type[BaseException], ...] = (RayActorError, ActorUnavailableError)
except ImportError:  # pragma: no cover - older ray
    REPLICA_FAULTS = (RayActorError,)

MODEL_PATHS = frozenset({"/sdapi/v1/txt2img", "/sdapi/v1/img2img"})
NEW_MODEL_PATHS = frozenset({TRAIN_PREFIX, INSTALL_PREFIX})  # jobs that add a model file: all replicas refresh after
# what every replica is sent when a training or install ends: its lists are scanned again
REFRESH_LISTS = tuple({"method": "POST", "path": f"/sdapi/v1/refresh-{name}", "query": [], "headers": [], "body": b""}
                      for name in ("checkpoints", "loras", "vae"))
HOP_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive"})
TERMINAL = frozenset({"done", "failed", "cancelled"})
PINNED_TIMEOUT_S = 30  # a replica that does not describe itself in this time is left out of /easel/v1/cluster
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


@dataclass(frozen=True)
class IngressOptions:
    settings: Any  # modules.config.Settings
    api_auth: list[tuple[str, str]] | None = None
    max_body_bytes: int = 50 * 1024 * 1024
    retries: int = 2  # tries on other replicas after a replica died under a request
    job_table_bytes: int = 256 * 1024 * 1024  # submissions kept to resubmit jobs of dead replicas
    app_name: str = "easel"
    token: str = ""  # the credentials' password on the replicas' own ports


@dataclass
class JobRecord:
    """Where a cluster job runs now, and what to submit again if its replica dies."""

    replica: str
    job: str
    call: dict[str, Any] | None
    model: str | None
    resubmits: int = 0
    size: int = field(default=0)


class ReplicaGone(RuntimeError):
    """A pinned request's replica is not running any more."""


def make_ingress(options: IngressOptions):
    """The ingress deployment for these options."""

    @serve.deployment(name="EaselIngress", num_replicas=1, max_ongoing_requests=512,
                      ray_actor_options={"num_cpus": 0})
    @serve.ingress()
    class EaselIngress:
        def __init__(self, worker: Any) -> None:
            from modules.checkpoints import CheckpointRegistry, HashCache

            self.worker = worker
            settings = options.settings
            self.registry = CheckpointRegistry(settings.checkpoint_dirs, HashCache(settings.cache_dir / "hashes.json"))
            self.default_query = settings.sd_model_checkpoint
            self.jobs: OrderedDict[str, JobRecord] = OrderedDict()
            self.table_bytes = 0
            self.retried = 0
            self.started = time.time()
            self.unreachable: dict[str, str] = {}
            self.urls: dict[str, str] = {}  # replica -> its own URL (modules.serve.directory)
            import httpx

            self.direct = httpx.AsyncClient(auth=(REPLICA_USER, options.token), timeout=httpx.Timeout(600, connect=5))

        def __serve_build_asgi_app__(self):
            from modules.api.guard import ApiGuard

            app = Starlette(routes=[
                StarletteRoute(CLUSTER_PATH, self.cluster, methods=["GET"]),
                StarletteRoute("/{path:path}", self.forward, methods=METHODS),
            ])
            return ApiGuard(app, options.api_auth, options.max_body_bytes)

        # -- checkpoints -------------------------------------------------------------------
        def title_of(self, query: str | None) -> str | None:
            """The A1111 title of a checkpoint query (None: the default); None when it names nothing
            (the replica's app then answers as a single Easel does)."""
            from modules.checkpoints import CheckpointError

            for attempt in range(2):
                try:
                    return self.registry.title(self.registry.get(query or self.default_query))
                except CheckpointError:
                    if attempt == 0:
                        self.registry.refresh()
            return None if query is None else self.title_of(None)

        # -- sending -----------------------------------------------------------------------
        async def send(self, call: dict[str, Any], model: str | None = None) -> dict[str, Any]:
            """One request through Serve (by ``model``: the multiplexed checkpoint), retried on another
            replica when the one it reached died under it."""
            tries = 1 + options.retries
            for attempt in range(tries):
                handle = self.worker.options(method_name="handle", **({"multiplexed_model_id": model} if model else {}))
                try:
                    result = await handle.remote(call)
                except REPLICA_FAULTS as err:
                    self.retried += 1
                    logger.warning("a replica died under %s %s (try %d of %d): %s", call["method"], call["path"],
                                   attempt + 1, tries, str(err).splitlines()[0])
                    if attempt + 1 == tries:
                        return answer(503, {"error": "ReplicaFailed", "detail":
                                            f"the replicas that took this request died {tries} times: {err}"})
                    continue
                if result.get("url"):
                    self.urls[result["replica"]] = result["url"]
                return result
            raise AssertionError("unreachable")

        async def send_to(self, replica: str, call: dict[str, Any] | None) -> dict[str, Any]:
            """One request to one given replica, on its own port (``call`` None: its description)."""
            import httpx

            url = self.urls.get(replica) or (await self.directory()).get(replica)
            if url is None:
                raise ReplicaGone(f"replica {replica} is not running")
            try:
                if call is None:
                    response = await self.direct.get(url + REPLICA_INFO_PATH, timeout=PINNED_TIMEOUT_S)
                else:
                    headers = [(k, v) for k, v in call["headers"] if k.lower() != "authorization"]
                    response = await self.direct.request(call["method"], url + call["path"], params=call["query"] or None,
                                                         headers=headers, content=call["body"])
            except httpx.TransportError as err:
                self.urls.pop(replica, None)
                await self.directory_drop(replica)
                raise ReplicaGone(f"replica {replica} does not answer at {url}: {type(err).__name__}") from None
            if call is None:
                return response.json()
            headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in HOP_HEADERS]
            return {"status": response.status_code, "headers": headers, "body": response.content, "replica": replica}

        async def directory(self) -> dict[str, str]:
            from modules.serve.directory import get_directory

            urls = await get_directory(options.app_name).all.remote()
            self.urls.update(urls)
            return urls

        async def directory_drop(self, replica: str) -> None:
            from modules.serve.directory import get_directory

            await get_directory(options.app_name).drop.remote(replica)

        async def replicas(self) -> list[str]:
            """The worker replicas that registered (dead ones are dropped when they fail to answer)."""
            return sorted(await self.directory())

        async def to_all(self, call: dict[str, Any] | None) -> list[dict[str, Any]]:
            """The same request to every replica (``call`` None: their descriptions); the answers of those running."""
            async def one(replica: str) -> dict[str, Any] | None:
                try:
                    return await self.send_to(replica, call)
                except ReplicaGone as err:
                    self.unreachable[replica] = str(err)
                    return None

            self.unreachable = {}
            answers = await asyncio.gather(*(one(r) for r in await self.replicas()))
            return [a for a in answers if a is not None]

        # -- routes ------------------------------------------------------------------------
        async def cluster(self, request: Request) -> Response:
            infos = await self.to_all(None)
            return JSONResponse({
                "replicas": infos, "default_checkpoint": self.title_of(None),
                "checkpoint_loads": sum(i.get("checkpoint_loads", 0) for i in infos),
                "queue_length": sum(i.get("queue_length", 0) for i in infos),
                "unreachable": self.unreachable, "retried_requests": self.retried, "tracked_jobs": len(self.jobs),
                "uptime_s": round(time.time() - self.started, 1),
            })

        async def forward(self, request: Request) -> Response:
            body = await request.body()
            call = {
                "method": request.method, "path": request.url.path, "query": list(request.query_params.multi_items()),
                "headers": [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_HEADERS], "body": body,
            }
            route = route_of(request.method, call["path"])
            if route is Route.job:
                return await self.job(call, job_id_in_path(call["path"]))
            if route is Route.job_list:
                merged = []
                for result in await self.to_all(call):
                    if result["status"] == 200:
                        merged += json.loads(with_cluster_ids(result["body"], result["replica"]))
                return JSONResponse(merged)
            if route is Route.broadcast:
                return await self.broadcast(call)
            if route is Route.progress:
                results = await self.to_all(call) or [await self.send(call)]
                return respond(max(results, key=progress_of))
            model = self.model_for(call, route)
            result = await self.send(call, model)
            if route is Route.job_submit and result["status"] == 202 and result.get("replica"):
                return self.job_created(call, model, result)
            return respond(result)

        def model_for(self, call: dict[str, Any], route: Route) -> str | None:
            """The multiplexed model id: the checkpoint of a generation request (else the default)."""
            if route is Route.job_submit:
                data = json_body(call["body"]) or {}
                if data.get("type") == "extras" or call["path"] not in (JOBS_PREFIX, TRAIN_PREFIX):
                    return None  # an upscale, a model install: any replica
            elif not (call["method"] == "POST" and call["path"] in MODEL_PATHS):
                return None
            return self.title_of(requested_checkpoint(call["body"]))

        async def broadcast(self, call: dict[str, Any]) -> Response:
            results = await self.to_all(call)
            if not results:
                return respond(answer(503, {"error": "NoReplica", "detail": "no worker replica is running"}))
            failed = [r for r in results if r["status"] >= 400]
            if not failed and call["path"] == "/sdapi/v1/options":
                query = (json_body(call["body"]) or {}).get("sd_model_checkpoint")
                if isinstance(query, str) and query:
                    self.default_query = query
            return respond(failed[0] if failed else results[0])

        def job_created(self, call: dict[str, Any], model: str | None, result: dict[str, Any]) -> Response:
            job = json.loads(result["body"])["id"]
            cid = str(ClusterJobId(result["replica"], job))
            self.remember(cid, JobRecord(result["replica"], job, call, model, size=len(call["body"])))
            headers = {k: v for k, v in result["headers"] if k.lower() != "location"}
            headers["location"] = job_path(cid, call["path"])
            body = with_cluster_ids(result["body"], result["replica"])
            return Response(body, status_code=202, headers=headers)

        def remember(self, cid: str, record: JobRecord) -> None:
            self.jobs[cid] = record
            self.table_bytes += record.size
            while self.table_bytes > options.job_table_bytes and len(self.jobs) > 1:
                _, old = self.jobs.popitem(last=False)
                self.table_bytes -= old.size

        def forget_submission(self, record: JobRecord) -> None:
            self.table_bytes -= record.size
            record.call, record.size = None, 0

        async def job(self, call: dict[str, Any], cid: str) -> Response:
            """GET or DELETE one cluster job on its replica; resubmitted elsewhere if that replica died."""
            record = self.jobs.get(cid)
            if record is None:
                parsed = ClusterJobId.parse(cid)
                if parsed is None:
                    return respond(answer(404, {"error": "JobNotFound", "detail":
                                                f"no job with id {cid!r}: cluster job ids look like REPLICA.JOB"}))
                record = JobRecord(parsed.replica, parsed.job, None, None)
            for _ in range(1 + options.retries):
                try:
                    result = await self.send_to(record.replica, {**call, "path": with_job_id(call["path"], record.job)})
                except ReplicaGone:
                    if is_cancel(call["method"], call["path"]):
                        self.jobs.pop(cid, None)
                        return JSONResponse({"id": cid, "state": "cancelled", "cancelled": True})
                    if record.call is None or record.resubmits >= options.retries:
                        return respond(answer(404, {"error": "JobNotFound", "detail":
                                                    f"job {cid}: its replica {record.replica} is gone"}))
                    await self.resubmit(cid, record)
                    continue
                state = (json_body(result["body"]) or {}).get("state")
                if state in TERMINAL and record.call is not None:
                    if state == "done" and record.call["path"] in NEW_MODEL_PATHS:
                        for refresh in REFRESH_LISTS:  # the new checkpoint, LoRA or VAE, on every replica
                            await self.to_all(refresh)
                    self.forget_submission(record)
                if result["status"] < 300 or result["status"] == 507:
                    result = {**result, "body": with_id(result["body"], cid)}
                return respond(result)
            return respond(answer(503, {"error": "ReplicaFailed", "detail": f"job {cid}: its replicas kept dying"}))

        async def resubmit(self, cid: str, record: JobRecord) -> None:
            """Submit a job of a dead replica again, on another one; the cluster id stays."""
            self.retried += 1
            record.resubmits += 1
            logger.warning("job %s: replica %s is gone, submitting it again (%d)", cid, record.replica, record.resubmits)
            result = await self.send(record.call, record.model)
            if result["status"] == 202 and result.get("replica"):
                record.replica, record.job = result["replica"], json.loads(result["body"])["id"]

    return EaselIngress


def with_id(body: bytes, cid: str) -> bytes:
    data = json_body(body)
    if data is None or "id" not in data:
        return body
    return json.dumps({**data, "id": cid}).encode()


def progress_of(result: dict[str, Any]) -> tuple[float, int]:
    data = json_body(result["body"]) or {}
    state = data.get("state") if isinstance(data.get("state"), dict) else {}
    return float(data.get("progress") or 0), int(state.get("job_count") or 0)


def respond(result: dict[str, Any]) -> Response:
    headers = [(k, v) for k, v in result["headers"] if k.lower() not in HOP_HEADERS]
    response = Response(result["body"], status_code=result["status"])
    for key, value in headers:
        response.headers.append(key, value)
    return response
