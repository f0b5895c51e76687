"""The "shapes world": one shape on a solid background, rendered at 64x64, with captions.

Everything here is deterministic given a ``numpy.random.Generator``. The training data is
drawn from it on the fly and never stored; the evaluation and the tests use the same
renderer and vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "star")
HELD_OUT_SHAPES = ("heart", "crescent")  # never drawn in training: kept for DreamBooth demos (render draws them)
SIZES: dict[str, float] = {"small": 0.11, "large": 0.20}
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "on the left side", "to the left"),
    "right": ("on the right", "on the right side", "to the right"),
    "top": ("at the top", "on top", "at the top of the image"),
    "bottom": ("at the bottom", "at the bottom of the image", "near the bottom"),
    "center": ("in the center", "in the middle", "centered"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk", "disc", "round dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangular shape"),
    "star": ("star", "five-pointed star"),
}
BACKGROUND_WORDS = ("background", "backdrop")
SIDE = 64
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    background: str
    size: str
    position: str
    cx: float  # centre as a fraction of the side, jitter included
    cy: float

    def caption(self) -> str:
        """The canonical caption, e.g. ``a large red circle on the left, blue background``."""
        return f"a {self.size} {self.color} {self.shape} {POSITION_PHRASES[self.position][0]}, {self.background} background"


def random_scene(rng: np.random.Generator, jitter: float = 0.03) -> Scene:
    color, background = rng.choice(list(PALETTE), size=2, replace=False)
    position = str(rng.choice(list(POSITIONS)))
    px, py = POSITIONS[position]
    return Scene(
        shape=str(rng.choice(SHAPES)),
        color=str(color),
        background=str(background),
        size=str(rng.choice(list(SIZES))),
        position=position,
        cx=px + float(rng.uniform(-jitter, jitter)),
        cy=py + float(rng.uniform(-jitter, jitter)),
    )


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape centred at (cx, cy) with circumradius r (pixels)."""
    if shape == "square":
        h = r * 0.9
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    if shape == "heart":  # the classic parametric heart, scaled to fit the circumradius, point down
        pts = []
        for k in range(96):
            t = 2 * math.pi * k / 96
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + r * x / 17, cy - r * (y + 2.5) / 17))
        return pts
    raise ValueError(f"no polygon for shape {shape!r}")


def render(scene: Scene, side: int = SIDE) -> Image.Image:
    """Draw the scene anti-aliased (supersampled, then box-filtered down)."""
    big = side * SUPERSAMPLE
    img = Image.new("RGB", (big, big), PALETTE[scene.background])
    draw = ImageDraw.Draw(img)
    cx, cy, r = scene.cx * big, scene.cy * big, SIZES[scene.size] * big
    fill = PALETTE[scene.color]
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "crescent":  # a disc with a disc of background taken out of its right side (held out)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        bx, br = cx + 0.45 * r, 0.85 * r
        draw.ellipse([bx - br, cy - br, bx + br, cy + br], fill=PALETTE[scene.background])
    else:
        draw.polygon(shape_polygon(scene.shape, cx, cy, r), fill=fill)
    return img.resize((side, side), Image.Resampling.BOX)


def paraphrase(scene: Scene, rng: np.random.Generator) -> str:
    """A random paraphrase of the caption: synonyms, word orders, sometimes fewer details."""
    size = str(rng.choice(SIZE_WORDS[scene.size])) if rng.random() > 0.15 else ""
    shape = str(rng.choice(SHAPE_WORDS[scene.shape]))
    pos = str(rng.choice(POSITION_PHRASES[scene.position])) if rng.random() > 0.05 else ""
    bg_word = str(rng.choice(BACKGROUND_WORDS))
    thing = " ".join(w for w in (size, scene.color, shape) if w)
    templates = (
        "a {thing} {pos}, {bg} {bgw}",
        "a {thing} {pos} on a {bg} {bgw}",
        "{bg} {bgw}, a {thing} {pos}",
        "a {bg} {bgw} with a {thing} {pos}",
        "{pos}, a {thing} on {bg}",
        "a {thing} on a {bg} {bgw}, {pos}",
    )
    text = str(rng.choice(templates)).format(thing=thing, pos=pos, bg=scene.background, bgw=bg_word)
    return " ".join(text.replace(" ,", ",").split()).strip(", ")


def training_batch(rng: np.random.Generator, batch_size: int, empty_caption_rate: float = 0.1):
    """Images as a float array (B, 3, 64, 64) in [-1, 1], captions, and the scenes."""
    scenes = [random_scene(rng) for _ in range(batch_size)]
    images = np.stack([np.asarray(render(s), dtype=np.float32) for s in scenes]) / 127.5 - 1.0
    captions = []
    for s in scenes:
        if rng.random() < empty_caption_rate:
            captions.append("")
        elif rng.random() < 0.3:
            captions.append(s.caption())
        else:
            captions.append(paraphrase(s, rng))
    return images.transpose(0, 3, 1, 2).copy(), captions, scenes
