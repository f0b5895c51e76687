"""Easel's hook registry: the named points where extensions run code, held by ``Services.hooks``.

Extensions (``modules.a1111_compat`` for A1111-style ones, or Easel's own) register plain
callables on named points; Easel's modules call the registry at those points. Nothing is
monkeypatched and nothing is global: each ``Services`` has its own registry.

Hook points, each called with one typed event object (a hook changes what it may by setting the
event's fields; the return value is ignored):

=====================  =============================  ==============================================
point                  caller                         event (fields a hook may set)
=====================  =============================  ==============================================
before_process         ``Services.run_job``           ProcessEvent (``request``)
after_process          ``Services.run_job``           ProcessEvent (``result`` is set)
batch                  txt2img / img2img, per batch   BatchEvent
image_decoded          txt2img / img2img, per image   ImageEvent (``image``)
before_image_saved     ``HookedSaver``                SaveEvent (``image``, ``infotext``)
image_saved            ``HookedSaver``                SaveEvent (``path`` is set)
model_loaded           the model cache's loader       ModelEvent
app_started            ``modules.api.app.add_api``    AppEvent (add routes to ``app``)
ui_built               ``webui.app.create_ui``        UiEvent (``add_tab``, ``add_option``)
cfg_denoiser           the sampling core, per step    CFGDenoiserParams (``x``, ``text_cond``, ...)
=====================  =============================  ==============================================

``around_process`` is the one middleware point: ``fn(event, proceed) -> result`` wraps the mode's
runner (A1111 scripts use it to run ``process_images`` their way); ``proceed(request, ctx=None)``
runs the rest (on another RunContext when given, e.g. one reporting progress differently).

Every hook call is isolated: an exception is logged, recorded in ``errors`` (shown in the
Extensions tab, with the owner's name) and the job goes on without that hook.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.images import ImageOutputs, ImageSaver

logger = logging.getLogger(__name__)

HOOK_POINTS = ("before_process", "after_process", "batch", "image_decoded", "before_image_saved", "image_saved",
               "model_loaded", "app_started", "ui_built", "cfg_denoiser", "around_process")
MAX_ERRORS = 200


@dataclass
class ProcessEvent:
    kind: str  # txt2img, img2img, inpaint, outpaint, ...
    request: Any  # the typed request; a before_process hook may replace it
    ctx: Any = None  # the job's RunContext
    result: Any = None  # after_process: the GenerationResult


@dataclass
class BatchEvent:
    kind: str
    request: Any
    index: int  # batch number (0 .. n_iter - 1)
    seeds: list[int]
    subseeds: list[int]
    ctx: Any = None


@dataclass
class ImageEvent:
    kind: str
    request: Any
    index: int  # batch number
    position: int  # place in the batch
    image: Any  # PIL image after decode; a hook may replace it
    seed: int
    ctx: Any = None


@dataclass
class SaveEvent:
    image: Any
    infotext: str
    outdir: Path
    seed: int
    path: Path | str | None = None  # image_saved: where it went (a str: a URL, the serve command's --outputs-url)


@dataclass
class ModelEvent:
    model: Any  # modules.model_loading.LoadedModel


@dataclass
class AppEvent:
    app: Any  # the FastAPI app: add routes with app.add_api_route / include_router
    services: Any
    demo: Any = None  # the gradio Blocks when the UI is served


@dataclass
class UiTab:
    title: str
    elem_id: str
    build: Callable[[], Any]  # builds the tab's components (called inside the tab); or returns a Blocks to render


@dataclass
class UiOption:
    key: str
    default: Any
    label: str
    section: tuple[str, str] = ("extensions", "Extensions")  # (id, title)
    component: str = "textbox"  # textbox, checkbox, number, slider, dropdown, radio
    choices: list[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    info: str = ""
    owner: str = "easel"


@dataclass
class UiEvent:
    services: Any
    tabs: list[UiTab] = field(default_factory=list)
    options: list[UiOption] = field(default_factory=list)

    def add_tab(self, title: str, build: Callable[[], Any], elem_id: str | None = None) -> None:
        self.tabs.append(UiTab(title, elem_id or title.lower().replace(" ", "_"), build))

    def add_option(self, option: UiOption) -> None:
        self.options = [o for o in self.options if o.key != option.key] + [option]


@dataclass
class CFGDenoiserParams:
    """One denoiser call of the sampling core, as A1111's ``CFGDenoiserParams``: a hook may replace
    ``x``, ``image_cond``, ``text_cond`` and ``text_uncond`` (the core uses what it gets back)."""

    x: Any  # the latents at this step (batch, channels, h, w)
    image_cond: Any  # inpainting/img2img conditioning (None where the model has none)
    sigma: Any  # the noise level(s) of this call
    sampling_step: int  # 0-based
    total_sampling_steps: int
    text_cond: Any  # the prompt's conditioning tensor(s)
    text_uncond: Any  # the negative prompt's
    denoiser: Any = None


@dataclass(frozen=True)
class Hook:
    point: str
    fn: Callable[..., Any]
    owner: str
    order: int


@dataclass(frozen=True)
class HookError:
    owner: str
    point: str
    message: str
    when: float
    trace: str = ""


class HookRegistry:
    """Named hook points; hooks run in (order, registration) order, each isolated from the others."""

    def __init__(self) -> None:
        self._hooks: dict[str, list[Hook]] = {point: [] for point in HOOK_POINTS}
        self._lock = threading.Lock()
        self.errors: deque[HookError] = deque(maxlen=MAX_ERRORS)

    # -- registering ------------------------------------------------------------------------
    def add(self, point: str, fn: Callable[..., Any], owner: str = "easel", order: int = 0) -> Hook:
        if point not in self._hooks:
            raise ValueError(f"unknown hook point {point!r}; known: {', '.join(HOOK_POINTS)}")
        if not callable(fn):
            raise TypeError(f"hook for {point!r} must be callable, got {type(fn).__name__}")
        hook = Hook(point, fn, owner, order)
        with self._lock:
            hooks = [*self._hooks[point], hook]
            hooks.sort(key=lambda h: h.order)  # stable: same order keeps registration order
            self._hooks[point] = hooks
        return hook

    def remove_owner(self, owner: str) -> int:
        """Drop every hook ``owner`` registered (an extension unloaded); returns how many."""
        removed = 0
        with self._lock:
            for point, hooks in self._hooks.items():
                kept = [h for h in hooks if h.owner != owner]
                removed += len(hooks) - len(kept)
                self._hooks[point] = kept
        return removed

    def hooks(self, point: str) -> list[Hook]:
        return list(self._hooks[point])

    def has(self, point: str) -> bool:
        return bool(self._hooks[point])

    # -- calling ----------------------------------------------------------------------------
    def record(self, owner: str, point: str, err: BaseException) -> None:
        message = f"{type(err).__name__}: {err}".strip()
        logger.error("extension %s failed in hook %s: %s", owner, point, message)
        self.errors.append(HookError(owner, point, message, time.time(), traceback.format_exc(limit=8)))

    def call(self, point: str, event: Any) -> Any:
        """Run every hook of ``point`` on ``event``; a hook that raises is recorded and skipped."""
        for hook in self._hooks[point]:
            try:
                hook.fn(event)
            except Exception as err:  # noqa: BLE001 - an extension's fault must not fail the job
                self.record(hook.owner, point, err)
        return event

    def errors_of(self, owner: str) -> list[HookError]:
        return [e for e in self.errors if e.owner == owner]

    # -- typed entry points -----------------------------------------------------------------
    def run_processing(self, kind: str, request: Any, ctx: Any, runner: Callable[[Any, Any], Any]) -> Any:
        """``runner(request, ctx)`` with before_process, around_process and after_process around it."""
        event = self.call("before_process", ProcessEvent(kind, request, ctx))
        chain = self.hooks("around_process")

        def proceed_from(i: int) -> Callable[..., Any]:
            def proceed(req: Any, run_ctx: Any = None) -> Any:  # run_ctx: another context (e.g. its own progress)
                if i == len(chain):
                    return runner(req, run_ctx or ctx)
                return chain[i].fn(ProcessEvent(kind, req, run_ctx or ctx), proceed_from(i + 1))
            return proceed

        result = proceed_from(0)(event.request)  # a middleware's own exception fails the job (it ran the job)
        event.result = result
        self.call("after_process", event)
        return event.result

    def batch(self, kind: str, request: Any, index: int, seeds: list[int], subseeds: list[int], ctx: Any = None) -> None:
        if self._hooks["batch"]:
            self.call("batch", BatchEvent(kind, request, index, list(seeds), list(subseeds), ctx))

    def images_decoded(self, kind: str, request: Any, index: int, images: list, seeds: list[int], ctx: Any = None) -> list:
        """Each decoded image of a batch through ``image_decoded``; returns the (possibly replaced) images."""
        if not self._hooks["image_decoded"]:
            return images
        out = []
        for position, (image, seed) in enumerate(zip(images, seeds, strict=False)):
            out.append(self.call("image_decoded", ImageEvent(kind, request, index, position, image, seed, ctx)).image)
        return out

    def model_loaded(self, model: Any) -> None:
        self.call("model_loaded", ModelEvent(model))

    def app_started(self, app: Any, services: Any, demo: Any = None) -> None:
        self.call("app_started", AppEvent(app, services, demo))

    def ui_built(self, services: Any) -> UiEvent:
        return self.call("ui_built", UiEvent(services))

    def cfg_denoiser(self, params: CFGDenoiserParams) -> CFGDenoiserParams:
        """Called by the sampling core before each denoiser call; returns ``params`` as the hooks left them."""
        if self._hooks["cfg_denoiser"]:
            self.call("cfg_denoiser", params)
        return params


class OwnedHooks:
    """The registry as one extension sees it: every hook it adds is recorded under its name
    (``register(hooks, services)`` of an extension's ``extension.py`` gets one)."""

    def __init__(self, registry: HookRegistry, owner: str) -> None:
        self.registry = registry
        self.owner = owner

    def add(self, point: str, fn: Callable[..., Any], order: int = 0) -> Hook:
        return self.registry.add(point, fn, owner=self.owner, order=order)


class HookedSaver(ImageSaver):
    """The image saver with ``before_image_saved`` / ``image_saved`` hooks around each save."""

    def __init__(self, file_format: str, hooks: HookRegistry, outputs: ImageOutputs | None = None) -> None:
        super().__init__(file_format, outputs)
        self.hooks = hooks

    def save_image(self, image, outdir, seed, infotext, **kwargs) -> Path | str:  # noqa: ANN001 - ImageSaver's
        event = self.hooks.call("before_image_saved", SaveEvent(image, infotext, Path(outdir), seed))
        path = super().save_image(event.image, outdir, seed, event.infotext, **kwargs)
        event.path = path
        self.hooks.call("image_saved", event)
        return path
