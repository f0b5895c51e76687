"""Measure a shapes-world model with the detector and print a Markdown table.

Three evaluations, each on seeded random scenes with a fixed seed per prompt:

- **txt2img** (``--n``): generate from the canonical caption and check what the detector reads
  back: colour, position, background, shape, size, and all of them at once.
- **img2img** (``--img2img``): render a scene and ask, at strength 0.75, for the same scene with
  another shape colour; success is the new colour (the kept shape and position are reported too).
- **inpaint** (``--inpaint``): render a scene, mask the shape's dilated bounding box and ask for
  another shape in another colour at the same place (latent-blend inpainting with the plain
  4-channel UNet); success is the new colour, the new shape is reported on its own row.

    python -m bundled.evaluate --state runs/shapes/state.pt --n 200 --steps 20 --cfg 6 --seed 0
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

from bundled.architecture import SCHEDULER_CONFIG, build_models
from bundled.detect import Detection, detect
from bundled.shapes import PALETTE, SHAPES, SIDE, SIZES, Scene, random_scene, render

EDIT_STRENGTH = 0.75
MASK_MARGIN = 4  # pixels added around the shape's bounding box for the inpaint mask


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    evaluation: str
    metric: str
    hits: int
    n: int

    @property
    def accuracy(self) -> float:
        return self.hits / self.n if self.n else 0.0


def make_scheduler():
    """Euler ancestral on the training schedule (the config keys it does not take are dropped)."""
    from diffusers import EulerAncestralDiscreteScheduler

    accepted = inspect.signature(EulerAncestralDiscreteScheduler.__init__).parameters
    return EulerAncestralDiscreteScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k in accepted})


def load_pipeline_from_state(state_path: str | Path, device: str = "cpu"):
    """A ``StableDiffusionPipeline`` from a training state's VAE and EMA UNet / text encoder."""
    from diffusers import StableDiffusionPipeline

    from bundled.train import load_tokenizer

    st = torch.load(Path(state_path), map_location="cpu", weights_only=True)
    if st.get("scaling") is None:
        raise ValueError(
            f"{state_path} holds no latent scaling yet (VAE phase at step {st.get('vae_done')}); "
            "evaluate a state saved after the VAE phase has finished"
        )
    vae, unet, text_encoder = build_models()
    vae.load_state_dict(st["vae"])
    unet.load_state_dict(st["ema_unet"])
    text_encoder.load_state_dict(st["ema_text"])
    vae.register_to_config(scaling_factor=float(st["scaling"]))
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=load_tokenizer(),
        unet=unet.eval(),
        scheduler=make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def state_step(state_path: str | Path) -> int:
    """The UNet training step a state was saved at."""
    return int(torch.load(Path(state_path), map_location="cpu", weights_only=True)["step"])


def random_scenes(n: int, seed: int, stream: int) -> list[Scene]:
    """``n`` random scenes from ``default_rng([seed, stream])``: one stream per evaluation."""
    rng = np.random.default_rng([seed, stream])
    return [random_scene(rng) for _ in range(n)]


def other_color(scene: Scene, rng: np.random.Generator) -> str:
    """A palette colour that is neither the shape's nor the background's."""
    return str(rng.choice([c for c in PALETTE if c not in (scene.color, scene.background)]))


def other_shape(scene: Scene, rng: np.random.Generator) -> str:
    return str(rng.choice([s for s in SHAPES if s != scene.shape]))


def shape_mask(scene: Scene, margin: int = MASK_MARGIN, side: int = SIDE) -> Image.Image:
    """White over the shape's bounding box grown by ``margin`` pixels, black elsewhere."""
    r = SIZES[scene.size] * side + margin
    cx, cy = scene.cx * side, scene.cy * side
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).rectangle([cx - r, cy - r, cx + r, cy + r], fill=255)
    return mask


def generate(
    call: Callable[..., object],
    prompts: list[str],
    seed: int,
    batch: int,
    label: str,
    per_item: dict[str, list] | None = None,
    **kwargs,
) -> list[Image.Image]:
    """Run ``call`` over the prompts in batches, item ``i`` seeded with ``seed + i``; print progress."""
    images: list[Image.Image] = []
    start = time.time()
    for lo in range(0, len(prompts), batch):
        hi = min(lo + batch, len(prompts))
        gens = [torch.Generator().manual_seed(seed + i) for i in range(lo, hi)]
        extra = {k: v[lo:hi] for k, v in (per_item or {}).items()}
        out = call(prompt=prompts[lo:hi], negative_prompt=[""] * (hi - lo), generator=gens, **extra, **kwargs)
        images.extend(out.images)
        print(f"  {label}: {hi}/{len(prompts)} images, {time.time() - start:.1f}s", file=sys.stderr, flush=True)
    return images


def count(evaluation: str, metric: str, hits: list[bool]) -> Row:
    return Row(evaluation, metric, int(sum(hits)), len(hits))


def evaluate_txt2img(pipe, n: int, steps: int, cfg: float, seed: int, batch: int) -> tuple[list[Row], list[Image.Image]]:
    """Generate each scene from its canonical caption and check the detector's reading."""
    scenes = random_scenes(n, seed, 0)
    images = generate(
        pipe, [s.caption() for s in scenes], seed, batch, "txt2img",
        num_inference_steps=steps, guidance_scale=cfg, height=SIDE, width=SIDE,
    )
    found = [detect(img) for img in images]
    rows = [count("txt2img", f, [getattr(d, f) == getattr(s, f) for d, s in zip(found, scenes)])
            for f in ("color", "position", "background", "shape", "size")]
    four = ("color", "position", "background", "shape")
    rows.append(count("txt2img", "all four (no size)", [all(getattr(d, f) == getattr(s, f) for f in four)
                                                        for d, s in zip(found, scenes)]))
    rows.append(count("txt2img", "all five", [all(getattr(d, f) == getattr(s, f) for f in four + ("size",))
                                              for d, s in zip(found, scenes)]))
    return rows, images


def evaluate_img2img(pipe, n: int, steps: int, cfg: float, seed: int, batch: int) -> tuple[list[Row], list[Image.Image]]:
    """Recolour a rendered scene's shape at strength 0.75; success is the new colour."""
    from diffusers import StableDiffusionImg2ImgPipeline

    img2img = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    rng = np.random.default_rng([seed, 11])
    scenes = random_scenes(n, seed, 1)
    targets = [replace(s, color=other_color(s, rng)) for s in scenes]
    images = generate(
        img2img, [t.caption() for t in targets], seed, batch, "img2img",
        per_item={"image": [render(s) for s in scenes]},
        strength=EDIT_STRENGTH, num_inference_steps=steps, guidance_scale=cfg,
    )
    found = [detect(img) for img in images]
    rows = [
        count("img2img", "new color", [d.color == t.color for d, t in zip(found, targets)]),
        count("img2img", "kept shape", [d.shape == t.shape for d, t in zip(found, targets)]),
        count("img2img", "kept position", [d.position == t.position for d, t in zip(found, targets)]),
        count("img2img", "kept background", [d.background == t.background for d, t in zip(found, targets)]),
    ]
    return rows, images


def evaluate_inpaint(pipe, n: int, steps: int, cfg: float, seed: int, batch: int) -> tuple[list[Row], list[Image.Image]]:
    """Repaint the masked shape as another shape in another colour; success is the new colour."""
    from diffusers import StableDiffusionInpaintPipeline

    inpaint = StableDiffusionInpaintPipeline(**pipe.components, requires_safety_checker=False)
    inpaint.set_progress_bar_config(disable=True)
    rng = np.random.default_rng([seed, 12])
    scenes = random_scenes(n, seed, 2)
    targets = [replace(s, color=other_color(s, rng), shape=other_shape(s, rng)) for s in scenes]
    images = generate(
        inpaint, [t.caption() for t in targets], seed, batch, "inpaint",
        per_item={"image": [render(s) for s in scenes], "mask_image": [shape_mask(s) for s in scenes]},
        num_inference_steps=steps, guidance_scale=cfg, height=SIDE, width=SIDE,
    )
    found: list[Detection] = [detect(img) for img in images]
    rows = [
        count("inpaint", "new color", [d.color == t.color for d, t in zip(found, targets)]),
        count("inpaint", "new shape", [d.shape == t.shape for d, t in zip(found, targets)]),
        count("inpaint", "kept background", [d.background == t.background for d, t in zip(found, targets)]),
    ]
    return rows, images


def format_table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| evaluation | metric | accuracy | hits / n |", "|---|---|---:|---:|"]
    lines += [f"| {r.evaluation} | {r.metric} | {r.accuracy:.1%} | {r.hits} / {r.n} |" for r in rows]
    return "\n".join(lines)


def save_grid(images: list[Image.Image], path: Path, columns: int = 10) -> None:
    """Save the images side by side, ``columns`` per row."""
    if not images:
        return
    columns = min(columns, len(images))
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * w, rows * h), (0, 0, 0))
    for i, img in enumerate(images):
        grid.paste(img, ((i % columns) * w, (i // columns) * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, default=Path("runs/shapes/state.pt"), help="training state.pt")
    ap.add_argument("--n", type=int, default=200, help="txt2img prompts (0 skips txt2img)")
    ap.add_argument("--img2img", type=int, default=50, metavar="N", help="img2img edits (0 skips)")
    ap.add_argument("--inpaint", type=int, default=50, metavar="N", help="inpaint edits (0 skips)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=20, help="prompts per pipeline call")
    ap.add_argument("--limit-threads", type=int, default=0, metavar="N", help="torch.set_num_threads(N)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--save-grids", type=Path, default=None, metavar="DIR", help="write one image grid per evaluation")
    args = ap.parse_args(argv)
    for name in ("n", "img2img", "inpaint"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.steps < 1 or args.batch < 1:
        ap.error("--steps and --batch must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.limit_threads:
        torch.set_num_threads(args.limit_threads)
    start = time.time()
    pipe = load_pipeline_from_state(args.state, args.device)
    step = state_step(args.state)
    print(f"loaded {args.state} (UNet step {step}) in {time.time() - start:.1f}s", file=sys.stderr, flush=True)
    evaluations = (("txt2img", args.n, evaluate_txt2img), ("img2img", args.img2img, evaluate_img2img),
                   ("inpaint", args.inpaint, evaluate_inpaint))
    rows: list[Row] = []
    timings: list[str] = []
    with torch.inference_mode():
        for name, n, run in evaluations:
            if n == 0:
                continue
            t0 = time.time()
            new_rows, images = run(pipe, n, args.steps, args.cfg, args.seed, args.batch)
            rows += new_rows
            timings.append(f"{name}: {n} images in {time.time() - t0:.1f}s")
            if args.save_grids is not None:
                save_grid(images, args.save_grids / f"{name}.png")
    print(format_table(rows))
    print()
    print(f"{args.state}: UNet step {step}; sampling steps {args.steps}, cfg {args.cfg}, seed {args.seed}; " + "; ".join(timings)
          + f"; total {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
