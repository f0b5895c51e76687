"""Measure a shapes-world model with the detector and print a Markdown table.

Everything runs through Easel's own core (the job queue, ``modules.processing``), on a
single-file checkpoint loaded by the same code path as a user's download. Three evaluations,
each on seeded random scenes with a fixed seed per prompt:

- **txt2img** (``--n``): generate from the canonical caption and check what the detector reads
  back: colour, position, background, shape, size, and all of them at once.
- **img2img** (``--img2img``): render a scene and ask, at strength 0.75, for the same scene with
  another shape colour; success is the new colour (the kept shape and position are reported too).
- **inpaint** (``--inpaint``): render a scene, mask the shape's dilated bounding box and ask for
  another shape in another colour at the same place (latent blending with the plain 4-channel
  UNet); success is the new colour, the new shape is reported on its own row.
- **controlnet** (``--control`` with ``--controlnet FILE``): a canny unit on a rendered scene A,
  with a prompt for scene B (other colours). Half the prompts name A's position (Balanced), half
  another position ("ControlNet is more important"). The shape's position and outline must follow
  the map (A), its colour and the background the prompt (B).

    python -m bundled.evaluate --checkpoint models/Stable-diffusion/easel-shapes.safetensors --n 200
    python -m bundled.evaluate --state runs/shapes/state.pt --n 200     # exports the state first
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from bundled.detect import Detection, detect
from bundled.shapes import PALETTE, POSITIONS, SHAPES, SIDE, SIZES, Scene, random_scene, render

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


class Runner:
    """Generation through Easel's services, on one checkpoint in a temporary data folder."""

    def __init__(self, checkpoint: Path, steps: int, cfg: float, sampler: str, controlnet: Path | None = None):
        from modules.config import load_settings
        from modules.services import build_services

        self.data = Path(tempfile.mkdtemp(prefix="easel-eval-"))
        folder = self.data / "models" / "Stable-diffusion"
        folder.mkdir(parents=True)
        for src in (checkpoint, checkpoint.with_suffix(".yaml")):
            if src.exists():
                (folder / src.name).symlink_to(src.resolve())
        if controlnet is not None:
            cn_folder = self.data / "models" / "ControlNet"
            cn_folder.mkdir(parents=True)
            for src in (controlnet, controlnet.with_suffix(".yaml")):
                if src.exists():
                    (cn_folder / src.name).symlink_to(src.resolve())
        self.services = build_services(load_settings(self.data, {"show_progress_every_n_steps": 0}))
        self.common = dict(steps=steps, cfg_scale=cfg, sampler_name=sampler, save_images=False, width=SIDE, height=SIDE)

    def txt2img(self, prompt: str, seed: int, units: list[dict] | None = None) -> Image.Image:
        from modules.schemas import Txt2ImgRequest

        req = Txt2ImgRequest(prompt=prompt, seed=seed, controlnet_units=units or [], **self.common)
        return self.services.submit("txt2img", req).wait().images[0]

    def img2img(self, image: Image.Image, prompt: str, seed: int, strength: float,
                mask: Image.Image | None = None) -> Image.Image:
        from modules.schemas import Img2ImgRequest

        req = Img2ImgRequest(prompt=prompt, seed=seed, init_images=[image], denoising_strength=strength, mask=mask,
                             mask_blur=2, inpainting_fill=1, inpaint_full_res=False, **self.common)
        return self.services.submit("img2img", req).wait().images[0]

    def close(self) -> None:
        self.services.close()
        shutil.rmtree(self.data, ignore_errors=True)


def progress(label: str, i: int, n: int, start: float) -> None:
    if (i + 1) % 20 == 0 or i + 1 == n:
        print(f"  {label}: {i + 1}/{n} images, {time.time() - start:.1f}s", file=sys.stderr, flush=True)


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


def count(evaluation: str, metric: str, hits: list[bool]) -> Row:
    return Row(evaluation, metric, int(sum(hits)), len(hits))


def evaluate_txt2img(runner: Runner, n: int, seed: int) -> tuple[list[Row], list[Image.Image]]:
    """Generate each scene from its canonical caption and check the detector's reading."""
    scenes = random_scenes(n, seed, 0)
    images, start = [], time.time()
    for i, s in enumerate(scenes):
        images.append(runner.txt2img(s.caption(), seed + i))
        progress("txt2img", i, n, start)
    found = [detect(img) for img in images]
    rows = [count("txt2img", f, [getattr(d, f) == getattr(s, f) for d, s in zip(found, scenes, strict=True)])
            for f in ("color", "position", "background", "shape", "size")]
    four = ("color", "position", "background", "shape")
    rows.append(count("txt2img", "all four (no size)", [all(getattr(d, f) == getattr(s, f) for f in four)
                                                        for d, s in zip(found, scenes, strict=True)]))
    rows.append(count("txt2img", "all five", [all(getattr(d, f) == getattr(s, f) for f in (*four, "size"))
                                              for d, s in zip(found, scenes, strict=True)]))
    return rows, images


def evaluate_img2img(runner: Runner, n: int, seed: int) -> tuple[list[Row], list[Image.Image]]:
    """Recolour a rendered scene's shape at strength 0.75; success is the new colour."""
    rng = np.random.default_rng([seed, 11])
    scenes = random_scenes(n, seed, 1)
    targets = [replace(s, color=other_color(s, rng)) for s in scenes]
    images, start = [], time.time()
    for i, (s, t) in enumerate(zip(scenes, targets, strict=True)):
        images.append(runner.img2img(render(s), t.caption(), seed + i, EDIT_STRENGTH))
        progress("img2img", i, n, start)
    found = [detect(img) for img in images]
    pairs = list(zip(found, targets, strict=True))
    rows = [
        count("img2img", "new color", [d.color == t.color for d, t in pairs]),
        count("img2img", "kept shape", [d.shape == t.shape for d, t in pairs]),
        count("img2img", "kept position", [d.position == t.position for d, t in pairs]),
        count("img2img", "kept background", [d.background == t.background for d, t in pairs]),
    ]
    return rows, images


def evaluate_inpaint(runner: Runner, n: int, seed: int, strength: float) -> tuple[list[Row], list[Image.Image]]:
    """Repaint the masked shape as another shape in another colour; success is the new colour."""
    rng = np.random.default_rng([seed, 12])
    scenes = random_scenes(n, seed, 2)
    targets = [replace(s, color=other_color(s, rng), shape=other_shape(s, rng)) for s in scenes]
    images, start = [], time.time()
    for i, (s, t) in enumerate(zip(scenes, targets, strict=True)):
        images.append(runner.img2img(render(s), t.caption(), seed + i, strength, mask=shape_mask(s)))
        progress("inpaint", i, n, start)
    found: list[Detection] = [detect(img) for img in images]
    pairs = list(zip(found, targets, strict=True))
    rows = [
        count("inpaint", "new color", [d.color == t.color for d, t in pairs]),
        count("inpaint", "new shape", [d.shape == t.shape for d, t in pairs]),
        count("inpaint", "kept background", [d.background == t.background for d, t in pairs]),
    ]
    return rows, images


def evaluate_controlnet(runner: Runner, n: int, seed: int, model: str) -> tuple[list[Row], list[Image.Image]]:
    """Canny map of scene A, prompt of scene B; position/shape from A, colours from B."""
    rng = np.random.default_rng([seed, 13])
    maps, prompts_for = random_scenes(n, seed, 3), random_scenes(n, seed, 4)
    images, start, moved = [], time.time(), []
    for i, (a, b) in enumerate(zip(maps, prompts_for, strict=True)):
        other = i % 2 == 1
        position = str(rng.choice([p for p in POSITIONS if p != a.position])) if other else a.position
        target = replace(b, shape=a.shape, size=a.size, position=position)
        unit = dict(module="canny", model=model, image=render(a), processor_res=SIDE, resize_mode=0,
                    control_mode=2 if other else 0)
        images.append(runner.txt2img(target.caption(), seed + i, [unit]))
        moved.append(other)
        progress("controlnet", i, n, start)
    found = [detect(img) for img in images]
    rows = []
    for label, keep in (("prompt names the map's position, Balanced", False),
                        ("prompt names another position, ControlNet is more important", True)):
        idx = [i for i in range(n) if moved[i] == keep]
        rows.append(count("controlnet", f"position = map ({label})", [found[i].position == maps[i].position for i in idx]))
        rows.append(count("controlnet", f"shape = map ({label})", [found[i].shape == maps[i].shape for i in idx]))
        rows.append(count("controlnet", f"colour = prompt ({label})", [found[i].color == prompts_for[i].color for i in idx]))
        rows.append(count("controlnet", f"background = prompt ({label})",
                          [found[i].background == prompts_for[i].background for i in idx]))
    rows.append(count("controlnet", "position and shape = map (all)",
                      [found[i].position == maps[i].position and found[i].shape == maps[i].shape for i in range(n)]))
    rows.append(count("controlnet", "colour and background = prompt (all)",
                      [found[i].color == prompts_for[i].color and found[i].background == prompts_for[i].background
                       for i in range(n)]))
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
    ap.add_argument("--checkpoint", type=Path, default=Path("models/Stable-diffusion/easel-shapes.safetensors"),
                    help="single-file checkpoint (with its .yaml)")
    ap.add_argument("--state", type=Path, default=None, help="a training state.pt to export and evaluate instead")
    ap.add_argument("--sampler", default="Euler a")
    ap.add_argument("--inpaint-strength", type=float, default=1.0)
    ap.add_argument("--n", type=int, default=200, help="txt2img prompts (0 skips txt2img)")
    ap.add_argument("--img2img", type=int, default=50, metavar="N", help="img2img edits (0 skips)")
    ap.add_argument("--inpaint", type=int, default=50, metavar="N", help="inpaint edits (0 skips)")
    ap.add_argument("--control", type=int, default=0, metavar="N", help="ControlNet cases (needs --controlnet)")
    ap.add_argument("--controlnet", type=Path, default=None, help="a ControlNet file (with its .yaml) for --control")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-threads", type=int, default=0, metavar="N", help="torch.set_num_threads(N)")
    ap.add_argument("--save-grids", type=Path, default=None, metavar="DIR", help="write one image grid per evaluation")
    args = ap.parse_args(argv)
    if args.control and args.controlnet is None:
        ap.error("--control needs --controlnet FILE")
    for name in ("n", "img2img", "inpaint", "control"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.limit_threads:
        torch.set_num_threads(args.limit_threads)
    start = time.time()
    checkpoint, label = args.checkpoint, str(args.checkpoint)
    if args.state is not None:
        from bundled.export import export

        checkpoint = Path(tempfile.mkdtemp(prefix="easel-eval-ckpt-")) / "state-export.safetensors"
        export(args.state, checkpoint)
        label = f"{args.state} (step {torch.load(args.state, map_location='cpu', weights_only=True)['step']})"
    controlnet = args.controlnet.resolve() if args.controlnet else None
    runner = Runner(checkpoint.resolve(), args.steps, args.cfg, args.sampler, controlnet)
    evaluations = (("txt2img", args.n, lambda: evaluate_txt2img(runner, args.n, args.seed)),
                   ("img2img", args.img2img, lambda: evaluate_img2img(runner, args.img2img, args.seed)),
                   ("inpaint", args.inpaint, lambda: evaluate_inpaint(runner, args.inpaint, args.seed, args.inpaint_strength)),
                   ("controlnet", args.control,
                    lambda: evaluate_controlnet(runner, args.control, args.seed, controlnet.stem if controlnet else "")))
    rows: list[Row] = []
    timings: list[str] = []
    try:
        for name, n, run in evaluations:
            if n == 0:
                continue
            t0 = time.time()
            new_rows, images = run()
            rows += new_rows
            timings.append(f"{name}: {n} images in {time.time() - t0:.1f}s")
            if args.save_grids is not None:
                save_grid(images, args.save_grids / f"{name}.png")
    finally:
        runner.close()
    print(format_table(rows))
    print()
    print(f"{label}: {args.sampler}, {args.steps} steps, CFG {args.cfg}, seed {args.seed}; " + "; ".join(timings)
          + f"; total {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
