"""Samplers on the bundled model: adherence, speed per step, and few-step LCM.

1. For every A1111 sampler with its own schedule (Automatic), 20 prompts (colour x position x
   background, fixed seeds): how often the detector (``bundled/detect.py``) reads back the asked
   colour and position.
2. Seconds per sampling step of Easel's sampler layer (Euler a) against diffusers' own
   ``EulerAncestralDiscreteScheduler`` driving the same UNet through the same core loop shape
   (the previous implementation), interleaved; and the model calls per step of each sampler.
3. Few steps: LCM at 4 steps against Euler a at 20 (time and adherence).

    python -m bench.samplers [--prompts 20] [--repeats 5] [--only "Euler a,DPM++ 2M"]
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import bundled_data_dir

COLORS = ("red", "yellow", "blue", "green", "white", "orange", "purple", "black")
POSITIONS = ("left", "right", "top", "bottom", "center")
PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
           "center": "in the center"}
SHAPES = ("circle", "square", "triangle", "star")


def cases(n: int) -> list[tuple[str, str, str, str]]:
    """n (colour, shape, position, background) cases, every colour and position in turn."""
    out = []
    for i in range(n):
        color, position, shape = COLORS[i % len(COLORS)], POSITIONS[i % len(POSITIONS)], SHAPES[i % len(SHAPES)]
        background = COLORS[(i + 3) % len(COLORS)]
        out.append((color, shape, position, background))
    return out


def caption(color: str, shape: str, position: str, background: str) -> str:
    return f"a large {color} {shape} {PHRASES[position]}, {background} background"


def adherence(services, sampler: str, n: int, steps: int = 20, schedule: str = "Automatic",
              eta: float | None = None) -> tuple[int, int, float]:
    """(colour hits, position hits, seconds) over n prompts."""
    from bundled.detect import detect
    from modules.schemas import Txt2ImgRequest

    color_hits = position_hits = 0
    start = time.perf_counter()
    for i, (color, shape, position, background) in enumerate(cases(n)):
        req = Txt2ImgRequest(prompt=caption(color, shape, position, background), seed=5000 + i, steps=steps,
                             cfg_scale=6, sampler_name=sampler, scheduler=schedule, eta=eta, save_images=False)
        found = detect(services.submit("txt2img", req).wait(600).images[0])
        color_hits += found.color == color
        position_hits += found.position == position
    return color_hits, position_hits, time.perf_counter() - start


def layer_overhead(services, steps: int, repeats: int) -> tuple[float, float]:
    """Median seconds of one 64x64 Euler a run: Easel's sampler layer vs a diffusers scheduler loop."""
    from diffusers import EulerAncestralDiscreteScheduler

    from modules import prompts, samplers, seeds
    from modules.processing import sampling
    from modules.samplers.schedules import ModelSigmas

    with services.models.use(services.selected_checkpoint) as model:
        pipe = model.pipe
        cond, uncond = prompts.encode_prompt_pair(pipe.tokenizer, pipe.text_encoder, "a large red circle", "")
        noise = seeds.create_noise((4, 8, 8), [1])
        model_sigmas = ModelSigmas.from_config(pipe.scheduler.config)

        def easel():
            run = samplers.prepare("Euler a", "Uniform", model_sigmas, steps, [1])
            sampling.sample(sampling.SamplingInput(
                unet=pipe.unet, sampler=run, model_sigmas=model_sigmas, device=torch.device("cpu"),
                conditioning=sampling.Conditioning.fixed(cond, uncond), noise=noise, steps=steps, cfg_scale=6.0))

        @torch.no_grad()
        def diffusers_loop():
            scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
            scheduler.set_timesteps(steps)
            latents = noise * scheduler.init_noise_sigma
            embeds = torch.cat([uncond, cond])
            generator = torch.Generator().manual_seed(1)
            for t in scheduler.timesteps:
                out = pipe.unet(torch.cat([scheduler.scale_model_input(latents, t)] * 2), t,
                                encoder_hidden_states=embeds).sample
                u, c = out.chunk(2)
                latents = scheduler.step(u + 6.0 * (c - u), t, latents, generator=generator).prev_sample

        times: dict[str, list[float]] = {"easel": [], "diffusers": []}
        easel()
        diffusers_loop()
        for _ in range(repeats):
            for name, fn in (("easel", easel), ("diffusers", diffusers_loop)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return med(times["easel"]), med(times["diffusers"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated sampler names (default: all)")
    args = ap.parse_args()

    from modules import samplers
    from modules.config import load_settings
    from modules.services import build_services

    services = build_services(load_settings(bundled_data_dir(), {"show_progress_every_n_steps": 0}))
    try:
        easel, bare = layer_overhead(services, 20, args.repeats)
        print(f"Euler a, 20 steps, 64x64, CFG 6, {torch.get_num_threads()} threads, median of {args.repeats}")
        print(f"  diffusers scheduler loop : {bare:.3f} s")
        print(f"  Easel sampler layer      : {easel:.3f} s   ratio {easel / bare:.3f}")
        names = [n.strip() for n in args.only.split(",") if n.strip()] or list(samplers.SAMPLER_NAMES)
        print(f"\nadherence over {args.prompts} prompts, 20 steps, each sampler's own schedule")
        print("| sampler | schedule | colour | position | s/image |")
        print("|---|---|---|---|---|")
        for name in names:
            color, position, seconds = adherence(services, name, args.prompts)
            print(f"| {name} | {samplers.effective_schedule_type(name)} | {color}/{args.prompts} | "
                  f"{position}/{args.prompts} | {seconds / args.prompts:.2f} |", flush=True)
        lcm = adherence(services, "LCM", args.prompts, steps=4)
        euler_a = adherence(services, "Euler a", args.prompts, steps=20)
        print(f"\nfew steps: LCM 4 steps {lcm[2] / args.prompts:.2f} s/image (colour {lcm[0]}, position {lcm[1]}) vs "
              f"Euler a 20 steps {euler_a[2] / args.prompts:.2f} s/image (colour {euler_a[0]}, position {euler_a[1]}):"
              f" {euler_a[2] / lcm[2]:.1f}x faster")
    finally:
        services.close()


if __name__ == "__main__":
    main()
