"""Building the FastAPI app: routes, error handlers, and the services they are bound to."""

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse

from modules.services import VERSION, Services

from .compat_api import create_compat_router
from .controlnet import create_controlnet_router
from .errors import install_error_handlers
from .extras_api import create_extras_router
from .guard import MAX_BODY_BYTES, ApiGuard
from .jobs_api import create_jobs_router
from .models_api import create_models_router
from .sdapi import create_sdapi_router
from .train_api import create_train_router

DESCRIPTION = """
Easel's HTTP API.

* **/sdapi/v1**: AUTOMATIC1111's API (same paths, field names and defaults). Generation routes
  wait for their job; `info` in their answer is a JSON string. Where A1111 is lenient (sizes not a
  multiple of 8, nulls, unknown styles, samplers or override checkpoints), Easel is too and lists
  what it changed in `info.warnings`; the differences that remain are in docs/api.md.
* **/easel/v1/jobs**: submit a job and get its id at once (202), poll it, cancel it.
* **/easel/v1/train**: start a DreamBooth / LoRA / textual-inversion training (202), poll its loss and
  samples, cancel it (the same request resumes it).
* **/easel/v1/models**: install a model from a Hugging Face repo id or a URL (202; follow it with GET,
  cancel with DELETE; needs the server started with `--allow-downloads`), list and delete installed models.
* **/controlnet**: sd-webui-controlnet's routes: `model_list`, `module_list`, `version`, `settings`
  and `detect` (run a preprocessor; the control maps come back as base64 PNGs).

Every job goes through one FIFO queue; a model switch (`POST /sdapi/v1/options` with
`sd_model_checkpoint`) is a job too, so jobs queued before it still run on the old model.
Errors: 400 request cannot run as given (also: over a limit), 401 credentials missing or wrong
(when started with `--api-auth`; HTTP Basic), 404 unknown checkpoint or job, 413 request body too
large, 422 a field is missing or wrongly typed (named in `detail[].loc`), 429 the queue is full
(see `Retry-After`).
"""


def create_api(services: Services) -> APIRouter:
    """Every API route bound to ``services`` (the error handlers come with ``add_api``)."""
    router = APIRouter()
    router.include_router(create_sdapi_router(services))
    router.include_router(create_extras_router(services))
    router.include_router(create_compat_router(services))
    router.include_router(create_jobs_router(services))
    router.include_router(create_controlnet_router(services))
    router.include_router(create_train_router(services))
    router.include_router(create_models_router(services))
    return router


def add_api(app: FastAPI, services: Services, api_auth: list[tuple[str, str]] | None = None,
            max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """Add the API routes, error handlers and the ApiGuard (``api_auth`` credentials, body limit) to ``app``.

    The app must not have started serving yet, or its middleware stack must have been reset
    (``app.middleware_stack = None``) so the guard can be added.
    """
    app.state.services = services
    install_error_handlers(app)
    app.include_router(create_api(services))
    add_docs(app)
    extension_prefixes: list[str] = []
    app.add_middleware(ApiGuard, credentials=api_auth, max_body_bytes=max_body_bytes, extra_prefixes=extension_prefixes)
    before = {id(route) for route in app.routes}
    services.hooks.app_started(app, services)  # extensions add their routes, behind the same guard:
    extension_prefixes.extend(guarded_prefixes([r for r in app.routes if id(r) not in before]))
    return app


def guarded_prefixes(routes: list) -> list[str]:
    """The path prefixes (first segment) of routes extensions added, for the ApiGuard; an extension
    route at the root or under Gradio's own paths is guarded by its exact path."""
    out = []
    for route in routes:
        path = getattr(route, "path", "")
        segment = path.strip("/").split("/", 1)[0]
        if not segment:
            continue
        prefix = f"/{segment}/" if "/" in path.strip("/") and not segment.startswith(("{", "gradio", "file")) else path
        if prefix not in out:
            out.append(prefix)
    return out


def add_docs(app: FastAPI) -> None:
    """Serve ``/docs`` (Swagger UI) and ``/openapi.json`` on an app that has none, as Gradio's app
    (its docs are off): the README points API users there whether or not the UI is served."""
    if app.docs_url is not None:
        return
    if app.openapi_url is None:
        app.openapi_url = "/openapi.json"
        app.add_route(app.openapi_url, lambda request: JSONResponse(app.openapi()), include_in_schema=False)
    openapi_url = app.openapi_url
    app.add_route("/docs", lambda request: get_swagger_ui_html(openapi_url=openapi_url, title="Easel API"),
                  include_in_schema=False)


def create_app(services: Services, api_auth: list[tuple[str, str]] | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """A plain FastAPI app serving the API, documented at /docs (OpenAPI schema at /openapi.json).

    With ``api_auth`` every /sdapi, /easel and /controlnet route needs one of those HTTP Basic credentials;
    /docs and /openapi.json stay open (they hold no data).
    """
    app = FastAPI(title="Easel API", version=VERSION, description=DESCRIPTION, docs_url="/docs")
    return add_api(app, services, api_auth, max_body_bytes)


def serve_api(services: Services, host: str, port: int, api_auth: list[tuple[str, str]] | None = None) -> None:
    """A1111's --nowebui: the HTTP API alone, on uvicorn (``api_auth``: HTTP Basic credentials, or None)."""
    import uvicorn

    from modules.devices import freeze_startup_objects
    from modules.images import limit_decoded_pixels

    limit_decoded_pixels(services.settings.max_input_pixels)  # PIL's own limit, behind decode_image's
    app = create_app(services, api_auth)
    freeze_startup_objects()
    uvicorn.run(app, host=host, port=port)
