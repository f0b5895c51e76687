"""``/sdapi/v1`` routes A1111 clients probe that Easel answers in A1111's shapes with little or nothing:
lists of what Easel does not have (hypernetworks, face restorers, RealESRGAN models: empty), the extensions,
``script-info``, ``interrogate`` (Easel's shapes-world reader; a 404 naming what is missing otherwise)
and the reload/refresh/unload routes (Easel loads on demand and reads its folders at each use).
"""

from __future__ import annotations

from fastapi import APIRouter

from modules import interrogate as captions
from modules.services import Services

from . import scripts
from .builtin_scripts import script_info_args
from .convert import BUILTIN_ALWAYSON, CONTROLNET_SCRIPT, InputBudget, decode_field
from .errors import ModelNotInstalled
from .models import (
    ExtensionItem,
    FaceRestorerItem,
    HypernetworkItem,
    InterrogateBody,
    InterrogateResponse,
    RealesrganItem,
    ScriptArg,
    ScriptInfo,
)
from .sdapi import PREFIX, TAG


def extension_script_info(services: Services) -> list[ScriptInfo]:
    """The loaded extensions' scripts (and Easel's built-in ones written on the same API), A1111's shape."""
    if services.extensions is None:
        return []
    out = []
    for is_img2img in (False, True):
        for entry in services.extensions.scripts_for(is_img2img):
            out.append(ScriptInfo(name=entry.title.lower(), is_alwayson=entry.alwayson, is_img2img=is_img2img,
                                  args=[ScriptArg(**arg) for arg in entry.ui_args(is_img2img)]))
    return out


def create_compat_router(services: Services) -> APIRouter:
    """The probe routes, bound to ``services``."""
    router = APIRouter(prefix=PREFIX, tags=[TAG])

    @router.get("/script-info", response_model=list[ScriptInfo])
    async def get_script_info() -> list[ScriptInfo]:
        """The scripts of /sdapi/v1/scripts in A1111's shape (their positional args are described there)."""
        selectable = [ScriptInfo(name=name, is_alwayson=False, is_img2img=kind == "img2img", args=[])
                      for kind, names in scripts.SCRIPTS.items() for name in names]
        alwayson = [ScriptInfo(name=name, is_alwayson=True, is_img2img=kind == "img2img",
                               args=[ScriptArg(**arg) for arg in script_info_args(name)])
                    for kind, names in BUILTIN_ALWAYSON.items() for name in (CONTROLNET_SCRIPT, *names)]
        return selectable + alwayson + extension_script_info(services)

    @router.get("/hypernetworks", response_model=list[HypernetworkItem])
    async def get_hypernetworks() -> list[HypernetworkItem]:
        """Easel has no hypernetworks: always empty (A1111's shape)."""
        return []

    @router.get("/face-restorers", response_model=list[FaceRestorerItem])
    async def get_face_restorers() -> list[FaceRestorerItem]:
        """Easel has no face restorer: always empty (A1111's shape)."""
        return []

    @router.get("/realesrgan-models", response_model=list[RealesrganItem])
    async def get_realesrgan_models() -> list[RealesrganItem]:
        """Easel has no RealESRGAN list of its own (model upscalers of models/ESRGAN are under /upscalers): empty."""
        return []

    @router.get("/extensions", response_model=list[ExtensionItem])
    def get_extensions() -> list[ExtensionItem]:
        """The extensions in the extensions folder (A1111's shape; git fields empty for a folder that is
        not a git checkout). ``enabled`` is the user's choice; one that failed to load is listed too."""
        extensions = services.extensions
        if extensions is None:
            return []
        return [ExtensionItem(name=e.name, enabled=e.enabled, **e.git_info()) for e in extensions.items if not e.builtin]

    @router.post("/interrogate", response_model=InterrogateResponse,
                 responses={404: {"description": "no interrogator for this model or this image (the message says why)"}})
    def interrogate(body: InterrogateBody) -> InterrogateResponse:
        """A1111's caption of an image. Easel's interrogator ("clip", "shapes") reads the bundled model's shapes
        world back into its captions; other images, and A1111's own models, get a 404 naming what is missing."""
        image = decode_field(body.image, ("image",), InputBudget.of(services.settings))
        try:
            return InterrogateResponse(caption=captions.interrogate(image, body.model))
        except captions.NoCaption as err:
            raise ModelNotInstalled(str(err)) from None

    @router.post("/unload-checkpoint")
    def unload_checkpoint() -> dict:
        """Drop the checkpoints no running job uses from memory; the next job loads its own again."""
        services.models.clear()
        return {}

    @router.post("/reload-checkpoint")
    async def reload_checkpoint() -> dict:
        """Accepted: the next job loads the checkpoint it needs."""
        return {}

    @router.post("/refresh-embeddings")
    async def refresh_embeddings() -> dict:
        """Accepted: the embeddings folder is read when a job or /embeddings needs it."""
        return {}

    @router.post("/refresh-vae")
    async def refresh_vae() -> dict:
        """Accepted: models/VAE is read at every /sd-vae call and every job."""
        return {}

    return router
