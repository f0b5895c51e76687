"""``./launch.sh serve``: the API on a Ray Serve application (docs/serve.md).

Takes the app's own flags (``--ckpt-dir``, ``--data-dir``, ``--api-auth``, ``--listen``, ``--port``,
...; see ``modules.cli.serve_parser``) plus the scale-out ones below, starts a local Ray instance
(or joins one with ``--address``) and runs the ingress and worker deployments until Ctrl+C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from modules.config import ROOT

DEFAULT_TARGET_ONGOING = 2.0  # Serve's own default target
WORKER_MAX_ONGOING = 32  # requests one replica takes at once (its job queue holds them); more wait in Serve


def serve_parser() -> argparse.ArgumentParser:
    from modules.cli import serve_parser as app_parser

    ap = app_parser()
    ap.prog = "launch.sh serve"
    ap.description = ("Serve Easel's HTTP API (as --nowebui --api) on a Ray Serve application: replicas with"
                      " their own model cache and queue, requests routed to the replica holding their checkpoint.")
    g = ap.add_argument_group("scale-out (Ray Serve)")
    g.add_argument("--replicas", type=int, default=None,
                   help="a fixed number of worker replicas, each its own Easel: cache, queue (default 1)")
    g.add_argument("--min-replicas", type=int, default=None, metavar="N",
                   help="autoscaling: never fewer replicas than this (default 1; needs --max-replicas)")
    g.add_argument("--max-replicas", type=int, default=None, metavar="N",
                   help="autoscaling: at most this many replicas (turns Serve's autoscaling on)")
    g.add_argument("--target-ongoing-requests", type=float, default=None, metavar="R",
                   help=f"autoscaling: requests in progress per replica to aim at (default {DEFAULT_TARGET_ONGOING:g};"
                        " more per replica adds replicas, fewer removes them)")
    g.add_argument("--gpus-per-replica", type=float, default=0, metavar="G",
                   help="GPUs Ray gives each replica (0: CPU replicas; 1 on a GPU machine)")
    g.add_argument("--cpus-per-replica", type=float, default=0, metavar="C",
                   help="CPUs Ray reserves per replica; also its torch threads when set (0: no reservation)")
    g.add_argument("--max-models-per-replica", type=int, default=2, metavar="K",
                   help="checkpoints a replica keeps loaded (Serve's multiplexing limit and its cache's)")
    g.add_argument("--address", default=None, metavar="auto|ray://HOST:PORT",
                   help="join a running Ray cluster (default: start a local Ray instance)")
    g.add_argument("--retries", type=int, default=2, help="tries on another replica when one dies under a request")
    g.add_argument("--outputs-url", default=None, metavar="URL",
                   help="save images (when a request saves) under this fsspec URL: file:///shared/outputs,"
                        " s3://bucket/prefix, ... (default: the data folder's outputs/)")
    return ap


def autoscaling_config(min_replicas: int | None, max_replicas: int | None, target_ongoing: float | None,
                       fixed_replicas: int | None = None) -> dict[str, Any] | None:
    """Serve's ``autoscaling_config`` for the worker deployment from the flags, or None (a fixed count).

    Autoscaling is on when ``--max-replicas`` is given; it starts at ``min_replicas`` (default 1) and
    adds a replica while the requests in progress per replica exceed ``target_ongoing`` (removes one
    when below). ValueError, in one line, for contradictory or out-of-range values.
    """
    if max_replicas is None:
        if min_replicas is not None or target_ongoing is not None:
            raise ValueError("--min-replicas and --target-ongoing-requests need --max-replicas (autoscaling);"
                             " for a fixed count use --replicas N")
        return None
    if fixed_replicas is not None:
        raise ValueError("--replicas is a fixed count: give it alone, or --min-replicas/--max-replicas to autoscale")
    low = 1 if min_replicas is None else min_replicas
    target = DEFAULT_TARGET_ONGOING if target_ongoing is None else target_ongoing
    if low < 1 or max_replicas < 1:
        raise ValueError(f"--min-replicas {low} and --max-replicas {max_replicas} must be at least 1")
    if low > max_replicas:
        raise ValueError(f"--min-replicas {low} is more than --max-replicas {max_replicas}")
    if not 0 < target <= WORKER_MAX_ONGOING:
        raise ValueError(f"--target-ongoing-requests {target:g} must be more than 0 and at most {WORKER_MAX_ONGOING}"
                         " (the requests one replica takes at once)")
    return {"min_replicas": low, "initial_replicas": low, "max_replicas": max_replicas,
            "target_ongoing_requests": target}


@dataclass(frozen=True)
class ServeConfig:
    """Everything the application is built from (also used by the tests and bench/serve.py)."""

    settings: Any
    replicas: int = 1
    gpus_per_replica: float = 0
    cpus_per_replica: float = 0
    max_models: int = 2
    api_auth: list[tuple[str, str]] | None = None
    allow_server_paths: bool = False
    allow_downloads: bool = False
    retries: int = 2
    autoscaling: dict[str, Any] | None = None  # Serve's autoscaling_config (replaces ``replicas``)
    outputs_url: str | None = None  # saved images under this fsspec URL (None: the data folder)


def build_app(config: ServeConfig, name: str = "easel", local: bool = True):
    """The bound Serve application ``name``: the ingress over the worker deployment."""
    import secrets

    from modules.serve.ingress import IngressOptions, make_ingress
    from modules.serve.worker import WorkerOptions, make_worker

    token = secrets.token_urlsafe(24)  # the ingress's password on the replicas' own ports
    worker = make_worker(
        WorkerOptions(config.settings, config.allow_server_paths, config.allow_downloads, config.max_models,
                      threads=int(config.cpus_per_replica), app_name=name, token=token, local=local,
                      outputs_url=config.outputs_url),
        num_replicas=config.replicas, gpus_per_replica=config.gpus_per_replica,
        cpus_per_replica=config.cpus_per_replica, max_ongoing_requests=WORKER_MAX_ONGOING,
        autoscaling=config.autoscaling)
    ingress = make_ingress(IngressOptions(config.settings, config.api_auth, retries=config.retries, app_name=name,
                                          token=token))
    return ingress.bind(worker.bind())


def easel_env() -> dict[str, str]:
    """What replicas need in their environment: Easel importable from this checkout (on a cluster,
    every node needs it at the same path), nothing fetched from the network."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            "TRANSFORMERS_OFFLINE": os.environ.get("TRANSFORMERS_OFFLINE", "1")}


_directories: dict[str, Any] = {}


def start(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
          num_cpus: int | None = None, name: str = "easel", quiet: bool = False) -> None:
    """Start (or join) Ray, then Serve on ``host:port`` with the application; returns once it is ready.

    A local Ray instance inherits this process's environment (faster than a runtime_env: Ray
    then starts no separate worker pool); a cluster gets it as the job's runtime_env.
    """
    import ray
    from ray import serve

    if not ray.is_initialized():
        if address is None:
            os.environ.update(easel_env())
            ray.init(include_dashboard=False, num_cpus=num_cpus, log_to_driver=not quiet)
        else:
            ray.init(address=address, runtime_env={"env_vars": easel_env()}, log_to_driver=not quiet)
    from modules.serve.directory import create_directory

    _directories[name] = create_directory(name)  # held here: an actor without a handle is gone
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config, name, local=address is None), name=name, route_prefix="/")


def stop() -> None:
    """Shut the application, Serve and (a local) Ray down."""
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        _directories.clear()
        ray.shutdown()


def run(argv: list[str]) -> int:
    args = serve_parser().parse_args(argv)
    from modules.cli import auth_policy, settings_from_args

    if args.share:
        raise ValueError("--share: the serve command serves the HTTP API only; put a reverse proxy in front of it")
    if (args.replicas is not None and args.replicas < 1) or args.max_models_per_replica < 1:
        raise ValueError("--replicas and --max-models-per-replica must be at least 1")
    autoscaling = autoscaling_config(args.min_replicas, args.max_replicas, args.target_ongoing_requests, args.replicas)
    replicas = args.replicas or 1
    if args.outputs_url:
        from modules.outputs_url import open_url

        open_url(args.outputs_url)  # a URL that cannot work fails here, not in every replica
    settings = settings_from_args(args)
    if args.ckpt:
        settings = settings.model_copy(update={"sd_model_checkpoint": args.ckpt})
    policy = auth_policy(args)
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    for line in policy.start_warnings(exposed=args.listen, share=False, webui=False, api=True):
        print(line, file=sys.stderr)
    config = ServeConfig(settings, replicas, args.gpus_per_replica, args.cpus_per_replica,
                         args.max_models_per_replica, list(policy.api) or None, args.allow_server_paths,
                         args.allow_downloads, args.retries, autoscaling, args.outputs_url)
    start(config, host, args.port, args.address)
    scale = (f"{autoscaling['min_replicas']}-{autoscaling['max_replicas']} replicas, autoscaling" if autoscaling
             else f"{replicas} replicas")
    print(f"Easel API on Ray Serve: http://{host}:{args.port} ({scale};"
          f" GET /easel/v1/cluster describes them). Ctrl+C stops.", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    finally:
        stop()


def main(argv: list[str] | None = None) -> int:
    from modules.checkpoints import CheckpointError
    from modules.config import SettingsError

    try:
        return run(list(sys.argv[1:] if argv is None else argv))
    except (SettingsError, CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
