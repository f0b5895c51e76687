"""App overhead: Easel's txt2img (through the job queue and Easel's own sampling core,
``modules.processing.sampling``) vs a bare diffusers ``StableDiffusionPipeline`` call.

Same components, prompt, sampler, steps, size and seed; runs are interleaved so both see the
same machine load. Prints the median seconds of each and their ratio (target: at most 1.03), and
the cost of a scheduled prompt (``[red:blue:0.5]``: one more text to encode, the batch's text
conditioning rebuilt once) against the plain one. Wall time and process CPU time are both reported:
on a shared machine the CPU time (all threads of this process, the job worker included) is the
steadier measure of the work each path does; with ``--threads 1`` it is close to the work itself.

    python -m bench.overhead [--steps 20] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import bench_data_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from modules.config import load_settings
    from modules.schemas import Txt2ImgRequest
    from modules.services import build_services

    data = bench_data_dir()
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0}))
    request = Txt2ImgRequest(prompt="a large red circle on the left, blue background", seed=42,
                             steps=args.steps, sampler_name="Euler a", cfg_scale=7, save_images=False)
    core = lambda: services.submit("txt2img", request).wait()  # noqa: E731
    core_saving = lambda: services.submit("txt2img", request.model_copy(update={"save_images": True})).wait()  # noqa: E731
    scheduled_request = request.model_copy(update={"prompt": "a large [red:blue:0.5] circle on the left, blue background"})
    core_scheduled = lambda: services.submit("txt2img", scheduled_request).wait()  # noqa: E731
    core()  # load the model and warm up
    with services.models.use(services.selected_checkpoint) as model:
        pipe = model.pipe
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    bare_pipe = StableDiffusionPipeline(**{**pipe.components, "scheduler": scheduler}, requires_safety_checker=False)
    bare_pipe.set_progress_bar_config(disable=True)

    def bare():
        g = torch.Generator("cpu").manual_seed(42)
        bare_pipe(request.prompt, num_inference_steps=args.steps, guidance_scale=7, width=64, height=64,
                  generator=g, output_type="pil")

    bare()
    runs = {"bare": bare, "core": core, "save": core_saving, "sched": core_scheduled}
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    services.close()
    print(f"64x64, {args.steps} steps, Euler a, CFG 7, {torch.get_num_threads()} threads, median of {args.repeats}")
    for label, times in (("wall", wall), ("CPU", cpu)):
        b, c, s, sc = (statistics.median(times[name]) for name in runs)
        print(f"[{label} time] bare diffusers pipeline : {b:.3f} s")
        print(f"[{label} time] easel txt2img (no save) : {c:.3f} s   ratio {c / b:.3f}")
        print(f"[{label} time] easel txt2img (+ PNG)   : {s:.3f} s   ratio {s / b:.3f}")
        print(f"[{label} time] scheduled prompt        : {sc:.3f} s   ratio {sc / c:.3f} against the plain prompt")


if __name__ == "__main__":
    main()
