"""Batched queue (#26 item 5): images/s for a queue of 4 waiting txt2img jobs, batched vs one at a time.

The bundled model, 64x64, 20 steps, CFG 7, the default sampler; four jobs with different prompts and
seeds wait behind a lead job (so the queue really holds 4 when the worker takes the next one). The
time is from the lead's end to the last of the four's end. Each round runs the queue with the
setting ``batch_queue_jobs`` off and on, back to back (order alternating), so a changing machine load
hits both alike; the table gives the best round of each (the least disturbed), and the median of
the rounds' own ratios is printed too.
The images of the same jobs batched and alone are compared too (largest pixel difference).

    python -m bench.queue_batch [--repeats 5] [--depth 4] [--steps 20]
"""

from __future__ import annotations

import argparse
import shutil
import statistics

import numpy as np

from bench.common import bundled_data_dir

PROMPTS = ("a large red circle on the left, blue background", "a small green square in the middle, white background",
           "a large yellow star on the right, black background", "a small blue triangle at the top, red background")


def _round(services, batched: bool, depth: int, steps: int) -> tuple[float, list]:
    """Seconds to serve ``depth`` waiting jobs, and their images."""
    from modules.schemas import Txt2ImgRequest

    services.update_settings(services.settings.model_copy(update={"batch_queue_jobs": batched,
                                                                  "batch_queue_max": max(depth, 1)}))
    lead = services.submit("txt2img", Txt2ImgRequest(prompt="lead", seed=0, steps=steps + 1, width=64, height=64,
                                                     save_images=False))
    jobs = [services.submit("txt2img", Txt2ImgRequest(prompt=PROMPTS[i % len(PROMPTS)], seed=100 + i, subseed=1,
                                                      steps=steps, cfg_scale=7, width=64, height=64,
                                                      save_images=False))
            for i in range(depth)]
    lead.wait()
    results = [job.wait() for job in jobs]
    if not lead.finished <= min(job.started for job in jobs):
        raise RuntimeError("a job started before the lead ended: the queue did not hold them all")
    return max(job.finished for job in jobs) - lead.finished, [image for r in results for image in r.images]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    import torch

    from modules.config import load_settings
    from modules.services import build_services

    data = bundled_data_dir()
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0}))
    try:
        _round(services, False, 1, args.steps)  # warm-up: load, first calls
        _round(services, True, 2, args.steps)
        times: dict[bool, list[float]] = {False: [], True: []}
        images: dict[bool, list] = {}
        for r in range(args.repeats):
            for batched in ((False, True) if r % 2 == 0 else (True, False)):
                secs, made = _round(services, batched, args.depth, args.steps)
                times[batched].append(secs)
                images.setdefault(batched, made)
        dtype, threads = services.runtime.dtype, torch.get_num_threads()
    finally:
        services.close()
        shutil.rmtree(data, ignore_errors=True)
    diffs = [np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
             for a, b in zip(images[True], images[False], strict=True)]
    off, on = min(times[False]), min(times[True])
    ratios = [a / b for a, b in zip(times[False], times[True], strict=True)]
    print(f"\nbundled model, queue depth {args.depth}, 64x64, {args.steps} steps, CFG 7, default sampler, {dtype}, "
          f"{threads} threads, best of {args.repeats} rounds, each running both back to back")
    print("| queue | seconds for the queue | images/s |\n|---|---|---|")
    print(f"| one at a time | {off:.2f} | {args.depth / off:.2f} |")
    print(f"| batched (batch_queue_jobs) | {on:.2f} | {args.depth / on:.2f} (x{off / on:.2f}) |")
    print(f"median of the rounds' own ratios: x{statistics.median(ratios):.2f}")
    print(f"rounds off: {', '.join(f'{t:.2f}' for t in times[False])}; on: {', '.join(f'{t:.2f}' for t in times[True])}")
    print(f"same jobs batched vs alone: largest pixel difference {max(int(d.max()) for d in diffs)} of 255, "
          f"mean {float(np.mean([d.mean() for d in diffs])):.4f}")


if __name__ == "__main__":
    main()
