"""Neural preprocessors through ``controlnet-aux``, from local annotator files only.

The weights are lllyasviel/Annotators' files, placed by the user in
``models/ControlNet/annotators/``; ``from_pretrained`` is always given that folder (with
``local_files_only=True``), so nothing is ever downloaded. The files are checked first, then
the package is imported (lazily: it needs torchvision, which the CPU install does not carry; the
CUDA branch of ``launch.sh`` installs it). A detector is loaded for each call and dropped after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from modules.controlnet.preprocessors import CONTROLNET_AUX_VERSION, Module
from modules.schemas import RequestError

DEFAULT_DIR = Path("models") / "ControlNet" / "annotators"


def missing_files(module: Module, annotators_dir: Path | None) -> list[Path]:
    """The annotator files ``module`` needs that are not in ``annotators_dir``."""
    folder = annotators_dir or DEFAULT_DIR
    return [folder / name for name in module.annotator_files if not (folder / name).is_file()]


def _detector(module: Module, folder: str) -> Any:
    import controlnet_aux

    if module.name == "lineart":
        return controlnet_aux.LineartDetector.from_pretrained(folder, local_files_only=True)
    if module.name == "depth":
        return controlnet_aux.MidasDetector.from_pretrained(
            folder, model_type="dpt_hybrid", filename=module.annotator_files[0], local_files_only=True)
    if module.name == "openpose":
        return controlnet_aux.OpenposeDetector.from_pretrained(folder, local_files_only=True)
    if module.name == "hed":
        return controlnet_aux.HEDdetector.from_pretrained(folder, filename=module.annotator_files[0], local_files_only=True)
    raise AssertionError(f"no annotator for {module.name}")


def run_annotator(module: Module, image: Image.Image, resolution: int, annotators_dir: Path | None,
                  device: str = "cpu") -> Image.Image:
    """Run ``module``'s controlnet-aux detector on ``image`` (already at the detection size)."""
    missing = missing_files(module, annotators_dir)
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise RequestError(
            f"module {module.alias}: annotator weights missing: place {names} (files of the same names from "
            "lllyasviel/Annotators); Easel never downloads them"
        )
    try:
        import controlnet_aux  # noqa: F401
    except Exception as err:  # ImportError, or a broken torchvision underneath
        raise RequestError(
            f"module {module.alias} needs the controlnet-aux package (pip install controlnet-aux=={CONTROLNET_AUX_VERSION}), "
            f"not installed ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        ) from None
    folder = str(annotators_dir or DEFAULT_DIR)
    try:
        detector = _detector(module, folder).to(device)
    except Exception as err:  # a damaged or wrong file
        raise RequestError(f"module {module.alias}: the annotator weights in {folder} could not be loaded: {err}") from None
    kwargs: dict[str, Any] = {"detect_resolution": resolution, "image_resolution": resolution, "output_type": "pil"}
    if module.name == "openpose":
        kwargs.update(include_body=True, include_hand=False, include_face=False)
    return detector(image, **kwargs)
