"""Where each worker replica answers directly: a small named Ray actor, replica id -> URL.

Serve routes requests by load and checkpoint; a job's status and cancel, settings and
``/easel/v1/cluster`` must reach one given replica (or all of them), so every replica also
serves its app on its own port, behind ``ApiGuard`` with a token only the ingress knows, and
registers that URL here.
"""

from __future__ import annotations

import ray

NAMESPACE = "easel"


@ray.remote(num_cpus=0)
class ReplicaDirectory:
    def __init__(self) -> None:
        self.urls: dict[str, str] = {}

    def register(self, replica: str, url: str) -> None:
        self.urls[replica] = url

    def drop(self, replica: str) -> None:
        self.urls.pop(replica, None)

    def all(self) -> dict[str, str]:
        return dict(self.urls)


def directory_name(app: str) -> str:
    return f"easel-replicas-{app}"


def create_directory(app: str):
    """The directory of application ``app`` (created once; kept alive by this driver)."""
    return ReplicaDirectory.options(name=directory_name(app), namespace=NAMESPACE, get_if_exists=True).remote()


def get_directory(app: str):
    return ray.get_actor(directory_name(app), namespace=NAMESPACE)
