"""Training images: the instance images (uploads or a folder) and the class images of prior preservation.

Instance images are read once, when the request is built: a file that is not a readable image is
skipped with a warning naming it. A caption is read from ``NAME.txt`` beside an image file (or an
uploaded ``.txt`` of the same name); the API may give them as a list instead. When the job runs
each image is made RGB, scaled so its shorter side is the training resolution and centre-cropped
to a square.

Class images are generated with the base model through the ordinary txt2img core and cached under
``cache/class_images/<hash>/`` (the hash of the checkpoint, VAE, class prompt, resolution and
sampling settings), so a second training of the same class reuses them. Image ``i`` has seed ``i``
and, when there are several class prompts (lines, or ``[filewords]``), class prompt ``i`` (cycling).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from modules.images import ImageTooLarge, decode_image
from modules.schemas import RequestError

CLASS_BATCH = 4  # class images generated per txt2img job
CAPTION_SUFFIX = ".txt"
MAX_CAPTION_CHARS = 500


@dataclass
class InstanceImages:
    """What was read: the images, their names, a caption per image (None: none) and the warnings."""

    images: list[Image.Image] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # file name, or #N for an upload that is not a file
    captions: list[str | None] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_instance_images(uploads: list[Any] | None = None, folder: str | Path | None = None,
                         captions: list[str] | None = None, max_pixels: int | None = None) -> InstanceImages:
    """The images from uploads (PIL images, bytes, base64 text or ``Path`` objects) and a folder, with
    their captions: ``captions[i]`` for upload ``i``, else ``NAME.txt`` beside (or uploaded with) a file.

    Unreadable items, and images over ``max_pixels`` pixels (read from the header, before
    decoding), are skipped with a warning; a folder that does not exist is a RequestError.
    """
    uploads = list(uploads or [])
    if captions and len(captions) > len(uploads):
        raise RequestError(f"instance_captions: {len(captions)} captions for {len(uploads)} uploaded images "
                           "(one per image, in the same order)")
    text_files = {Path(item).stem: Path(item) for item in uploads if _is_caption_file(item)}
    found = InstanceImages()
    image_stems = {Path(item).stem for item in uploads if _is_path(item) and not _is_caption_file(item)}
    for stem in sorted(set(text_files) - image_stems):
        found.warnings.append(f"{text_files[stem].name} skipped: a caption file without an image {stem}.*")
    for index, item in enumerate(uploads):
        if _is_caption_file(item):
            continue
        is_path = _is_path(item)
        label = Path(item).name if is_path else f"#{index + 1}"
        try:
            found.images.append(_read(item, max_pixels))
        except (ValueError, OSError) as err:
            found.warnings.append(f"instance image {label} skipped: not a readable image ({_short(err)})")
            continue
        found.names.append(label)
        given = captions[index] if captions and index < len(captions) else None
        sidecar = (text_files.get(Path(item).stem) or Path(item).with_suffix(CAPTION_SUFFIX)) if is_path else None
        found.captions.append(given if given is not None else _read_caption(sidecar))
    if folder:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise RequestError(f"instance_dir: folder {str(root)!r} not found (give a folder of 3-30 images on the server)")
        files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
        stems = {p.stem for p in files if p.suffix.lower() != CAPTION_SUFFIX}
        for path in files:
            if path.suffix.lower() == CAPTION_SUFFIX:
                if path.stem not in stems:
                    found.warnings.append(f"{path.name} skipped: a caption file without an image {path.stem}.*")
                continue
            try:
                found.images.append(_read(path, max_pixels))
            except (ValueError, OSError) as err:
                found.warnings.append(f"{path.name} skipped: not a readable image ({_short(err)})")
                continue
            found.names.append(path.name)
            found.captions.append(_read_caption(path.with_suffix(CAPTION_SUFFIX)))
    return found


def _is_path(item: Any) -> bool:
    return isinstance(item, (str, Path)) and _looks_like_path(item)


def _is_caption_file(item: Any) -> bool:
    return _is_path(item) and str(item).lower().endswith(CAPTION_SUFFIX)


def _read_caption(path: Path | None) -> str | None:
    """The first line of a caption file (None when there is none); RequestError for one too long."""
    if path is None or not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    if len(text) > MAX_CAPTION_CHARS:
        raise RequestError(f"caption {path.name}: {len(text)} characters; at most {MAX_CAPTION_CHARS}")
    return text or None


def _looks_like_path(item: str | Path) -> bool:
    """Only ``Path`` objects are files (handed in by the UI's uploads and the command line); text is
    always image data, so a client's string never opens a file on the server."""
    return isinstance(item, Path)


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:120]


def _read(item: Any, max_pixels: int | None = None) -> Image.Image:
    """A loaded PIL image from a PIL image, bytes, base64 text or a ``Path``; ValueError for one
    that is unreadable or (from its header) over ``max_pixels`` pixels."""
    if isinstance(item, Image.Image):
        item.load()
        return item
    if _is_path(item):
        if not Path(item).is_file():  # a FIFO or device would block the reader
            raise ValueError("not a regular file")
        with Image.open(item) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ImageTooLarge(f"{image.width}x{image.height} pixels; at most {max_pixels} (max_input_pixels)")
            image.load()
            return image.copy()
    return decode_image(item, max_pixels)


def prepare_image(image: Image.Image, resolution: int) -> Image.Image:
    """RGB (transparency on white), shorter side scaled to ``resolution``, centre-cropped square."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return ImageOps.fit(image.convert("RGB"), (resolution, resolution), Image.Resampling.BICUBIC, centering=(0.5, 0.5))


# --------------------------------------------------------------------------- class images


def class_key(checkpoint_id: str, vae: str | None, class_prompt: str | list[str], resolution: int, steps: int, cfg: float,
              sampler: str) -> str:
    """The cache folder name: sha256 of everything that changes the class images (first 16 hex digits)."""
    text = json.dumps([checkpoint_id, vae, class_prompt, resolution, steps, cfg, sampler])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_class_images(folder: Path, count: int) -> list[Image.Image]:
    """The first ``count`` cached images that exist in order (``0000.png``, ``0001.png``, ...)."""
    images = []
    for i in range(count):
        path = folder / f"{i:04d}.png"
        if not path.is_file():
            break
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except OSError:  # a damaged file: generated again
            break
    return images


def save_class_image(folder: Path, index: int, image: Image.Image) -> None:
    """Write one class image atomically (a temporary file, then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{index:04d}.png"
    tmp = folder / f".{index:04d}.png.tmp"
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def generate_class_images(
    folder: Path,
    count: int,
    generate: Callable[[int, int], list[Image.Image]],
    on_progress: Callable[[int, int], None] | None = None,
) -> list[Image.Image]:
    """The ``count`` class images: the cached ones, then ``generate(first_seed, n)`` for the rest
    (seed = index), each saved as it comes."""
    images = cached_class_images(folder, count)
    while len(images) < count:
        n = min(CLASS_BATCH, count - len(images))
        for image in generate(len(images), n):
            save_class_image(folder, len(images), image)
            images.append(image)
        if on_progress is not None:
            on_progress(len(images), count)
    return images
