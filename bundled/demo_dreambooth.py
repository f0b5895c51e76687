"""DreamBooth demonstration on the bundled model: teach it the heart, a shape it never saw.

1. Render 5 instance images of a large heart (varied colours, backgrounds and places), each with
   its caption: the instance prompt ``a zwx shape`` with the image's colour, place and background
   (``a red zwx shape on the left, blue background``), used through ``[filewords]``. With the bare
   ``a zwx shape`` for every image (``--no-captions``) the model learns the heart only for that exact
   prompt: ``zwx`` stays a word the rest of a prompt overrides.
2. Train each method (full DreamBooth and LoRA with and without prior preservation, textual
   inversion) for at most ``--minutes`` and its step count on the CPU, each in its own data folder
   (so an embedding named ``zwx`` never leaks into another method's prompts), through Easel's
   training job. Prior preservation's class ``a shape`` is given as its members, in the instance
   images' own scenes: each instance caption with ``zwx shape`` replaced by each trained shape in turn
   (``a red circle on the left, blue background``, ``a red square ...``: the DreamBooth paper's class
   prompt, the instance prompt without its identifier, for a class given by its members; a class
   prompt of several lines). ``--no-class-like-instances``: random colours, places and sizes instead.
   The class images are rendered by the shapes world with those captions (the default,
   ``--class-images rendered``, a folder given as ``class_dir``: real pictures of the class, as kohya's
   regularisation images) or drawn by the base model (``--class-images generated``, the DreamBooth way).
   In the instances' own scenes the class images differ from the instance images only by the shape
   and its word, so only ``zwx`` can tell the heart apart; with random scenes the model also learns
   the heart from the five scenes' colours and places, and elsewhere the zwx prompts fall back to the
   class's square.
   DreamBooth with prior preservation also trains the text encoder and drops a tenth of the class
   images' prompts (``class_caption_dropout``; see ``RUNS``).
3. Measure with the detector (``bundled.detect``) over ``--n`` seeded random prompts:
   ``a red zwx shape on the left, blue background`` style prompts → how often a heart is drawn,
   with the asked colour and position; ``a red circle on the left, blue background`` → how often a
   circle is still drawn (what prior preservation protects), and the same for ``a red square ...``
   (the shape the base falls back to for an unknown shape word, so the one a recipe could lose to the
   heart unseen). The base model is measured the same way.
4. Print a Markdown table, and after each run what each prompt set drew (shape -> share).

The run's options can be changed for experiments: ``--sampler`` and ``--cfg-scale`` (of the measured
images and the generated class images; default DPM++ 2M at CFG 3), ``--learning-rate``,
``--prior-loss-weight``, ``--snr-gamma``, ``--noise-offset``, ``--caption-dropout``, ``--ema-decay``,
``--[no-]train-text-encoder``, ``--class-caption-dropout``, ``--lora-targets``, ``--no-class-like-instances``
(class images at random colours, places and sizes), ``--control`` (train on
rendered pictures of the trained shapes instead of hearts: the training's own drift), ``--checkpoint``
(another base) and ``--keep`` (keep each run's folder and model).

    python -m bundled.demo_dreambooth [--minutes 10] [--n 50] [--methods dreambooth lora textual_inversion]
    python -m bundled.demo_dreambooth --minutes 0.2 --steps 3 --n 4 --num-class-images 4   # a smoke run
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bundled.detect import detect
from bundled.shapes import PALETTE, POSITION_PHRASES, POSITIONS, SHAPES, Scene, render
from modules.training.config import LORA_TARGETS

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "models" / "Stable-diffusion" / "easel-shapes.safetensors"
INSTANCE_PROMPT, CLASS_PROMPT, TOKEN = "a zwx shape", "a shape", "zwx"
CAPTIONED_PROMPT = "[filewords]"  # each image's caption: the instance prompt with its colour and place
# Measured with Easel's default sampler at CFG 3: the bundled base draws ``a red circle ...`` as a circle
# 86% of the time at CFG 3, 58% at 6 and 48% at 8 (stronger guidance leaves lumpy, diamond-like outlines)
SAMPLER, CFG = "DPM++ 2M", 3.0
# (method, prior preservation, request fields) of each run; the learning rates and step counts suit
# this small model (1500 DreamBooth steps already draw the heart; more only drift the other shapes).
# DreamBooth with prior preservation trains the text encoder too, at a higher rate and for longer, and
# drops a tenth of the class images' prompts (class_caption_dropout): without that the unconditional
# prediction drifts towards the instance and guidance pushes the circles away from it (stars).
RUNS = {
    "dreambooth": [(True, {"learning_rate": 1e-4, "steps": 3000, "train_text_encoder": True, "class_caption_dropout": 0.1}),
                   (False, {"learning_rate": 2e-5, "steps": 1500})],
    "lora": [(True, {"learning_rate": 5e-4, "lora_rank": 8, "steps": 3000}),
             (False, {"learning_rate": 5e-4, "lora_rank": 8, "steps": 3000})],
    "textual_inversion": [(False, {"learning_rate": 5e-3, "num_vectors": 2, "initializer_token": "shape", "steps": 3000})],
}
# flags that override a run's own value
RUN_OPTIONS = ("learning_rate", "train_text_encoder", "class_caption_dropout", "token_learning_rate",
               "text_encoder_learning_rate")


@dataclass
class Scores:
    """Detector hits over the prompts."""

    zwx_drawn: dict[str, float]  # what the zwx prompts drew (shape -> share)
    zwx_color: float  # zwx prompts drawn in the asked colour
    zwx_position: float  # ... at the asked place
    circle_drawn: dict[str, float]  # what the circle prompts drew
    square_drawn: dict[str, float]  # what the square prompts drew

    @property
    def heart(self) -> float:
        """zwx prompts drawn as a heart."""
        return self.zwx_drawn.get("heart", 0.0)

    @property
    def circle(self) -> float:
        """Circle prompts still drawn as a circle."""
        return self.circle_drawn.get("circle", 0.0)

    @property
    def square(self) -> float:
        """Square prompts still drawn as a square."""
        return self.square_drawn.get("square", 0.0)

    def drawn(self) -> str:
        """What each prompt set drew, for the log."""
        return f"zwx drew {self.zwx_drawn}; circle drew {self.circle_drawn}; square drew {self.square_drawn}"


def instance_scenes(n: int = 5) -> list[Scene]:
    """Large hearts in varied colours, backgrounds and places (seeded). Large: this 64x64 model draws
    small shapes poorly."""
    rng = np.random.default_rng(5)
    scenes = []
    for _ in range(n):
        color, background = rng.choice(list(PALETTE), size=2, replace=False)
        position = str(rng.choice(list(POSITIONS)))
        x, y = POSITIONS[position]
        scenes.append(Scene("heart", str(color), str(background), "large", position, x, y))
    return scenes


def caption(scene: Scene, shape_word: str) -> str:
    """``a red <shape_word> on the left, blue background`` for the scene."""
    return f"a {scene.color} {shape_word} {POSITION_PHRASES[scene.position][0]}, {scene.background} background"


def instance_images(n: int = 5) -> tuple[list, list[str]]:
    """The instance hearts and their captions (``a red zwx shape on the left, blue background``)."""
    scenes = instance_scenes(n)
    return [render(scene) for scene in scenes], [caption(scene, f"{TOKEN} shape") for scene in scenes]


def class_scenes(n: int, like_instances: bool = False) -> list[tuple[Scene, str]]:
    """The class ``a shape`` as its members: n scenes of the four trained shapes in turn, with their
    captions (``a red circle on the left, blue background``). Seeded random colours, places and sizes;
    or (``like_instances``) each instance image's colour, background, place and size in turn, drawn
    as each of the four shapes: the class members nearest to the instances."""
    if like_instances:
        instances = instance_scenes()
        scenes = [replace(instances[(i // len(SHAPES)) % len(instances)], shape=SHAPES[i % len(SHAPES)]) for i in range(n)]
        return [(scene, caption(scene, scene.shape)) for scene in scenes]
    rng, sizes = np.random.default_rng(9), np.random.default_rng(10)
    out = []
    for i in range(n):
        color, background = (str(c) for c in rng.choice(list(PALETTE), size=2, replace=False))
        position = str(rng.choice(list(POSITIONS)))
        x, y = POSITIONS[position]
        size = str(sizes.choice(["small", "large"]))
        scene = Scene(SHAPES[i % len(SHAPES)], color, background, size, position, x, y)
        out.append((scene, caption(scene, scene.shape)))
    return out


def class_prompt_lines(n: int, like_instances: bool = False) -> str:
    """The class prompts, one line per class image."""
    return "\n".join(text for _, text in class_scenes(n, like_instances))


def write_class_folder(folder: Path, n: int, like_instances: bool = False) -> Path:
    """The rendered class images with their NAME.txt captions."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (scene, text) in enumerate(class_scenes(n, like_instances)):
        render(scene).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(text)
    return folder


def prompts(n: int, seed: int, shape_word: str) -> list[tuple[str, str, str]]:
    """(prompt, colour, position): ``a red <shape_word> on the left, blue background``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        color, background = rng.choice(list(PALETTE), size=2, replace=False)
        position = str(rng.choice(list(POSITIONS)))
        out.append((f"a {color} {shape_word} {POSITION_PHRASES[position][0]}, {background} background", str(color), position))
    return out


def shares(shapes: list[str]) -> dict[str, float]:
    """Each detected shape's share, most frequent first."""
    counts = Counter(shapes)
    return {shape: count / len(shapes) for shape, count in counts.most_common()}


def run_values(method: str, prior: bool, fields: dict, args: argparse.Namespace) -> dict:
    """The training request's fields of one run (images aside): the run's own fields from ``RUNS``,
    the options every run shares, and the flags of ``RUN_OPTIONS`` where given (they override)."""
    class_prompt = class_prompt_lines(args.num_class_images, args.class_like_instances) if args.captions else CLASS_PROMPT
    values = {"method": method, "instance_prompt": CAPTIONED_PROMPT if args.captions else INSTANCE_PROMPT,
              "class_prompt": class_prompt,
              "token": TOKEN, "with_prior_preservation": prior, "num_class_images": args.num_class_images,
              "class_cfg_scale": args.cfg_scale, "max_minutes": args.minutes, "batch_size": args.batch_size, "save_every": 0,
              "seed": args.seed, "output_name": TOKEN if method != "dreambooth" else f"{TOKEN}-dreambooth",
              "prior_loss_weight": args.prior_loss_weight,
              "snr_gamma": args.snr_gamma, "noise_offset": args.noise_offset, "lora_targets": args.lora_targets,
              "caption_dropout": args.caption_dropout, "ema_decay": args.ema_decay,
              **fields, "steps": min(fields.get("steps", args.steps), args.steps)}
    values.update({name: getattr(args, name) for name in RUN_OPTIONS if getattr(args, name) is not None})
    if method != "dreambooth":
        values.pop("token_learning_rate", None)  # a DreamBooth-only option
    if not values.get("train_text_encoder"):
        values.pop("text_encoder_learning_rate", None)  # only for a trained text encoder
    if not prior:
        values.pop("class_caption_dropout", None)  # a class-only option: refused without class images
    return values


class Lab:
    """One data folder with the bundled checkpoint, its services and a training on it."""

    def __init__(self, label: str, checkpoint: Path = CHECKPOINT) -> None:
        from modules.access import ClientAccess
        from modules.config import load_settings
        from modules.services import build_services

        self.folder = Path(tempfile.mkdtemp(prefix=f"easel-demo-{label}-"))
        checkpoint = checkpoint.resolve()
        settings = load_settings(self.folder, {"ckpt_dirs": [checkpoint.parent], "sd_model_checkpoint": checkpoint.name,
                                               "show_progress_every_n_steps": 0})
        self.services = build_services(settings, access=ClientAccess(allow_server_paths=True))  # the operator's own run

    def train(self, method: str, prior: bool, fields: dict, args: argparse.Namespace) -> tuple[int, float]:
        """Train; returns (steps, minutes)."""
        from modules.training import job as training

        images, captions = instance_images()
        if args.control:  # the trainer's own drift: the trained shapes only, no heart
            control = class_scenes(28)
            images, captions = [render(scene) for scene, _ in control], [text for _, text in control]
        values = run_values(method, prior, fields, args)
        if args.captions:
            values["instance_captions"] = captions
        if prior and args.class_images == "rendered":
            folder = write_class_folder(self.folder / "class-images", args.num_class_images, args.class_like_instances)
            values["class_dir"] = str(folder)
        request = training.build_request(self.services, values, uploads=images)
        started = time.monotonic()
        result = training.submit(self.services, request).wait()
        return result.steps, (time.monotonic() - started) / 60

    def scores(self, n: int, method: str | None, steps: int, sampler: str = SAMPLER, cfg: float = CFG) -> Scores:
        """Detector rates of the zwx, circle and square prompts on this folder's model."""
        def detected(prompt_seed: int, shape_word: str) -> list:
            items = prompts(n, prompt_seed, shape_word)
            return [self._detect(item, seed, method, steps, sampler, cfg) for seed, item in enumerate(items)]

        zwx, circles, squares = detected(1, f"{TOKEN} shape"), detected(2, "circle"), detected(3, "square")
        return Scores(
            zwx_drawn=shares([d.shape for d, _, _ in zwx]),
            zwx_color=np.mean([d.color == c for d, c, _ in zwx]),
            zwx_position=np.mean([d.position == pos for d, _, pos in zwx]),
            circle_drawn=shares([d.shape for d, _, _ in circles]),
            square_drawn=shares([d.shape for d, _, _ in squares]),
        )

    def _detect(self, item: tuple[str, str, str], seed: int, method: str | None, steps: int, sampler: str, cfg: float):
        from modules.schemas import Txt2ImgRequest

        text, color, position = item
        checkpoint = None
        if method == "dreambooth":
            checkpoint = f"{TOKEN}-dreambooth"
        if method == "lora":
            text += f" <lora:{TOKEN}:1>"  # on for the circle and square prompts too: does the LoRA spoil them?
        request = Txt2ImgRequest(prompt=text, steps=steps, sampler_name=sampler, cfg_scale=cfg, seed=seed,
                                 save_images=False, sd_model_checkpoint=checkpoint)
        image = self.services.submit("txt2img", request).wait().images[0]
        return detect(image), color, position

    def close(self, keep: bool = False) -> None:
        self.services.close()
        if keep:
            print(f"  kept {self.folder}", flush=True)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


def make_parser() -> argparse.ArgumentParser:
    """The demo's command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="training time per run (the CPU budget)")
    ap.add_argument("--steps", type=int, default=100_000, help="at most this many steps per run (each method has its own)")
    ap.add_argument("--no-captions", dest="captions", action="store_false",
                    help="train every image on the bare instance prompt 'a zwx shape' (and the class prompt 'a shape')")
    ap.add_argument("--n", type=int, default=50, help="prompts per measurement (zwx, circle and square each)")
    ap.add_argument("--methods", nargs="+", choices=list(RUNS), default=list(RUNS))
    ap.add_argument("--prior", choices=["both", "on", "off"], default="both")
    ap.add_argument("--num-class-images", type=int, default=40)
    ap.add_argument("--class-images", choices=["generated", "rendered"], default="rendered",
                    help="prior preservation's class images: drawn by the base model, or rendered shapes (class_dir)")
    ap.add_argument("--class-like-instances", action=argparse.BooleanOptionalAction, default=True,
                    help="class images in the instance images' colours, places and size, as each trained shape "
                         "(--no-class-like-instances: at random colours, places and sizes)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampling-steps", type=int, default=20, help="sampling steps of the measured images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sampler", default=SAMPLER, help="sampler of the measured images")
    ap.add_argument("--cfg-scale", type=float, default=CFG,
                    help="CFG scale of the measured images and of the generated class images")
    ap.add_argument("--learning-rate", type=float, default=None, help="instead of each method's own")
    ap.add_argument("--prior-loss-weight", type=float, default=1.0)
    ap.add_argument("--snr-gamma", type=float, default=None, help="Min-SNR-gamma loss weighting (e.g. 5)")
    ap.add_argument("--noise-offset", type=float, default=0.0)
    ap.add_argument("--ema-decay", type=float, default=0.0, help="write an EMA of the trained weights (e.g. 0.999)")
    ap.add_argument("--caption-dropout", type=float, default=0.0, help="share of images trained with the empty prompt")
    ap.add_argument("--class-caption-dropout", type=float, default=None,
                    help="with prior preservation: share of the class images trained with the empty prompt "
                         "(instead of each run's own)")
    ap.add_argument("--text-encoder-learning-rate", type=float, default=None,
                    help="the text encoder's own learning rate, where a run trains it")
    ap.add_argument("--token-learning-rate", type=float, default=None,
                    help="DreamBooth: pivotal tuning, the identifier's token embedding trained at this rate (e.g. 5e-3)")
    ap.add_argument("--lora-targets", choices=list(LORA_TARGETS), default="attention")
    ap.add_argument("--train-text-encoder", action=argparse.BooleanOptionalAction, default=None,
                    help="DreamBooth: train the text encoder too (default: each run's own)")
    ap.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="the base model to train (default: the bundled one)")
    ap.add_argument("--control", action="store_true",
                    help="train on 28 rendered pictures of the four trained shapes (no heart) with their captions, "
                         "to measure how much the training alone moves the circles")
    ap.add_argument("--keep", action="store_true", help="keep each run's data folder (its trained model) and print its path")
    ap.add_argument("--base-only", action="store_true", help="measure the base model only (no training)")
    return ap


def main() -> None:
    args = make_parser().parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    base = Lab("base", args.checkpoint)
    try:
        rows.append(("base model", "", 0, 0.0, base.scores(args.n, None, args.sampling_steps, args.sampler, args.cfg_scale)))
        print(f"  base: {rows[-1][-1].drawn()}", flush=True)
    finally:
        base.close()
    for method in [] if args.base_only else args.methods:
        for prior, fields in RUNS[method]:
            if method != "textual_inversion" and args.prior != "both" and prior != (args.prior == "on"):
                continue
            lab = Lab(method, args.checkpoint)
            try:
                steps, minutes = lab.train(method, prior, fields, args)
                scores = lab.scores(args.n, method, args.sampling_steps, args.sampler, args.cfg_scale)
                rows.append((method, "yes" if prior else "no", steps, minutes, scores))
            finally:
                lab.close(keep=args.keep)
            print(f"{method} (prior {prior}): {steps} steps in {minutes:.1f} min (class images included)", flush=True)
            print(table_row(*rows[-1]), flush=True)
            print(f"  {rows[-1][-1].drawn()}", flush=True)
    print(f"\n{args.n} prompts each; {args.sampler}, {args.sampling_steps} steps, CFG {args.cfg_scale:g}; "
          f"training batch {args.batch_size}, "
          f"at most {args.minutes:g} min per run; captions {'on' if args.captions else 'off'}; "
          f"class images {args.class_images}{' like the instances' if args.class_like_instances else ' at random'}; "
          f"prior loss weight {args.prior_loss_weight:g}; learning rate {args.learning_rate or 'each method its own'}; "
          f"Min-SNR gamma {args.snr_gamma or 'off'}; noise offset {args.noise_offset:g}; "
          f"caption dropout {args.caption_dropout:g} (class images: {_own(args.class_caption_dropout)}); "
          f"EMA decay {args.ema_decay:g}; "
          f"text encoder trained: {_own(args.train_text_encoder)}; LoRA on {args.lora_targets}\n")
    print(TABLE_HEAD)
    for row in rows:
        print(table_row(*row))


def _own(value: object) -> str:
    """A flag's value for the summary line, or what a run does without it."""
    return "each run its own" if value is None else str(value)


TABLE_HEAD = ("| method | prior preservation | steps | minutes | zwx → heart | zwx colour | zwx position | circle → circle "
              "| square → square |\n"
              "|---|---|---:|---:|---:|---:|---:|---:|---:|")


def table_row(method: str, prior: str, steps: int, minutes: float, s: Scores) -> str:
    return (f"| {method} | {prior} | {steps} | {minutes:.1f} | {s.heart:.0%} | {s.zwx_color:.0%} | "
            f"{s.zwx_position:.0%} | {s.circle:.0%} | {s.square:.0%} |")


if __name__ == "__main__":
    main()
