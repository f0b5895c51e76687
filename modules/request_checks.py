"""The checks every generation request passes before it is queued, whoever sent it (web UI, HTTP
API, command line): ``Services.submit`` and ``Services.submit_all`` call ``check_generation``.

A request that fails is a ``RequestError`` (HTTP 400, a one-line message in the UI) naming the
field or the limit: an unknown sampler or schedule type, a side over ``max_side``, more images
than ``max_batch_images``, or more sampling steps than ``MAX_IMAGE_STEPS`` over the whole batch
(all the cells of an X/Y grid together).
"""

from __future__ import annotations

from typing import Any

from modules import samplers
from modules.config import Settings
from modules.schemas import GenerationRequest, RequestError

GENERATION_KINDS = frozenset({"txt2img", "img2img", "inpaint", "outpaint"})


def check_generation(requests: list[GenerationRequest], settings: Settings) -> None:
    """Every check, for the requests one press or one HTTP request becomes (several for a grid)."""
    for request in requests:
        check_sampler(request, settings)
    check_limits(requests, settings)


def check_sampler(request: GenerationRequest, settings: Settings) -> None:
    """An unknown sampler or schedule type fails now (400, listing the valid names), not in the queue."""
    try:
        samplers.resolve(request.effective_sampler(settings.default_sampler), request.scheduler)
    except ValueError as err:
        raise RequestError(f"sampler_name: {err}") from None


# batch_size x n_iter x sampling steps (hires steps included) one request may ask for; with the
# field limits alone a request could ask for 64 x 100 x 150 steps and hold the queue for hours.
MAX_IMAGE_STEPS = 3000


def image_steps(request: Any) -> int:
    """Sampling steps a generation request will run: images x (steps + hires steps)."""
    steps = request.steps
    if getattr(request, "enable_hr", False):
        steps += request.hr_second_pass_steps or request.steps
    return request.batch_size * request.n_iter * steps


def check_limits(requests: list[Any], settings: Settings) -> None:
    """Refuse (400, naming the limit) requests over the size, batch or step limits, before they are queued.

    ``requests`` are the jobs one HTTP request becomes (several for an X/Y grid); the step limit
    counts them all together.
    """
    for request in requests:
        for name in ("width", "height", "seed_resize_from_w", "seed_resize_from_h"):
            value = getattr(request, name, None)
            if value is not None and value > settings.max_side:
                raise RequestError(f"{name}: {value} is larger than the limit of {settings.max_side} pixels"
                                   " (setting max_side)")
        images = request.batch_size * request.n_iter
        if images > settings.max_batch_images:
            raise RequestError(f"batch_size x n_iter = {images} images; at most {settings.max_batch_images} per"
                               " request (setting max_batch_images)")
    total = sum(image_steps(r) for r in requests)
    if total > MAX_IMAGE_STEPS:
        cells = f" over {len(requests)} grid cells" if len(requests) > 1 else ""
        raise RequestError(f"batch_size x n_iter x steps = {total} sampling steps{cells}; at most {MAX_IMAGE_STEPS}"
                           " per request: lower batch_size, n_iter or steps")
