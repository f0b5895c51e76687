"""Checkpoint swaps: a cold load vs a swap to a cached model, and the cold load vs a raw file read.

Targets: a swap to a cached model at most 0.2 s; a cold load at most 1.3x the time to read the
file's bytes. Uses two shapes-architecture checkpoints (random weights) by default, or the
checkpoints in --data-dir.

    python -m bench.swap [--repeats 5] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.common import bench_data_dir


def read_bytes(path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args()

    from modules.config import load_settings
    from modules.services import build_services

    data = args.data_dir or bench_data_dir(names=("bench-a", "bench-b"))
    services = build_services(load_settings(data, {"sd_checkpoints_limit": 2}), start=False)
    a, b = [c.name for c in services.checkpoints.list()[:2]]
    path_a = services.checkpoints.get(a).path
    services.checkpoints.short_hash(services.checkpoints.get(a))  # hashing is cached, not part of a load
    services.checkpoints.short_hash(services.checkpoints.get(b))
    cold, raw, cached = [], [], []
    for _ in range(args.repeats):
        services.models.clear()
        raw.append(read_bytes(path_a))
        t0 = time.perf_counter()
        with services.models.use(a):
            pass
        cold.append(time.perf_counter() - t0)
        with services.models.use(b):
            pass
        t0 = time.perf_counter()
        with services.models.use(a):  # both cached now: a swap back
            pass
        cached.append(time.perf_counter() - t0)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    size = path_a.stat().st_size / 2**20
    print(f"checkpoint {a}: {size:.1f} MiB, median of {args.repeats}")
    print(f"raw read of the file   : {med(raw):.4f} s")
    print(f"cold load              : {med(cold):.4f} s   ratio to raw read {med(cold) / med(raw):.2f}")
    print(f"swap to a cached model : {med(cached):.6f} s")


if __name__ == "__main__":
    main()
