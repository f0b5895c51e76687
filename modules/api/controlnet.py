"""The ``/controlnet`` routes of sd-webui-controlnet's API: model and module lists, and detect.

``POST /controlnet/detect`` runs a preprocessor as a ``controlnet_detect`` job in the one queue
(the worker is the only thing that touches the device) and waits for it. A bad module,
parameter or image is a 422 naming the body field; an empty scribble or a missing annotator
is a 400 with the reason.
"""

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from modules.controlnet import preprocessors
from modules.controlnet.preprocessors import DetectRequest
from modules.images import encode_image_base64
from modules.jobs import Job
from modules.schemas import MAX_CONTROLNET_UNITS, RequestModel
from modules.services import Services

from .convert import InputBudget, decode_field, field_error
from .sdapi import wait_for

PREFIX = "/controlnet"
TAG = "controlnet (sd-webui-controlnet compatible)"
API_VERSION = 2
# PreprocessorError.field -> the detect body's field
BODY_FIELDS = {"module": "controlnet_module", "resolution": "controlnet_processor_res",
               "threshold_a": "controlnet_threshold_a", "threshold_b": "controlnet_threshold_b"}


class DetectBody(RequestModel):
    """sd-webui-controlnet's detect body (``controlnet_masks`` and ``low_vram`` are accepted and unused)."""

    model_config = ConfigDict(extra="ignore")

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list, description="base64 images")
    controlnet_processor_res: int = Field(-1, description="short side before detection; -1 = 512")
    controlnet_threshold_a: float = Field(-1, description="the module's first parameter; -1 = its default")
    controlnet_threshold_b: float = Field(-1, description="the module's second parameter; -1 = its default")
    controlnet_masks: list[str] = Field(default_factory=list)
    low_vram: bool = False


class DetectResponse(BaseModel):
    images: list[str] = Field(description="base64 PNG control maps, one per input image")
    info: str = "Success"


def detect_request(body: DetectBody, device: str, budget: InputBudget) -> DetectRequest:
    """The job request for a detect body, images decoded within ``budget``; raises 422 naming the body field
    that is wrong (413 for an image too large)."""
    try:
        params = preprocessors.check_params(body.controlnet_module, body.controlnet_processor_res,
                                            body.controlnet_threshold_a, body.controlnet_threshold_b)
    except preprocessors.PreprocessorError as err:
        name = BODY_FIELDS.get(err.field, err.field)
        raise field_error((name,), str(err).split(": ", 1)[-1], getattr(body, name, None)) from None
    if not body.controlnet_input_images:
        raise field_error(("controlnet_input_images",), "no image given: send at least one base64 image")
    images = [decode_field(text, ("controlnet_input_images", i), budget)
              for i, text in enumerate(body.controlnet_input_images)]
    return DetectRequest(module=params.module.name, images=images, processor_res=body.controlnet_processor_res,
                         threshold_a=body.controlnet_threshold_a, threshold_b=body.controlnet_threshold_b, device=device)


# sd-webui-controlnet's control types and the word that picks their preprocessors and models
CONTROL_TYPES = {"Canny": ("canny",), "Depth": ("depth",), "NormalMap": ("normal",), "OpenPose": ("openpose",),
                 "MLSD": ("mlsd",), "Lineart": ("lineart",), "SoftEdge": ("softedge", "hed", "pidi"),
                 "Scribble/Sketch": ("scribble", "sketch"), "Segmentation": ("seg",), "Shuffle": ("shuffle",),
                 "Tile/Blur": ("tile", "blur"), "Inpaint": ("inpaint",), "Reference": ("reference",)}


def control_type_table(modules: list[str], models: list[str]) -> dict[str, dict[str, Any]]:
    """``/controlnet/control_types``: "All", then each type with the modules and models whose names match it."""
    table = {"All": {"module_list": modules, "model_list": ["None", *models], "default_option": "none",
                     "default_model": "None"}}
    for label, words in CONTROL_TYPES.items():
        picked = [m for m in modules if any(w in m.lower() for w in words)]
        picked_models = [m for m in models if any(w in m.lower() for w in words)]
        table[label] = {"module_list": ["none", *picked], "model_list": ["None", *picked_models],
                        "default_option": picked[0] if picked else "none",
                        "default_model": picked_models[0] if picked_models else "None"}
    return table


def create_controlnet_router(services: Services) -> APIRouter:
    """The /controlnet routes, bound to ``services``."""
    router = APIRouter(prefix=PREFIX, tags=[TAG])

    @router.get("/version")
    async def version() -> dict[str, int]:
        return {"version": API_VERSION}

    @router.get("/model_list")
    def model_list(update: bool = Query(True, description="accepted; the folder is read at every call")) -> dict[str, list[str]]:
        """ControlNet titles (``name [hash]``) in models/ControlNet, without "None"."""
        return {"model_list": [info.name for info in services.controlnet_infos()]}

    @router.get("/module_list")
    async def module_list(alias_names: bool = Query(False)) -> dict[str, Any]:
        """Preprocessor names (or UI aliases) and their sliders (``module_detail``): the ones Easel runs, then
        the extension's others, listed as it lists them; a unit or detect that uses one of those is a 422
        saying it is not available."""
        return {"module_list": preprocessors.list_modules(alias_names, listed=True),
                "module_detail": preprocessors.modules_detail(alias_names, listed=True)}

    @router.get("/control_types")
    def control_types() -> dict[str, dict[str, dict[str, Any]]]:
        """The extension's control types: for each, the preprocessors and installed models it filters to."""
        models = [info.name for info in services.controlnet_infos()]
        return {"control_types": control_type_table(preprocessors.list_modules(), models)}

    @router.get("/settings")
    async def settings() -> dict[str, int]:
        return {"control_net_unit_count": MAX_CONTROLNET_UNITS}

    @router.post("/detect", response_model=DetectResponse)
    async def detect(body: DetectBody) -> DetectResponse:
        """Run a preprocessor on each image; the maps come back as base64 PNGs, in order.

        The images are decoded and the maps encoded in the thread pool; the wait holds no thread."""
        maps = await wait_for(await run_in_threadpool(submit_detect, body))
        if maps is None:
            return DetectResponse(images=[], info="Interrupted")
        return DetectResponse(images=await run_in_threadpool(lambda: [encode_image_base64(m) for m in maps]))

    def submit_detect(body: DetectBody) -> Job:
        request = detect_request(body, services.runtime.device, InputBudget.of(services.settings))
        return services.submit("controlnet_detect", request)

    return router
