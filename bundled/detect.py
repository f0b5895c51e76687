"""Read a shapes-world image back into words: background, shape, colour, size and position.

The detector is plain OpenCV and needs no training. It is used to score the bundled model
(``bundled.evaluate``) and in tests that check generated pixels.

1. Background: the palette colour nearest to the median of the border pixels.
2. Shape mask: pixels far from that background colour (a threshold at half the shape's
   contrast, with a floor above the noise), keeping the largest connected component.
3. Colour: the palette colour nearest to the median of the eroded mask's pixels.
4. Outline: the coverage map (each pixel's place between background and shape colour) is
   upsampled 4x and thresholded at half, giving a sub-pixel outline whose features (fill of
   the enclosing triangle, solidity, circularity, bounding-box extent) name the shape.
5. Size and position: the area against the areas the renderer draws for that shape, and the
   anchor of ``POSITIONS`` nearest to the centroid.

Nothing found (a blank or very faint image) gives ``shape``, ``color`` and ``position`` None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from bundled.shapes import PALETTE, POSITIONS, SIDE, SIZES

UPSAMPLE = 4  # the outline is traced on a 4x upsampled coverage map
MIN_CONTRAST = 30.0  # RGB distance below which nothing counts as a shape
NOISE_FLOOR = 20.0  # the mask threshold never goes below this RGB distance
MIN_AREA_FRACTION = 0.004  # smaller components are specks, not shapes

# Area of each shape as a multiple of the squared circumradius (see shapes.shape_polygon).
UNIT_AREAS: dict[str, float] = {
    "circle": math.pi,
    "square": 1.8**2,
    "triangle": 3 * math.sqrt(3) / 4,
    "star": 10 * 0.5 * 0.45 * math.sin(math.pi / 5),
    "heart": 180 * math.pi / 17**2,  # the parametric heart's area (180 pi) at the renderer's scale (r / 17)
}
HEART_TOP_HEAVINESS = -0.04  # a heart's centroid sits above its box centre (renders -0.06 to -0.10, others > -0.03)
HEART_MIN_SOLIDITY = 0.85


@dataclass(frozen=True)
class Detection:
    """What the detector read from one image; the features explain its shape decision."""

    background: str
    shape: str | None
    color: str | None
    size: str | None
    position: str | None
    cx: float | None  # centroid as a fraction of the side
    cy: float | None
    area_fraction: float  # mask pixels / all pixels
    contrast: float  # RGB distance between the shape's median colour and the background
    color_distance: float | None  # RGB distance from the shape's median to its palette colour
    background_distance: float  # RGB distance from the border median to its palette colour
    solidity: float | None  # area / convex hull area
    circularity: float | None  # 4 pi area / perimeter^2
    extent: float | None  # area / bounding box area
    corners: int | None  # vertices of the simplified outline
    triangularity: float | None  # area / smallest enclosing triangle's area
    top_heaviness: float | None = None  # (centroid y - box centre y) / box height: < 0 when the mass sits high


def to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a PIL image or an array of that layout."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got shape {arr.shape} dtype {arr.dtype}")
    return arr


def nearest_palette(rgb: np.ndarray) -> tuple[str, float]:
    """The palette name nearest to an RGB colour, and the distance to it."""
    names = list(PALETTE)
    colors = np.array([PALETTE[n] for n in names], dtype=np.float32)
    dist = np.linalg.norm(colors - np.asarray(rgb, dtype=np.float32), axis=1)
    i = int(np.argmin(dist))
    return names[i], float(dist[i])


def border_pixels(arr: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels of the outer ``width`` rows and columns, as an (N, 3) array."""
    top, bottom = arr[:width].reshape(-1, 3), arr[-width:].reshape(-1, 3)
    left, right = arr[width:-width, :width].reshape(-1, 3), arr[width:-width, -width:].reshape(-1, 3)
    return np.concatenate([top, bottom, left, right])


def contrast_map(arr: np.ndarray, background_rgb: np.ndarray) -> np.ndarray:
    """Per-pixel RGB distance from the background colour, after a light blur against noise."""
    smooth = cv2.GaussianBlur(arr.astype(np.float32), (0, 0), 0.7)
    return np.linalg.norm(smooth - background_rgb.astype(np.float32), axis=2)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (all False when the mask is empty)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros_like(mask, dtype=bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


def shape_pixels(arr: np.ndarray, mask: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """Interior pixels of the mask (eroded once); the highest-contrast half when erosion empties it."""
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if inner.sum() >= 3:
        return arr[inner]
    values = contrast[mask]
    return arr[mask][values >= np.median(values)]


def coverage_map(arr: np.ndarray, background_rgb: np.ndarray, shape_rgb: np.ndarray) -> np.ndarray:
    """How much of each pixel the shape covers: its position between background and shape colour.

    Projecting onto the background-to-shape colour line (rather than taking a distance) ignores
    coloured fringes that lie off that line, as a VAE decoder leaves around small shapes.
    """
    axis = shape_rgb.astype(np.float32) - background_rgb.astype(np.float32)
    smooth = cv2.GaussianBlur(arr.astype(np.float32), (0, 0), 0.7)
    along = (smooth - background_rgb.astype(np.float32)) @ axis / max(float(axis @ axis), 1e-6)
    return np.clip(along, 0.0, 1.0)


def outline(coverage: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The shape's outline, traced at half coverage on a 4x upsampled map (upsampled pixels)."""
    near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(np.float32)
    size = (coverage.shape[1] * UPSAMPLE, coverage.shape[0] * UPSAMPLE)
    big = cv2.resize(coverage * near, size, interpolation=cv2.INTER_LINEAR) > 0.5
    contours, _ = cv2.findContours(big.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    return max(contours, key=cv2.contourArea)


def contour_features(contour: np.ndarray) -> dict[str, float]:
    """Solidity, circularity, bounding-box extent and corner count of a closed contour."""
    area = float(cv2.contourArea(contour))
    perimeter = float(cv2.arcLength(contour, True))
    hull_area = float(cv2.contourArea(cv2.convexHull(contour)))
    _, _, w, h = cv2.boundingRect(contour)
    approx = cv2.approxPolyDP(contour, 0.04 * perimeter, True)
    triangle_area = float(cv2.minEnclosingTriangle(contour.astype(np.float32))[0])
    moments = cv2.moments(contour)
    _, y, _, _ = cv2.boundingRect(contour)
    top = (moments["m01"] / moments["m00"] - (y + h / 2)) / h if moments["m00"] > 0 and h > 0 else 0.0
    return dict(
        top_heaviness=top,
        triangularity=area / triangle_area if triangle_area > 0 else 0.0,
        area=area,
        solidity=area / hull_area if hull_area > 0 else 0.0,
        circularity=4 * math.pi * area / perimeter**2 if perimeter > 0 else 0.0,
        extent=area / float(w * h) if w * h > 0 else 0.0,
        corners=float(len(approx)),
    )


def classify_shape(features: dict[str, float]) -> str:
    """Circle, square, triangle, star or heart from the outline features.

    A heart (held out of training; the DreamBooth demo teaches it) is the only shape whose mass
    sits above its bounding box's centre: top-heaviness -0.06 to -0.10 on renders, blurred renders
    and VAE reconstructions, while circles, squares, stars and triangles stay above -0.03 (stars
    and triangles, point up, are bottom-heavy); it is also nearly convex (solidity 0.93 or more).

    Measured on renders, blurred noisy renders and VAE reconstructions (the rounding a
    generated image shows): a triangle fills 0.75-0.97 of its smallest enclosing triangle, the
    other shapes 0.70 or less. A star is the only concave shape (solidity 0.56 drawn, up to 0.9
    blurred) and the least round one (circularity below 0.72; squares stay above 0.78); a blurred
    small star still fills less than 0.7 of its bounding box. A square fills 0.84-0.98 of its
    bounding box, a circle 0.73-0.80. A small star that a blur has
    rounded past recognition reads as a circle.
    """
    if features.get("top_heaviness", 0.0) <= HEART_TOP_HEAVINESS and features["solidity"] >= HEART_MIN_SOLIDITY:
        return "heart"
    if features["triangularity"] >= 0.74:
        return "triangle"
    if features["solidity"] < 0.9 or features["circularity"] < 0.72 or features["extent"] < 0.7:
        return "star"
    return "square" if features["extent"] > 0.82 else "circle"


def classify_size(shape: str, area_px: float, side: int) -> str:
    """Small or large: the area against the geometric mean of the two drawn areas of the shape."""
    small = UNIT_AREAS[shape] * (SIZES["small"] * side) ** 2
    large = UNIT_AREAS[shape] * (SIZES["large"] * side) ** 2
    return "large" if area_px > math.sqrt(small * large) else "small"


def nearest_position(cx: float, cy: float) -> str:
    """The name of the anchor in ``POSITIONS`` nearest to (cx, cy), given as side fractions."""
    return min(POSITIONS, key=lambda name: math.dist(POSITIONS[name], (cx, cy)))


def detect(image: Image.Image | np.ndarray) -> Detection:
    """Read background, shape, colour, size and position from a shapes-world image."""
    arr = to_array(image)
    h, w = arr.shape[:2]
    border_median = np.median(border_pixels(arr), axis=0)
    background, background_distance = nearest_palette(border_median)
    bg_rgb = np.array(PALETTE[background], dtype=np.float32)
    contrast = contrast_map(arr, bg_rgb)
    peak = float(np.percentile(contrast, 99.7))
    mask = largest_component(contrast > max(NOISE_FLOOR, 0.5 * peak))
    area_fraction = float(mask.mean())
    nothing = Detection(
        background, None, None, None, None, None, None, area_fraction, 0.0, None, background_distance,
        None, None, None, None, None,
    )
    if peak < MIN_CONTRAST or area_fraction < MIN_AREA_FRACTION:
        return nothing
    pixels = shape_pixels(arr, mask, contrast)
    shape_rgb = np.median(pixels, axis=0)
    color, color_distance = nearest_palette(shape_rgb)
    fg_contrast = float(np.linalg.norm(shape_rgb.astype(np.float32) - bg_rgb))
    coverage = coverage_map(arr, bg_rgb, shape_rgb)
    contour = outline(coverage, mask)
    if contour is None or len(contour) < 5:
        return nothing
    features = contour_features(contour)
    shape = classify_shape(features)
    ys, xs = np.nonzero(mask)
    weights = np.maximum(coverage[ys, xs], 1e-3)
    cx = float(np.average(xs + 0.5, weights=weights)) / w
    cy = float(np.average(ys + 0.5, weights=weights)) / h
    area_px = features["area"] / UPSAMPLE**2 * (SIDE / w) * (SIDE / h)
    return Detection(
        background=background,
        shape=shape,
        color=color,
        size=classify_size(shape, area_px, SIDE),
        position=nearest_position(cx, cy),
        cx=cx,
        cy=cy,
        area_fraction=area_fraction,
        contrast=fg_contrast,
        color_distance=color_distance,
        background_distance=background_distance,
        solidity=features["solidity"],
        circularity=features["circularity"],
        extent=features["extent"],
        corners=int(features["corners"]),
        triangularity=features["triangularity"],
        top_heaviness=features["top_heaviness"],
    )
