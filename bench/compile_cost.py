"""What ``--compile`` (torch.compile of the UNet) costs on its first txt2img and gains afterwards.

For one model, side by side in one process, each configuration on fresh services with the model
already loaded (so the load is not counted):

- without ``--compile``: the first txt2img, then the median of ``--repeats`` more (steady state);
- with ``--compile`` and an empty inductor cache (a temporary ``TORCHINDUCTOR_CACHE_DIR``): the
  first txt2img (it compiles), then the steady state;
- with ``--compile`` again after ``torch._dynamo.reset()`` and fresh services, the same cache
  folder: the first txt2img of a later start (graphs from inductor's on-disk cache).

Models: ``bundled`` (easel-shapes, 64x64) or ``sd15`` (an SD 1.5-size checkpoint with random
weights written once to /tmp as a 2 GB fp16 file and deleted after; use a small ``--size``).

    python -m bench.compile_cost [--model bundled|sd15] [--size 64] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import bundled_data_dir, write_sd15_checkpoint


def _services(data: Path, compile_unet: bool):
    from modules.config import load_settings
    from modules.services import build_services

    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0, "compile_unet": compile_unet}))
    services.models.ensure_loaded(services.selected_checkpoint)
    return services


def _txt2img(services, seed: int, **fields) -> float:
    from modules.schemas import Txt2ImgRequest

    request = Txt2ImgRequest(prompt="a large red circle on the left, blue background", seed=seed,
                             save_images=False, **fields)
    t0 = time.perf_counter()
    services.submit("txt2img", request).wait()
    return time.perf_counter() - t0


def _first_and_steady(services, repeats: int, **fields) -> tuple[float, float]:
    first = _txt2img(services, 1, **fields)
    steady = statistics.median(_txt2img(services, 2 + i, **fields) for i in range(repeats))
    return first, steady


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("bundled", "sd15"), default="bundled")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.model == "bundled":
        data = bundled_data_dir()
    else:
        data = Path(tempfile.mkdtemp(prefix="easel-compile-cost-"))
        write_sd15_checkpoint(data / "models" / "Stable-diffusion" / "sd15-random.safetensors")
    cache = Path(tempfile.mkdtemp(prefix="easel-inductor-cache-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    fields = dict(steps=args.steps, width=args.size, height=args.size, cfg_scale=7, sampler_name="Euler")
    rows: list[tuple[str, float, float]] = []
    try:
        plain = _services(data, compile_unet=False)
        dtype = plain.runtime.dtype
        rows.append(("without --compile", *_first_and_steady(plain, args.repeats, **fields)))
        plain.close()
        compiled = _services(data, compile_unet=True)
        try:
            rows.append(("--compile, empty inductor cache", *_first_and_steady(compiled, args.repeats, **fields)))
        except Exception as err:  # noqa: BLE001 - report what the app says and stop
            print(f"--compile failed on this machine: {type(err).__name__}: {err}")
            return
        finally:
            compiled.close()
        torch._dynamo.reset()  # as a new process would start: only the on-disk cache is left
        again = _services(data, compile_unet=True)
        rows.append(("--compile, later start (on-disk cache)", *_first_and_steady(again, args.repeats, **fields)))
        again.close()
    finally:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    base_first, base_steady = rows[0][1], rows[0][2]
    print(f"\n{args.model} txt2img {args.size}x{args.size}, {args.steps} steps, Euler, CFG 7, {dtype}, "
          f"{torch.get_num_threads()} threads, steady state = median of {args.repeats}")
    print("| configuration | first txt2img s | extra over the plain first call | steady s/image | speed-up |")
    print("|---|---|---|---|---|")
    for name, first, steady in rows:
        print(f"| {name} | {first:.2f} | {first - base_first:+.2f} | {steady:.3f} | x{base_steady / steady:.2f} |")


if __name__ == "__main__":
    main()
