"""``/sdapi/v1/extra-single-image`` and ``extra-batch-images``: A1111's extras upscale, one job per image.

As in A1111, ``upscaler_1`` "None" returns the image as it is, and face restoration asked for is
accepted (Easel has no face restorer: ``html_info`` says so, ``lenient.extras_leniency``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from modules.jobs import Job
from modules.schemas import ExtrasRequest, GenerationResult
from modules.services import Services

from .convert import ImageEncoding, InputBudget, build_core_request, check_no_scripts, decode_field, field_error
from .errors import NOT_SAVED_RESPONSES, not_saved_response
from .lenient import extras_leniency
from .models import ExtrasBatchBody, ExtrasBatchResponse, ExtrasBody, ExtrasResponse
from .sdapi import PREFIX, TAG, wait_for


def create_extras_router(services: Services) -> APIRouter:
    """The extras routes, bound to ``services``."""
    router = APIRouter(prefix=PREFIX, tags=[TAG])

    @router.post("/extra-single-image", response_model=ExtrasResponse, responses=NOT_SAVED_RESPONSES)
    async def extra_single_image(body: ExtrasBody) -> ExtrasResponse | JSONResponse:
        """Upscale one image with upscaler_1 (and upscaler_2 blended by extras_upscaler_2_visibility);
        upscaler_1 "None" returns it unchanged, as A1111 does."""
        job, warnings = await run_in_threadpool(submit_extras, body, body.image, ("image",),
                                                InputBudget.of(services.settings))
        result = await wait_for(job)
        if result is None:
            return ExtrasResponse(image=None, html_info="interrupted")
        answer = await run_in_threadpool(extras_answer, result, body, warnings)
        save_errors = result.save_errors if isinstance(result, GenerationResult) else []
        return not_saved_response(answer, save_errors) if save_errors else answer

    @router.post("/extra-batch-images", response_model=ExtrasBatchResponse, responses=NOT_SAVED_RESPONSES)
    async def extra_batch_images(body: ExtrasBatchBody) -> ExtrasBatchResponse | JSONResponse:
        """The extras upscale for each image of ``imageList`` (one job each, in order)."""
        submitted = await run_in_threadpool(submit_extras_batch, body)
        images, texts, save_errors = [], [], []
        for job, _ in submitted:
            result = await wait_for(job)
            if result is None:
                for rest, _ in submitted:
                    services.queue.cancel(rest.id)
                return ExtrasBatchResponse(images=images, html_info="interrupted")
            answer = await run_in_threadpool(extras_answer, result, body, submitted[0][1])
            images.append(answer.image)
            texts.append(answer.html_info)
            save_errors.extend(result.save_errors if isinstance(result, GenerationResult) else [])
        html = texts[0] if texts else ""
        answer = ExtrasBatchResponse(images=[i for i in images if i] if body.show_extras_results else [], html_info=html)
        return not_saved_response(answer, save_errors) if save_errors else answer

    def submit_extras(body: ExtrasBody, image_text: str, loc: tuple[Any, ...], budget: InputBudget,
                      ) -> tuple[Job, list[str]]:
        """Check an extras body, decode one image and queue its job (run it in a worker thread)."""
        check_no_scripts(body)
        image = decode_field(image_text, loc, budget)
        updates, warnings = extras_leniency(body)
        core = build_core_request(ExtrasRequest, body, services.settings, {"image": image, **updates})
        return services.submit("extras", core), warnings

    def submit_extras_batch(body: ExtrasBatchBody) -> list[tuple[Job, list[str]]]:
        """Queue one extras job per image; if one is refused, those queued are cancelled (worker thread)."""
        limit = services.settings.max_batch_images
        if len(body.imageList) > limit:
            raise field_error(("imageList",), f"{len(body.imageList)} images; at most {limit} per request"
                              " (setting max_batch_images)", len(body.imageList))
        budget = InputBudget.of(services.settings)
        submitted: list[tuple[Job, list[str]]] = []
        try:
            for i, item in enumerate(body.imageList):
                submitted.append(submit_extras(body, item.data, ("imageList", i, "data"), budget))
        except Exception:
            for job, _ in submitted:
                services.queue.cancel(job.id)
            raise
        return submitted

    def extras_answer(result: Any, body: ExtrasBody, warnings: list[str]) -> ExtrasResponse:
        """A1111's extras answer (the image encoded: run it in a worker thread); warnings end html_info."""
        out = result.images[0] if isinstance(result, GenerationResult) else result
        text = result.infotexts[0] if isinstance(result, GenerationResult) and result.infotexts else ""
        html_info = "\n".join([text, *warnings]) if text else "\n".join(warnings)
        if not body.show_extras_results:
            return ExtrasResponse(image=None, html_info=html_info)
        return ExtrasResponse(image=ImageEncoding.of(services.settings).encode(out, text or None), html_info=html_info)

    return router
