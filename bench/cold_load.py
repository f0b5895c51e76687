"""Cold load of a checkpoint vs a raw read of its file (#26 item 3: target at most 1.3x).

Writes a random SD 1.5-size fp16 single file once (2 GB, in /tmp, deleted after), then, side by
side in one run and alternating, ``--repeats`` times:

- raw read: ``read()`` of the whole file in 16 MiB chunks into one reused buffer (the floor);
- read into memory: ``Path.read_bytes()`` (one fresh allocation of the file's size, as any loader
  that materialises the weights needs);
- the tensors alone: ``safetensors.load_file`` then a cast to the runtime dtype (Easel's reader
  before #26) vs ``checkpoints.read_state_dict(path, dtype)`` (one sequential read; a conversion
  runs on a worker thread while the next block is read);
- Easel's load: ``model_loading.load_checkpoint`` in the runtime dtype (the whole single-file path:
  tensors, architecture, configs, the four components, tokenizer, scheduler);
- the first use of a new file as the app does it (``model_parts.checkpoint_recipe`` with empty hash
  caches): the one pass that hashes its components and its A1111 sha256, then the load;

each from the page cache ("warm", the usual case: a file just downloaded or loaded before) and with
the file's pages dropped first (``posix_fadvise(DONTNEED)``: "cold", read from the disk). The
bundled model's load is reported the same way (its fixed costs dominate: 26 MiB).

Loads after the first in a process reuse memory the last one freed; the first load of a big file in
a new process writes into fresh memory, whose page faults cost CPU (about 0.3 s per GiB on this
machine). So the SD 1.5 file is also loaded cold in a new process per repeat, after the bundled
model (as the app starts: imports, tokenizer and configs are then built; not timed).

    python -m bench.cold_load [--repeats 3] [--dtype auto|fp32|bf16|fp16] [--skip-sd15]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import ROOT, write_sd15_checkpoint


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages (no root needed for clean pages)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def raw_read(path: Path, prefetch: bool = False) -> float:
    """``read()`` of the whole file in 16 MiB chunks into one buffer; with ``prefetch`` a thread first
    asks the kernel to read the whole file ahead (as Easel's reader does): the disk's best speed."""
    import threading

    from modules.checkpoints import _prefetch

    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        ahead = threading.Thread(target=_prefetch, args=(f.fileno(), [(0, path.stat().st_size)]))
        if prefetch:
            ahead.start()
        buffer = bytearray(1 << 24)
        view = memoryview(buffer)
        while f.readinto(view):
            pass
        if prefetch:
            ahead.join()
    return time.perf_counter() - t0


def read_into_memory(path: Path) -> float:
    t0 = time.perf_counter()
    data = path.read_bytes()
    secs = time.perf_counter() - t0
    del data
    return secs


def tensors_before(path: Path, dtype: torch.dtype) -> float:
    from safetensors.torch import load_file

    t0 = time.perf_counter()
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    secs = time.perf_counter() - t0
    del state
    gc.collect()
    return secs


def tensors_now(path: Path, dtype: torch.dtype) -> float:
    from modules.checkpoints import read_state_dict

    t0 = time.perf_counter()
    state = read_state_dict(path, dtype)
    secs = time.perf_counter() - t0
    del state
    gc.collect()
    return secs


def easel_load(path: Path, dtype: torch.dtype) -> float:
    from modules.checkpoints import CheckpointInfo
    from modules.model_loading import load_checkpoint

    yaml = path.with_suffix(".yaml")
    info = CheckpointInfo(path.name, path, "single", yaml if yaml.exists() else None)
    t0 = time.perf_counter()
    model = load_checkpoint(info, None, dtype)
    secs = time.perf_counter() - t0
    del model
    gc.collect()
    return secs


def first_use(path: Path, dtype: torch.dtype) -> float:
    """The app's first load of a file never seen: component digests and A1111 hash, then the parts."""
    from modules.checkpoints import CheckpointRegistry, HashCache
    from modules.model_parts import CheckpointSource, PartHashes, PartOptions, checkpoint_recipe

    with tempfile.TemporaryDirectory(prefix="easel-cold-cache-") as tmp:
        cache = Path(tmp)
        t0 = time.perf_counter()
        hashes = HashCache(cache / "hashes.json")
        registry = CheckpointRegistry([path.parent], hashes)
        source = CheckpointSource(registry, PartHashes(cache / "component_hashes.json", hashes), cache / "VAE",
                                  PartOptions(dtype))
        recipe = checkpoint_recipe(source, path.name, None)
        model = recipe.assemble({part: recipe.load(part) for part in recipe.parts})
        secs = time.perf_counter() - t0
    del model
    gc.collect()
    return secs


PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def new_process_load(path: Path, dtype: torch.dtype) -> tuple[float, int]:
    """(seconds, minor page faults) of one cold load in a new process that loaded the bundled model first."""
    import json
    import subprocess
    import sys

    drop_from_page_cache(path)
    out = subprocess.run([sys.executable, "-m", "bench.cold_load", "--child-load", str(path),
                          "--dtype", PRECISION_NAMES[dtype]], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    return figures["seconds"], figures["page_faults"]


def child_load(path: Path, dtype: torch.dtype) -> None:
    """In the new process: the bundled model (imports, tokenizer, configs), then the timed load."""
    import json
    import resource

    easel_load(ROOT / "models" / "Stable-diffusion" / "easel-shapes.safetensors", dtype)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    secs = easel_load(path, dtype)
    print(json.dumps({"seconds": secs, "page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults}))


def compare(path: Path, dtype: torch.dtype, repeats: int, label: str, new_process: bool = False) -> None:
    easel_load(path, dtype)  # first load in the process: imports, tokenizer and configs built once
    results: dict[str, list[float]] = {"raw warm": [], "load warm": [], "raw cold": [], "load cold": [],
                                       "read_bytes": [], "before": [], "now": [], "first warm": [], "first cold": [],
                                       "raw new": [], "load new": [], "faults new": [], "raw ahead": []}
    for _ in range(repeats):
        if new_process:
            drop_from_page_cache(path)
            results["raw new"].append(raw_read(path))
            secs, faults = new_process_load(path, dtype)
            results["load new"].append(secs)
            results["faults new"].append(faults)
        raw_read(path)  # into the page cache
        results["raw warm"].append(raw_read(path))
        results["load warm"].append(easel_load(path, dtype))
        results["read_bytes"].append(read_into_memory(path))
        results["before"].append(tensors_before(path, dtype))
        results["now"].append(tensors_now(path, dtype))
        results["first warm"].append(first_use(path, dtype))
        drop_from_page_cache(path)
        results["raw cold"].append(raw_read(path))
        drop_from_page_cache(path)
        results["raw ahead"].append(raw_read(path, prefetch=True))
        drop_from_page_cache(path)
        results["load cold"].append(easel_load(path, dtype))
        drop_from_page_cache(path)
        results["first cold"].append(first_use(path, dtype))
    med = {k: statistics.median(v) for k, v in results.items() if v}
    size = path.stat().st_size / 2**20
    print(f"\n{label}: {size:.0f} MiB file, load in {dtype}, median of {repeats}")
    print("| | raw read | Easel load | ratio |\n|---|---|---|---|")
    for state in ("warm", "cold"):
        raw, load = med[f"raw {state}"], med[f"load {state}"]
        print(f"| {state} (page cache {'kept' if state == 'warm' else 'dropped'}) | {raw:.3f} s "
              f"({size / 1024 / raw:.2f} GiB/s) | {load:.3f} s | {load / raw:.2f}x |")
    if new_process:
        raw, load = med["raw new"], med["load new"]
        print(f"| cold, first load in a new process ({med['faults new'] / 1000:.0f}k page faults) | {raw:.3f} s "
              f"| {load:.3f} s | {load / raw:.2f}x |")
    ahead = med["raw ahead"]
    print(f"cold raw read with the whole file asked ahead (the disk's best): {ahead:.3f} s; cold load "
          f"{med['load cold'] / ahead:.2f}x that" + (f", first load in a new process {med['load new'] / ahead:.2f}x"
                                                    if new_process else ""))
    raw = med["raw warm"]
    print(f"warm, ratios to the chunked raw read: read into memory {med['read_bytes'] / raw:.2f}x; tensors: "
          f"safetensors.load_file + cast (before) {med['before'] / raw:.2f}x, read_state_dict (now) "
          f"{med['now'] / raw:.2f}x; whole load {med['load warm'] / raw:.2f}x "
          f"= {med['load warm'] / med['read_bytes']:.2f}x the read into memory")
    print(f"first use of the file (hashes + load): warm {med['first warm']:.3f} s "
          f"({med['first warm'] / raw:.2f}x), cold {med['first cold']:.3f} s "
          f"({med['first cold'] / med['raw cold']:.2f}x the cold raw read)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto",
                    help="runtime precision to load in: auto (as Easel picks on this CPU), fp32, bf16, or fp16 "
                         "(what a CUDA machine loads before moving the model to the GPU: no conversion of an fp16 file)")
    ap.add_argument("--skip-sd15", action="store_true", help="only the bundled model")
    ap.add_argument("--file", type=Path, help="an SD 1.5-size single file to use instead of writing a random one")
    ap.add_argument("--child-load", type=Path, help=argparse.SUPPRESS)  # the new process of new_process_load
    args = ap.parse_args()
    from modules import devices

    dtype = torch.float16 if args.dtype == "fp16" else devices.choose_dtype("cpu", args.dtype)
    if args.child_load:
        child_load(args.child_load, dtype)
        return
    bundled = ROOT / "models" / "Stable-diffusion" / "easel-shapes.safetensors"
    compare(bundled, dtype, max(args.repeats, 5), "bundled model (easel-shapes)")
    if args.skip_sd15:
        return
    if args.file:
        compare(args.file, dtype, args.repeats, f"{args.file.name} (given file)", new_process=True)
        return
    with tempfile.TemporaryDirectory(prefix="easel-cold-load-") as tmp:
        path = write_sd15_checkpoint(Path(tmp) / "sd15-random-fp16.safetensors")
        gc.collect()
        compare(path, dtype, args.repeats, "SD 1.5-size single file (random weights, fp16)", new_process=True)


if __name__ == "__main__":
    main()
