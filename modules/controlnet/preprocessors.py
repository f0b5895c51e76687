"""ControlNet preprocessors ("modules"): an image in, the control map a ControlNet expects out.

Names are sd-webui-controlnet's (internal name, and the UI alias in parentheses):

- ``none``: the image is the map, unchanged.
- ``canny``: OpenCV's Canny on the RGB image (as the extension does); threshold_a = low
  threshold (default 100), threshold_b = high threshold (default 200), both 1..255.
- ``invert`` ("invert (from white bg & black line)"): 255 - image, for black lines drawn on white.
- ``threshold``: white where every channel is above threshold_a (default 127, 0..255).
- ``scribble``: Easel's own, for a drawing made by hand: the map is white lines on black. The
  background is the image's median brightness: on a light background (median above 127) the
  dark strokes are the lines (the image is inverted), on a dark one the light strokes are. The
  result is binary (127 is the cut). An empty drawing is an error.
- ``scribble_xdog``: the extension's XDoG sketch (difference of Gaussians, OpenCV); threshold_a
  default 32, 1..64.
- ``lineart`` ("lineart_realistic"), ``depth`` ("depth_midas"), ``openpose``, ``hed``
  ("softedge_hed"): neural annotators of the ``controlnet-aux`` package, loaded only from local
  files in ``models/ControlNet/annotators/`` (names as in lllyasviel/Annotators); never downloaded.

The extension's other preprocessors (``EXTENSION_ONLY``: depth_leres, inpaint_only, reference_only,
ip-adapter_*, ...) are listed by ``list_modules(listed=True)`` (``GET /controlnet/module_list``), so
clients that pick names from that list find theirs; using one is a PreprocessorError that says Easel
does not run it.

Resolution (``processor_res``): before detection the image is resized so its short side is
``resolution`` (INTER_CUBIC up, INTER_AREA down, as the extension), and the map is returned at
that size; the caller fits it to the output. -1 means 512. ``none`` keeps the image's own size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from pydantic import AliasChoices, ConfigDict, Field

from modules.schemas import RequestError, RequestModel

DEFAULT_RESOLUTION = 512
MAX_RESOLUTION = 4096
CONTROLNET_AUX_VERSION = "0.0.10"
RESOLUTION_SLIDER = {"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048}


class PreprocessorError(RequestError):
    """A preprocessor parameter is wrong; ``field`` is the parameter ("module", "resolution",
    "threshold_a", "threshold_b" or "image") so an API can name its own field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Slider:
    """One preprocessor parameter as the extension's UI and ``module_detail`` describe it."""

    name: str
    value: float
    min: float
    max: float

    def api_json(self) -> dict:
        return {"name": self.name, "value": self.value, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class Module:
    """A preprocessor: its names, parameters and (for neural ones) the annotator files it needs."""

    name: str
    alias: str
    threshold_a: Slider | None = None
    threshold_b: Slider | None = None
    resolution: bool = True  # False: the image is used at its own size
    annotator_files: tuple[str, ...] = ()  # in models/ControlNet/annotators/

    def sliders(self) -> list[dict]:
        found = [RESOLUTION_SLIDER] if self.resolution else []
        return found + [s.api_json() for s in (self.threshold_a, self.threshold_b) if s is not None]


MODULES: dict[str, Module] = {m.name: m for m in (
    Module("none", "none", resolution=False),
    Module("canny", "canny", Slider("Canny Low Threshold", 100, 1, 255), Slider("Canny High Threshold", 200, 1, 255)),
    Module("invert", "invert (from white bg & black line)"),
    Module("threshold", "threshold", Slider("Binarization Threshold", 127, 0, 255)),
    Module("scribble", "scribble"),
    Module("scribble_xdog", "scribble_xdog", Slider("XDoG Threshold", 32, 1, 64)),
    Module("lineart", "lineart_realistic", annotator_files=("sk_model.pth", "sk_model2.pth")),
    Module("depth", "depth_midas", annotator_files=("dpt_hybrid-midas-501f0c75.pt",)),
    Module("openpose", "openpose", annotator_files=("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")),
    Module("hed", "softedge_hed", annotator_files=("ControlNetHED.pth",)),
)}


# sd-webui-controlnet's preprocessors (internal name, UI alias) that Easel does not run: listed, not available
EXTENSION_ONLY: tuple[tuple[str, str], ...] = (
    ("depth_leres", "depth_leres"), ("depth_leres++", "depth_leres++"), ("depth_zoe", "depth_zoe"),
    ("depth_anything", "depth_anything"), ("depth_hand_refiner", "depth_hand_refiner"),
    ("normal_map", "normal_midas"), ("normal_bae", "normal_bae"), ("hed_safe", "softedge_hedsafe"),
    ("pidinet", "softedge_pidinet"), ("pidinet_safe", "softedge_pidisafe"), ("te_hed", "softedge_teed"),
    ("pidinet_sketch", "t2ia_sketch_pidi"), ("pidinet_scribble", "scribble_pidinet"), ("scribble_hed", "scribble_hed"),
    ("mlsd", "mlsd"), ("openpose_hand", "openpose_hand"), ("openpose_face", "openpose_face"),
    ("openpose_faceonly", "openpose_faceonly"), ("openpose_full", "openpose_full"), ("dw_openpose_full", "dw_openpose_full"),
    ("animal_openpose", "animal_openpose"), ("densepose", "densepose (pruple bg & purple torso)"),
    ("densepose_parula", "densepose_parula (black bg & blue torso)"), ("mediapipe_face", "mediapipe_face"),
    ("segmentation", "seg_ufade20k"), ("oneformer_coco", "seg_ofcoco"), ("oneformer_ade20k", "seg_ofade20k"),
    ("anime_face_segment", "seg_anime_face"), ("lineart_coarse", "lineart_coarse"), ("lineart_anime", "lineart_anime"),
    ("lineart_anime_denoise", "lineart_anime_denoise"),
    ("lineart_standard", "lineart_standard (from white bg & black line)"), ("shuffle", "shuffle"),
    ("color", "t2ia_color_grid"), ("tile_resample", "tile_resample"), ("tile_colorfix", "tile_colorfix"),
    ("tile_colorfix+sharp", "tile_colorfix+sharp"), ("blur_gaussian", "blur_gaussian"),
    ("recolor_luminance", "recolor_luminance"), ("recolor_intensity", "recolor_intensity"),
    ("inpaint", "inpaint_global_harmonious"), ("inpaint_only", "inpaint_only"), ("inpaint_only+lama", "inpaint_only+lama"),
    ("reference_only", "reference_only"), ("reference_adain", "reference_adain"),
    ("reference_adain+attn", "reference_adain+attn"), ("clip_vision", "t2ia_style_clipvision"),
    ("revision_clipvision", "revision_clipvision"), ("revision_ignore_prompt", "revision_ignore_prompt"),
    ("ip-adapter_clip_sd15", "ip-adapter_clip_sd15"), ("ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl"),
    ("ip-adapter_clip_sdxl_plus_vith", "ip-adapter_clip_sdxl_plus_vith"), ("ip-adapter_face_id", "ip-adapter_face_id"),
    ("ip-adapter_face_id_plus", "ip-adapter_face_id_plus"), ("instant_id_face_embedding", "instant_id_face_embedding"),
    ("instant_id_face_keypoints", "instant_id_face_keypoints"),
)


@dataclass(frozen=True)
class Params:
    """Checked preprocessor parameters, defaults filled in."""

    module: Module
    resolution: int
    threshold_a: float | None
    threshold_b: float | None


def list_modules(alias_names: bool = False, listed: bool = False) -> list[str]:
    """The preprocessor names Easel runs (the extension's internal names, or its UI aliases); ``listed``: then
    the extension's others (``EXTENSION_ONLY``), as its module list has them."""
    names = [m.alias if alias_names else m.name for m in MODULES.values()]
    if listed:
        names += [alias if alias_names else name for name, alias in EXTENSION_ONLY]
    return names


def get_module(name: str | None) -> Module:
    """The module by internal name or alias (any case); unknown names, and the extension's modules Easel
    does not run, raise naming the choices."""
    wanted = (name or "none").strip().lower()
    for module in MODULES.values():
        if wanted in (module.name, module.alias.lower()):
            return module
    choices = ", ".join(MODULES)
    if any(wanted in (other, alias.lower()) for other, alias in EXTENSION_ONLY):
        raise PreprocessorError("module", f"module: {name!r} is one of sd-webui-controlnet's preprocessors, but it is not"
                                          f" available in Easel; the preprocessors Easel runs: {choices} (or send a"
                                          " ready control map with module none)")
    raise PreprocessorError("module", f"module: unknown preprocessor {name!r}; choose one of: {choices}")


def module_defaults(name: str) -> dict:
    """The extension's ``module_detail`` entry: ``{"model_free": False, "sliders": [...]}``."""
    return {"model_free": False, "sliders": get_module(name).sliders()}


def modules_detail(alias_names: bool = False, listed: bool = False) -> dict[str, dict]:
    """``module_detail`` for every module, keyed like ``list_modules(alias_names, listed)``; the extension's
    modules Easel does not run have the resolution slider only."""
    detail = {(m.alias if alias_names else m.name): module_defaults(m.name) for m in MODULES.values()}
    if listed:
        detail.update({(alias if alias_names else name): {"model_free": False, "sliders": [RESOLUTION_SLIDER]}
                       for name, alias in EXTENSION_ONLY})
    return detail


def _threshold(module: Module, slider: Slider | None, value: float, field: str) -> float | None:
    if slider is None:
        return None  # the module has no such parameter: the value is ignored, as in the extension
    if value is None or value < 0:
        return float(slider.value)
    if not slider.min <= value <= slider.max:
        raise PreprocessorError(field, f"{field}: {value:g} is outside {module.name}'s {slider.name} range "
                                       f"{slider.min:g}..{slider.max:g} (-1 for the default {slider.value:g})")
    return float(value)


def check_params(module: str, resolution: int = -1, threshold_a: float = -1, threshold_b: float = -1) -> Params:
    """Check a module's parameters and fill in its defaults (-1: default). Errors name the parameter."""
    found = get_module(module)
    res = DEFAULT_RESOLUTION if resolution is None or resolution < 0 else int(resolution)
    if not 1 <= res <= MAX_RESOLUTION:
        raise PreprocessorError("resolution",
                                f"resolution: {resolution} is outside 1..{MAX_RESOLUTION} (-1 for {DEFAULT_RESOLUTION})")
    return Params(found, res, _threshold(found, found.threshold_a, threshold_a, "threshold_a"),
                  _threshold(found, found.threshold_b, threshold_b, "threshold_b"))


def pixel_perfect_resolution(image_size: tuple[int, int], target_w: int, target_h: int, resize_mode: int) -> int:
    """The extension's pixel-perfect rule: the preprocessor resolution that maps the image exactly onto
    the output. ``image_size`` is (width, height); resize_mode 2 (Resize and Fill) fits the image
    inside the output, 0 and 1 (Just Resize, Crop and Resize) cover it."""
    raw_w, raw_h = image_size
    k_h, k_w = target_h / raw_h, target_w / raw_w
    k = min(k_h, k_w) if resize_mode == 2 else max(k_h, k_w)
    return int(np.round(k * min(raw_w, raw_h)))


def resize_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """Resize (H, W, C) uint8 so its short side is ``resolution`` (the other side rounded), as the extension.

    A map of more than MAX_RESOLUTION x MAX_RESOLUTION pixels (only a far-from-square image makes
    one: 100000x8 at 512 would be 6400000x512) is a PreprocessorError before anything is made."""
    h, w = image.shape[:2]
    k = resolution / min(h, w)
    size = (int(np.round(w * k)), int(np.round(h * k)))
    if size == (w, h):
        return image
    if size[0] * size[1] > MAX_RESOLUTION * MAX_RESOLUTION:
        raise PreprocessorError("image", f"image: {w}x{h} scaled so its short side is {resolution} would be"
                                f" {size[0]}x{size[1]}, more than {MAX_RESOLUTION}x{MAX_RESOLUTION} pixels:"
                                " crop the image closer to square or lower the preprocessor resolution")
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


def _rgb(single: np.ndarray) -> np.ndarray:
    return np.repeat(single[:, :, None], 3, axis=2) if single.ndim == 2 else single


def _scribble(img: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    lines = gray < 128 if np.median(gray) > 127 else gray > 127
    if not lines.any() or lines.all():
        raise PreprocessorError("image", "the scribble is empty: draw something (module scribble found no lines)")
    return _rgb(lines.astype(np.uint8) * 255)


def _xdog(img: np.ndarray, threshold: float) -> np.ndarray:
    g1 = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.5)
    g2 = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    return _rgb(((2 * (255 - dog.astype(np.int32))) > threshold).astype(np.uint8) * 255)


def _run_simple(p: Params, img: np.ndarray) -> np.ndarray:
    name = p.module.name
    if name == "canny":
        return _rgb(cv2.Canny(img, p.threshold_a, p.threshold_b))
    if name == "invert":
        return 255 - img
    if name == "threshold":
        return _rgb((img.min(axis=2) > p.threshold_a).astype(np.uint8) * 255)
    if name == "scribble":
        return _scribble(img)
    if name == "scribble_xdog":
        return _xdog(img, p.threshold_a)
    raise AssertionError(f"no simple runner for {name}")


def preprocess(module: str, image: Image.Image, resolution: int = -1, threshold_a: float = -1, threshold_b: float = -1,
               annotators_dir: Path | None = None, device: str = "cpu") -> Image.Image:
    """The RGB control map of ``image`` for ``module`` (see the module docstring for each one).

    ``annotators_dir`` (``models/ControlNet/annotators``) holds the neural annotators' weights.
    Bad parameters, an empty scribble, a missing annotator file or a missing controlnet-aux
    package raise RequestError (a PreprocessorError naming the parameter where one is at fault).
    """
    p = check_params(module, resolution, threshold_a, threshold_b)
    rgb = image.convert("RGB")
    if p.module.name == "none":
        return rgb
    arr = resize_short_side(np.asarray(rgb, dtype=np.uint8), p.resolution)
    if p.module.annotator_files:
        from modules.controlnet.annotators import run_annotator

        out = run_annotator(p.module, Image.fromarray(arr), p.resolution, annotators_dir, device)
        return out.convert("RGB").resize((arr.shape[1], arr.shape[0]), Image.Resampling.BILINEAR)
    return Image.fromarray(np.ascontiguousarray(_run_simple(p, arr)))


class DetectRequest(RequestModel):
    """A ``controlnet_detect`` job: preprocess ``images`` with one module (the preview of a control map).

    Parameters as in a ControlNet unit (-1: the module's default); ``images`` may also be given as
    ``controlnet_input_images`` and ``processor_res`` as ``resolution``. The job runs in
    ``modules.controlnet.detect``.
    """

    model_config = ConfigDict(extra="ignore", arbitrary_types_allowed=True, populate_by_name=True)

    mode: str = Field("controlnet_detect", frozen=True)
    module: str = "none"
    images: list[Any] = Field(default_factory=list, description="PIL images",
                              validation_alias=AliasChoices("images", "controlnet_input_images"))
    processor_res: int = Field(-1, validation_alias=AliasChoices("processor_res", "resolution"))
    threshold_a: float = -1.0
    threshold_b: float = -1.0
    device: str = "cpu"  # where the neural annotators run (the API sets the runtime's device)

    def check(self) -> Params:
        """Raise now (before queueing) for a bad module or parameter; the checked parameters."""
        return check_params(self.module, self.processor_res, self.threshold_a, self.threshold_b)
