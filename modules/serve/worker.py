"""The worker deployment: one Easel per replica, the unchanged API app run in-process.

Each replica builds its own ``Services`` (model cache, job queue) on its device and the same
FastAPI app as ``--nowebui --api`` (``modules.api.create_app``); the ingress hands it HTTP
requests as plain data (``handle``) and it answers them through the app (httpx's ASGI
transport: routes, validation, error bodies and limits are the app's own).

Checkpoints are Serve multiplexed models: ``get_model(title)`` loads one through the replica's
job queue (a ``load_model`` job, so it never pulls a model from under a running job) and the
replica reports the titles it holds, which Serve's router prefers for requests naming them.
A checkpoint that cannot be loaded is answered at once with a 500 naming it and the reason.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from typing import Any

from ray import serve

DEPLOYMENT = "EaselWorker"
REPLICA_USER = "easel-replica"  # the ingress's credentials on a replica's own port: (REPLICA_USER, token)
REPLICA_INFO_PATH = "/easel/v1/replica"


@dataclass(frozen=True)
class WorkerOptions:
    """What every replica is built with (picklable: it travels to the replicas)."""

    settings: Any  # modules.config.Settings
    allow_server_paths: bool = False
    allow_downloads: bool = False
    max_models: int = 2  # checkpoints per replica: Serve's multiplexing limit and the cache's
    threads: int = 0  # torch threads per replica (0: torch's default)
    app_name: str = "easel"  # the Serve application (its replica directory)
    token: str = ""  # what the ingress sends to a replica's own port
    local: bool = True  # a local Ray: replicas listen on 127.0.0.1, else on their node's address
    outputs_url: str | None = None  # saved images go under this fsspec URL (None: the data folder's outputs)


class LoadCounter(logging.Handler):
    """Counts the model cache's checkpoint loads (its "loaded ..." log records)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("loaded "):
            self.count += 1


class CheckpointSlot:
    """A multiplexed model: a checkpoint held in the replica's cache. When Serve's multiplexer
    evicts it, it leaves the cache too (unless a queued job still uses it: the cache's own
    limit then drops it later)."""

    def __init__(self, services: Any, key: str, title: str) -> None:
        self.key, self.title = key, title
        self.__del__ = self._unload  # called by Serve on eviction; not a finalizer (see ray.serve.multiplex)
        self._services = services

    def _unload(self) -> None:
        from modules.model_manager import ModelInUseError

        try:
            self._services.models.unload(self.key)
        except ModelInUseError:
            pass


class UnknownCheckpoint(LookupError):
    """The multiplexed model id names no checkpoint here: the app answers (404 or A1111's fallback)."""


def serve_directly(app: Any, host: str, token: str) -> tuple[Any, str]:
    """Serve ``app`` on a free port of ``host`` in a thread, behind ApiGuard with the ingress's token."""
    import socket
    import threading

    import uvicorn

    from modules.api.guard import ApiGuard

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(ApiGuard(app, [(REPLICA_USER, token)]), log_level="warning",
                                           lifespan="off", loop="asyncio", http="h11"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="easel-replica-http").start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    return server, f"http://{host}:{sock.getsockname()[1]}"


def make_worker(options: WorkerOptions, num_replicas: int, gpus_per_replica: float = 0,
                cpus_per_replica: float = 0, max_ongoing_requests: int = 32,
                autoscaling: dict[str, Any] | None = None):
    """The worker deployment for these options (a class made here: the multiplexing limit is fixed per class).
    ``autoscaling`` (Serve's ``autoscaling_config``; see ``modules.serve.cli.autoscaling_config``) replaces
    the fixed ``num_replicas``."""

    @serve.deployment(
        name=DEPLOYMENT, num_replicas=None if autoscaling else num_replicas, autoscaling_config=autoscaling,
        max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_gpus": gpus_per_replica, "num_cpus": cpus_per_replica},
        health_check_period_s=2, health_check_timeout_s=30, graceful_shutdown_timeout_s=5,
    )
    class EaselWorker:
        def __init__(self) -> None:
            import httpx

            from modules.access import ClientAccess
            from modules.api import create_app
            from modules.images import limit_decoded_pixels
            from modules.services import build_services

            if options.threads > 0:
                import torch

                torch.set_num_threads(options.threads)
            settings = options.settings.model_copy(update={"sd_checkpoints_limit": options.max_models})
            self.replica = serve.get_replica_context().replica_id.unique_id
            outputs = None
            if options.outputs_url:
                from modules.outputs_url import UrlOutputs

                outputs = UrlOutputs(options.outputs_url, settings.data_dir, tag=self.replica)
            self.services = build_services(settings, access=ClientAccess(allow_server_paths=options.allow_server_paths),
                                           allow_downloads=options.allow_downloads, outputs=outputs)
            limit_decoded_pixels(settings.max_input_pixels)
            self.app = create_app(self.services)  # auth is the ingress's (same ApiGuard); limits are the app's
            self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://easel",
                                            timeout=None)
            self.loads = LoadCounter()
            logging.getLogger("modules.model_manager").setLevel(logging.INFO)
            logging.getLogger("modules.model_manager").addHandler(self.loads)
            self.requests = 0
            self.started = time.time()
            self.app.add_api_route(REPLICA_INFO_PATH, self.info, methods=["GET"], include_in_schema=False)
            import ray

            from modules.serve.directory import get_directory

            host = "127.0.0.1" if options.local else ray.util.get_node_ip_address()
            self.server, self.url = serve_directly(self.app, host, options.token)
            ray.get(get_directory(options.app_name).register.remote(self.replica, self.url))

        @serve.multiplexed(max_num_models_per_replica=options.max_models)
        async def get_model(self, title: str) -> CheckpointSlot:
            from modules.checkpoints import CheckpointError
            from modules.services import model_key

            try:
                name = self.services.checkpoints.get(title).name
            except CheckpointError:
                self.services.checkpoints.refresh()  # a file another replica installed or trained since
                try:
                    name = self.services.checkpoints.get(title).name
                except CheckpointError as err:
                    raise UnknownCheckpoint(str(err)) from None
            key = model_key(name, self.services.resolve_vae(None))
            await self.services.queue.submit("load_model", key).wait_async()
            return CheckpointSlot(self.services, key, title)

        async def handle(self, call: dict[str, Any]) -> dict[str, Any]:
            """Answer one HTTP request (``method``, ``path``, ``query``, ``headers``, ``body``) through the app."""
            self.requests += 1
            title = serve.get_multiplexed_model_id()
            if title:
                try:
                    await self.get_model(title)
                except UnknownCheckpoint:
                    pass  # the app answers as a single Easel would (404, or A1111's fallback with a warning)
                except Exception as err:  # noqa: BLE001 - any load failure is the client's answer
                    detail = f"replica {self.replica} could not load checkpoint {title!r}: {err}"
                    return answer(500, {"error": "CheckpointLoadError", "detail": detail})
            response = await self.client.request(call["method"], call["path"], params=call.get("query") or None,
                                                 headers=call["headers"], content=call["body"])
            headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-length"]
            return {"status": response.status_code, "headers": headers, "body": response.content,
                    "replica": self.replica, "url": self.url}

        async def info(self) -> dict[str, Any]:
            """This replica for ``GET /easel/v1/cluster`` (also ``GET /easel/v1/replica`` on its own port)."""
            import torch

            services = self.services
            device = services.runtime.device
            name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
            current = services.queue.current()
            return {
                "replica": self.replica, "node": platform.node(), "pid": os.getpid(), "device": device,
                "device_name": name, "loaded_checkpoints": [e.key for e in services.models.loaded()],
                "queue_length": services.queue.job_count(), "running": current.kind if current else None,
                "checkpoint_loads": self.loads.count, "requests": self.requests,
                "uptime_s": round(time.time() - self.started, 1), "url": self.url,
            }

        def __del__(self) -> None:
            server = getattr(self, "server", None)
            if server is not None:
                server.should_exit = True
            services = getattr(self, "services", None)
            if services is not None:
                services.close()

    return EaselWorker


def answer(status: int, body: dict[str, Any]) -> dict[str, Any]:
    import json

    return {"status": status, "headers": [("content-type", "application/json")], "body": json.dumps(body).encode(),
            "replica": None}
