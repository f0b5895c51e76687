"""The upscaler registry: A1111's names for pixel, latent and model (ESRGAN-family) upscalers.

- ``None``: no upscaling (a plain Lanczos resize where a size change is still needed).
- ``Lanczos``, ``Nearest``: PIL resampling.
- ``Latent`` and its variants: interpolation of the latents (hires fix only), A1111's modes.
- Model files (``.pth``, ``.pt``, ``.safetensors``) in ``models/ESRGAN``: loaded with the
  ``spandrel`` library, which detects the architecture from the weights. They are listed only
  when spandrel can be imported (spandrel needs torchvision, which is not installed by default).

A model upscaler has a fixed factor (e.g. 4x); it is applied until the image is at least the
target size, then the result is resized to the exact target with Lanczos, as A1111 does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modules.schemas import RequestError

ESRGAN_DIR = "ESRGAN"
MODEL_SUFFIXES = (".pth", ".pt", ".safetensors")
# name -> (torch interpolation mode, antialias)
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL_MODES = {"None": Image.Resampling.LANCZOS, "Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class Upscaler:
    name: str
    kind: str  # "pixel", "latent" or "model"
    path: Path | None = None

    @property
    def is_latent(self) -> bool:
        return self.kind == "latent"


def spandrel_available() -> bool:
    try:
        import spandrel  # noqa: F401
    except Exception:  # ImportError, or a broken torchvision underneath
        return False
    return True


def model_files(models_dir: Path) -> list[Path]:
    folder = models_dir / ESRGAN_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)


def list_upscalers(models_dir: Path, include_latent: bool = True) -> list[Upscaler]:
    """Every upscaler, in A1111's order: None, Lanczos, Nearest, the latent modes, model files."""
    out = [Upscaler(name, "pixel") for name in PIXEL_MODES]
    if include_latent:
        out += [Upscaler(name, "latent") for name in LATENT_MODES]
    if spandrel_available():
        out += [Upscaler(p.stem, "model", p) for p in model_files(models_dir)]
    return out


def get_upscaler(name: str | None, models_dir: Path, include_latent: bool = True, field: str = "upscaler") -> Upscaler:
    """The upscaler called ``name`` (None or "" means "None"); unknown names raise RequestError."""
    name = name or "None"
    available = list_upscalers(models_dir, include_latent)
    for up in available:
        if up.name == name or up.name.lower() == name.lower():
            return up
    hint = ""
    if any(p.stem == name for p in model_files(models_dir)):
        hint = " (the model file exists but spandrel, which needs torchvision, cannot be imported)"
    known = ", ".join(u.name for u in available)
    raise RequestError(f"{field}: unknown upscaler {name!r}{hint}; known: {known}")


def check_size(width: int, height: int, max_side: int, field: str) -> None:
    """A huge upscale fails before any work, naming the limit (setting max_side)."""
    if width > max_side or height > max_side:
        raise RequestError(
            f"{field}: the upscaled size {width}x{height} is larger than the limit of {max_side} pixels per side"
            " (setting max_side); choose a smaller scale"
        )


def upscale_latents(latents: torch.Tensor, upscaler: Upscaler, height: int, width: int) -> torch.Tensor:
    """Interpolate (B, C, h, w) latents to (B, C, height, width) with the upscaler's mode."""
    mode, antialias = LATENT_MODES[upscaler.name]
    kwargs = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    return torch.nn.functional.interpolate(latents, size=(height, width), mode=mode, **kwargs)


def upscale_image(image: Image.Image, upscaler: Upscaler, width: int, height: int) -> Image.Image:
    """``image`` resized to width x height by a pixel or model upscaler."""
    if upscaler.is_latent:
        raise RequestError(f"upscaler: {upscaler.name} works on latents and cannot upscale an image here")
    if upscaler.kind == "model":
        image = _model_upscale_until(image, upscaler, width, height)
        resample = Image.Resampling.LANCZOS
    else:
        resample = PIXEL_MODES[upscaler.name]
    if image.size == (width, height):
        return image
    return image.resize((width, height), resample)


def _model_upscale_until(image: Image.Image, upscaler: Upscaler, width: int, height: int) -> Image.Image:
    """Model passes until the image covers width x height. A pass runs only while no side is past the
    target, so no pass makes more than the model's factor times the target on a side (an image far
    from the target's aspect ratio would otherwise grow without bound); Lanczos does the rest."""
    model = load_model(upscaler.path)
    for _ in range(4):  # a 4x model reaches any sane target in at most a few passes
        covered = image.width >= width and image.height >= height
        past = image.width > width or image.height > height
        if covered or past:
            break
        image = run_model(model, image)
    return image


def load_model(path: Path):
    """An ESRGAN-family model through spandrel (architecture detected from the weights)."""
    import spandrel

    try:
        descriptor = spandrel.ModelLoader().load_from_file(str(path))
    except Exception as err:
        raise RequestError(f"upscaler: {path.name} could not be loaded as an upscaler model ({err})") from None
    return descriptor.eval()


@torch.no_grad()
def run_model(model, image: Image.Image) -> Image.Image:
    """One pass of an image-to-image upscaler model on an RGB image."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)
    y = model(x)[0].clamp(0, 1)
    return Image.fromarray((y.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8))
