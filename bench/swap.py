"""Checkpoint swaps: a cold load vs a swap to a cached model, and the cold load vs a raw file read;
then two SD 1.5-size fine-tunes that share VAE and text encoder: what a switch loads, and a cached swap.

Targets: a swap to a cached model at most 0.2 s; a cold load at most 1.3x the time to read the
file's bytes; a switch between fine-tunes sharing VAE + text encoder loads only the UNet. Uses two
shapes-architecture checkpoints (random weights) by default, or the checkpoints in --data-dir; the
fine-tunes are random SD 1.5-size files (2 GB each in fp16, written to a temporary folder).

    python -m bench.swap [--repeats 5] [--data-dir DIR] [--skip-sd15]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import bench_data_dir, write_sd15_checkpoint


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
    ap.add_argument("--skip-sd15", action="store_true", help="only the small checkpoints")
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
    services.close()
    if not args.skip_sd15:
        fine_tunes(args.repeats)


def write_fine_tune(base: Path, path: Path) -> Path:
    """A copy of ``base`` with other UNet weights (scaled by 1.01) and the same VAE and text encoder bytes."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(base))
    for key in [k for k in state if k.startswith("model.diffusion_model.")]:
        state[key] = state[key] * 1.01
    save_file(state, str(path))
    return path


def fine_tunes(repeats: int) -> None:
    """Two SD 1.5-size fine-tunes sharing VAE + text encoder: the bytes a switch loads, and a cached swap."""
    from modules.config import load_settings
    from modules.services import build_services

    data = Path(tempfile.mkdtemp(prefix="easel-bench-ft-"))
    try:
        folder = data / "models" / "Stable-diffusion"
        first = write_sd15_checkpoint(folder / "sd15-ft1.safetensors")
        write_fine_tune(first, folder / "sd15-ft2.safetensors")
        services = build_services(load_settings(data, {"sd_checkpoints_limit": 2}), start=False)
        models = services.models
        t0 = time.perf_counter()
        models.ensure_loaded("sd15-ft1.safetensors")
        first_use = time.perf_counter() - t0
        models.clear()
        t0 = time.perf_counter()
        with models.use("sd15-ft1.safetensors"):
            pass
        cold = time.perf_counter() - t0
        before = {c.key for c in models.components()}
        t0 = time.perf_counter()
        with models.use("sd15-ft2.safetensors") as model:
            pass
        switch = time.perf_counter() - t0
        new = [c for c in models.components() if c.key not in before]
        all_bytes = sum(c.size_bytes for c in models.components() if "sd15-ft2.safetensors" in c.models)
        models.unload("sd15-ft2.safetensors")  # drops its UNet only: fine-tune 1 still uses VAE and text encoder
        t0 = time.perf_counter()
        with models.use("sd15-ft2.safetensors"):
            pass
        switch_again = time.perf_counter() - t0
        swaps = []
        for i in range(repeats * 2):
            t0 = time.perf_counter()
            with models.use(f"sd15-ft{1 + i % 2}.safetensors"):
                pass
            swaps.append(time.perf_counter() - t0)
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        print(f"SD 1.5-size fine-tunes sharing VAE + text encoder ({model.pipe.unet.dtype}):")
        print(f"first use (hashes the file's components once, then loads): {first_use:.2f} s")
        print(f"cold load of fine-tune 1       : {cold:.2f} s")
        print(f"switch to fine-tune 2          : {switch:.2f} s (first use: hashes its file), loaded "
              f"{', '.join(c.key.kind for c in new)}: {sum(c.size_bytes for c in new) / 2**20:.0f} MiB of its "
              f"{all_bytes / 2**20:.0f} MiB")
        print(f"same switch, hashes cached     : {switch_again:.2f} s")
        print(f"cached swap between the two    : {med(swaps):.6f} s (median of {len(swaps)})")
        services.close()
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
