"""CPU defaults (#26 item 1): Easel's default precision vs bare diffusers fp32, and image quality.

Speed (side by side in one run, one SD 1.5-size checkpoint with random weights, written once as a
2 GB fp16 single file in /tmp and deleted after):

- bare diffusers: ``StableDiffusionPipeline.__call__`` in fp32 (SDPA attention, its Euler scheduler);
- Easel with its defaults (``precision auto``: bf16 on a CPU with native bf16, channels_last),
  through the job queue, sampler Euler;
- with ``--compile``: the same with ``torch.compile`` of the UNet, its first call (compiling) and
  a second call reported apart;
- with ``--token-merging R ...``: Easel's defaults with A1111's token merging at each ratio;
- with ``--previews``: the app's live previews (a VAE decode every 5 steps), nobody watching vs a
  client watching (the rows above have previews off);
- the VAE decode alone in fp32 and in bf16 (time, and the pixel difference).

Quality (``--adherence N``): the bundled model on N seeded random scenes (as ``bundled.evaluate``),
fp32 vs bf16 vs bf16 with an fp32 VAE (and bf16 with each token merging ratio): colour, position
and background read by the detector, and the mean pixel difference from the fp32 images.

    python -m bench.cpu_precision [--size 512] [--steps 20] [--compile] [--adherence 40] [--skip-speed]
                                  [--token-merging 0.3 0.5] [--previews]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import ROOT, write_sd15_checkpoint
from modules.config import Settings

FIELDS = ("color", "position", "background")


def _services(data: Path, **overrides):
    from modules.config import load_settings
    from modules.services import build_services

    return build_services(load_settings(data, {"show_progress_every_n_steps": 0, **overrides}))


def _txt2img(services, prompt: str, seed: int, **fields):
    from modules.schemas import Txt2ImgRequest

    request = Txt2ImgRequest(prompt=prompt, seed=seed, save_images=False, **fields)
    t0 = time.perf_counter()
    result = services.submit("txt2img", request).wait()
    return result.images[0], time.perf_counter() - t0


def _watched_txt2img(services, prompt: str, seed: int, **fields):
    """``_txt2img`` while a client watches the previews (touching the queue's preview watch each second)."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            services.queue.preview_watch.touch()
            done.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        return _txt2img(services, prompt, seed, **fields)
    finally:
        done.set()
        watcher.join()


def speed(size: int, steps: int, compile_unet: bool, merging: list[float], previews: bool = False) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="easel-cpu-precision-"))
    try:
        folder = tmp / "models" / "Stable-diffusion"
        path = write_sd15_checkpoint(folder / "sd15-random.safetensors")
        prompt, fields = "a photo of a cat", dict(steps=steps, width=size, height=size, cfg_scale=7, sampler_name="Euler")
        rows: list[tuple[str, float]] = []

        easel = _services(tmp)
        runtime = easel.runtime
        easel.models.ensure_loaded(easel.selected_checkpoint)
        _, secs = _txt2img(easel, prompt, 1, **fields)
        rows.append((f"Easel defaults ({runtime.dtype}, channels_last={runtime.channels_last})", secs))
        for ratio in merging:
            _, secs = _txt2img(easel, prompt, 1, token_merging_ratio=ratio, **fields)
            rows.append((f"Easel defaults + token merging {ratio}", secs))
        if previews:  # the app's default: a preview (a full VAE decode) every 5 steps while a client watches
            every = Settings.model_fields["show_progress_every_n_steps"].default
            easel.update_settings(easel.settings.model_copy(update={"show_progress_every_n_steps": every}))
            _, secs = _txt2img(easel, prompt, 1, **fields)
            rows.append((f"Easel defaults, previews every {every} steps, nobody watching", secs))
            _, secs = _watched_txt2img(easel, prompt, 1, **fields)
            rows.append((f"Easel defaults, previews every {every} steps, a client watching", secs))
            easel.update_settings(easel.settings.model_copy(update={"show_progress_every_n_steps": 0}))
        with easel.models.use(easel.selected_checkpoint) as model:
            vae = model.pipe.vae
            latents = torch.randn(1, 4, size // 8, size // 8)
            decoded = {}
            for dtype in (torch.float32, torch.bfloat16):
                vae.to(dtype)
                with torch.no_grad():
                    t0 = time.perf_counter()
                    decoded[dtype] = vae.decode(latents.to(dtype)).sample.float()
                    rows.append((f"  VAE decode alone, {dtype}", time.perf_counter() - t0))
            vae.to(runtime.vae_dtype or runtime.dtype)
        vae_diff = float((decoded[torch.bfloat16] - decoded[torch.float32]).abs().mean() * 127.5)
        easel.close()

        from diffusers import StableDiffusionPipeline

        from modules.checkpoints import CheckpointInfo
        from modules.model_loading import load_checkpoint

        bare = load_checkpoint(CheckpointInfo(path.name, path, "single", None), None, torch.float32).pipe
        assert isinstance(bare, StableDiffusionPipeline)
        bare.set_progress_bar_config(disable=True)
        t0 = time.perf_counter()
        bare(prompt, num_inference_steps=steps, width=size, height=size, guidance_scale=7,
             generator=torch.Generator().manual_seed(1))
        base = time.perf_counter() - t0
        rows.insert(0, ("bare diffusers fp32", base))
        del bare

        if compile_unet:
            compiled = _services(tmp, compile_unet=True)
            _, first = _txt2img(compiled, prompt, 1, **fields)
            _, second = _txt2img(compiled, prompt, 2, **fields)
            rows += [("Easel defaults + --compile, first call (compiles)", first),
                     ("Easel defaults + --compile, second call", second)]
            compiled.close()

        print(f"\nSD 1.5-size txt2img {size}x{size}, {steps} steps, CFG (batch 2), {torch.get_num_threads()} threads")
        print("| configuration | seconds | speed-up vs bare fp32 |\n|---|---|---|")
        for name, secs in rows:
            ratio = "" if name.startswith("  VAE") else f"x{base / secs:.2f}"
            print(f"| {name.strip()} | {secs:.2f} | {ratio} |")
        print(f"VAE decode bf16 vs fp32 (random weights): mean pixel difference {vae_diff:.2f} of 255")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def adherence(n: int, merging: list[float], seed: int = 0) -> None:
    from bundled.detect import detect
    from bundled.evaluate import random_scenes
    from bundled.shapes import SIDE

    bundled = ROOT / "models" / "Stable-diffusion" / "easel-shapes.safetensors"
    data = Path(tempfile.mkdtemp(prefix="easel-adherence-"))
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for src in (bundled, bundled.with_suffix(".yaml")):
        shutil.copy(src, folder / src.name)
    scenes = random_scenes(n, seed, 0)
    configs = {"fp32": dict(precision="fp32"), "bf16": dict(precision="bf16"),
               "bf16, VAE fp32": dict(precision="bf16", vae_precision="fp32")}
    configs.update({f"bf16, token merging {ratio}": dict(precision="bf16", token_merging_ratio=ratio) for ratio in merging})
    fields = dict(steps=20, cfg_scale=6, sampler_name="Euler a", width=SIDE, height=SIDE)
    images: dict[str, list[np.ndarray]] = {}
    scores: dict[str, dict[str, int]] = {}
    times: dict[str, float] = {}
    try:
        for name, overrides in configs.items():
            services = _services(data, **overrides)
            _txt2img(services, "warm-up", 0, **fields)
            out, hits, total = [], dict.fromkeys(FIELDS, 0), 0.0
            for i, scene in enumerate(scenes):
                image, secs = _txt2img(services, scene.caption(), seed + i, **fields)
                total += secs
                found = detect(image)
                for f in FIELDS:
                    hits[f] += getattr(found, f) == getattr(scene, f)
                out.append(np.asarray(image, dtype=np.float32))
                if (i + 1) % 10 == 0:
                    print(f"  {name}: {i + 1}/{n} images", file=sys.stderr, flush=True)
            services.close()
            images[name], scores[name], times[name] = out, hits, total / n
    finally:
        shutil.rmtree(data, ignore_errors=True)
    print(f"\nBundled model, {n} random scenes, 20 steps, Euler a, CFG 6 (points = % of scenes right)")
    print("| precision | " + " | ".join(FIELDS) + " | mean pixel diff vs fp32 | s/image |")
    print("|---|" + "---|" * (len(FIELDS) + 2))
    for name in configs:
        cells = [f"{100 * scores[name][f] / n:.1f} ({100 * (scores[name][f] - scores['fp32'][f]) / n:+.1f})"
                 for f in FIELDS]
        diff = float(np.mean([np.abs(a - b).mean() for a, b in zip(images[name], images["fp32"], strict=True)]))
        print(f"| {name} | " + " | ".join(cells) + f" | {diff:.2f} | {times[name]:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the UNet")
    ap.add_argument("--adherence", type=int, default=40, metavar="N", help="bundled-model scenes (0: skip)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--previews", action="store_true",
                    help="also time the app's live previews (every 5 steps) with and without a client watching")
    ap.add_argument("--token-merging", type=float, nargs="*", default=[], metavar="RATIO",
                    help="also time / score Easel's defaults with these token merging ratios (A1111's option)")
    args = ap.parse_args()
    from modules import devices

    print(f"native bf16 on this CPU: {sorted(devices.cpu_bf16_flags()) or 'no'}; "
          f"precision auto -> {devices.choose_dtype('cpu')}")
    if args.adherence:
        adherence(args.adherence, args.token_merging)
    if not args.skip_speed:
        speed(args.size, args.steps, args.compile, args.token_merging, args.previews)


if __name__ == "__main__":
    main()
