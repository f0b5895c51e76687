"""``modules.processing`` for A1111 scripts: the ``p`` object, ``process_images`` and ``Processed``.

``p`` is built from Easel's typed request and carries A1111's field names. ``process_images(p)``
follows A1111's order (before_process, process, per batch: before_process_batch, process_batch,
the images, postprocess_batch, postprocess_image per image, then postprocess) and runs the
images through Easel's own mode runner, one call per batch; images of a batch whose prompts
differ (``p.all_prompts`` rewritten by a script) are generated one by one, each with its own
seed, so every image is what its own prompt and seed give. ``p.extra_generation_params`` are
written to every image's infotext.
"""

from __future__ import annotations

import json
from typing import Any

from modules import infotext as infotext_mod
from modules.schemas import GenerationResult

from . import runtime
from .scripts import LoadedScript, PostprocessBatchListArgs, PostprocessImageArgs

# request field -> p attribute, copied both ways
FIELDS = ("prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h",
          "seed_resize_from_w", "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width",
          "height", "clip_skip", "tiling", "override_settings", "denoising_strength", "enable_hr", "hr_scale",
          "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_prompt", "hr_negative_prompt",
          "init_images", "mask", "mask_blur", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
          "inpainting_mask_invert", "resize_mode")


class StableDiffusionProcessing:
    """A1111's processing object. Scripts read and change its fields; ``process_images`` runs it."""

    def __init__(self, **kwargs: Any) -> None:
        self.prompt = ""
        self.negative_prompt = ""
        self.styles: list[str] = []
        self.seed = -1
        self.subseed = -1
        self.subseed_strength = 0.0
        self.sampler_name: str | None = None
        self.batch_size = 1
        self.n_iter = 1
        self.steps = 20
        self.cfg_scale = 7.0
        self.width: int | None = 512
        self.height: int | None = 512
        self.denoising_strength: float | None = None
        self.init_images: list[Any] = []
        self.extra_generation_params: dict[str, Any] = {}
        self.override_settings: dict[str, Any] = {}
        self.all_prompts: list[str] | None = None
        self.all_negative_prompts: list[str] | None = None
        self.all_hr_prompts: list[str] | None = None
        self.all_hr_negative_prompts: list[str] | None = None
        self.all_seeds: list[int] | None = None
        self.all_subseeds: list[int] | None = None
        self.outpath_samples: str | None = None
        self.outpath_grids: str | None = None
        self.do_not_save_samples = False
        self.do_not_save_grid = False
        self.comments: dict[str, Any] = {}
        self.iteration = 0
        self.batch_index = 0
        self.scripts = None
        self.script_args: list[Any] = []
        self.sd_model = kwargs.pop("sd_model", None)
        self.is_img2img = False
        self._request: Any = None  # the Easel request it was built from (None: built by a script)
        self._auto_size: tuple[int, int] | None = None  # width, height filled in from the model or init image
        self._kind = "txt2img"
        self._run: list[tuple[LoadedScript, list[Any]]] = []  # the always-on scripts and their args
        for key, value in kwargs.items():
            setattr(self, key, value)

    # A1111 names that are properties of the request in Easel
    @property
    def sampler(self) -> str | None:
        return self.sampler_name

    def setup_prompts(self) -> None:
        """``all_*`` lists, one entry per image (A1111's ``setup_prompts``), unless a script set them."""
        total = self.batch_size * self.n_iter
        if not self.all_prompts:
            self.all_prompts = [self.prompt] * total
        if not self.all_negative_prompts:
            self.all_negative_prompts = [self.negative_prompt] * total
        hr = getattr(self, "hr_prompt", "") or self.prompt
        hr_neg = getattr(self, "hr_negative_prompt", "") or self.negative_prompt
        if not self.all_hr_prompts:
            self.all_hr_prompts = [hr] * total
        if not self.all_hr_negative_prompts:
            self.all_hr_negative_prompts = [hr_neg] * total

    def setup_seeds(self) -> None:
        from modules import seeds

        total = self.batch_size * self.n_iter
        if not self.all_seeds:
            seed = seeds.resolve_seed(int(self.seed if self.seed is not None else -1))
            self.seed = seed
            self.all_seeds = [(seed + i) % (seeds.MAX_SEED + 1) for i in range(total)]
        if not self.all_subseeds:
            subseed = seeds.resolve_seed(int(self.subseed if self.subseed is not None else -1))
            self.subseed = subseed
            self.all_subseeds = [(subseed + i) % (seeds.MAX_SEED + 1) for i in range(total)]


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, **kwargs: Any) -> None:
        self.enable_hr = False
        self.hr_prompt = ""
        self.hr_negative_prompt = ""
        super().__init__(**kwargs)


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.is_img2img = True
        self._kind = "img2img"
        if self.denoising_strength is None:
            self.denoising_strength = 0.75


class Processed:
    """A1111's result object (``images``, ``infotexts``, ``all_*``, ``info``)."""

    images: list[Any]
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    subseed: int = -1
    all_prompts: list[str] | None = None
    all_negative_prompts: list[str] | None = None
    all_seeds: list[int] | None = None
    all_subseeds: list[int] | None = None
    infotexts: list[str] | None = None
    info: str = ""
    index_of_first_image: int = 0
    comments: str = ""
    width: int = 0
    height: int = 0
    sampler_name: str = ""
    steps: int = 0
    cfg_scale: float = 0.0
    result: GenerationResult | None = None  # Easel's result, when process_images made it

    def __init__(self, p: StableDiffusionProcessing, images_list: list[Any], seed: int = -1, info: str = "",
                 subseed: int | None = None, all_prompts: list[str] | None = None,
                 all_negative_prompts: list[str] | None = None, all_seeds: list[int] | None = None,
                 all_subseeds: list[int] | None = None, index_of_first_image: int = 0,
                 infotexts: list[str] | None = None, comments: str = "", **_: Any) -> None:
        self.images = list(images_list)
        self.prompt, self.negative_prompt = p.prompt, p.negative_prompt
        self.seed = seed
        self.subseed = subseed if subseed is not None else -1
        self.all_prompts = all_prompts or p.all_prompts or [p.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [p.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(self.images)
        self.info = info or (self.infotexts[0] if self.infotexts else "")
        self.index_of_first_image = index_of_first_image
        self.comments = comments
        self.width, self.height = p.width or 0, p.height or 0
        self.sampler_name, self.steps, self.cfg_scale = p.sampler_name or "", p.steps, p.cfg_scale
        self.result = None

    def js(self) -> str:
        return json.dumps({"prompt": self.prompt, "all_prompts": self.all_prompts, "seed": self.seed,
                           "all_seeds": self.all_seeds, "infotexts": self.infotexts})


def from_request(kind: str, request: Any, ctx: Any) -> StableDiffusionProcessing:
    cls = StableDiffusionProcessingImg2Img if kind in ("img2img", "inpaint") else StableDiffusionProcessingTxt2Img
    p = cls()
    for name in FIELDS:
        if name in type(request).model_fields:
            setattr(p, name, getattr(request, name))
    p._request, p._kind = request, kind
    if ctx is not None and ctx.model is not None:
        p.sd_model = ctx.model
        native = ctx.model.native_size
        if p.is_img2img and p.init_images and hasattr(p.init_images[0], "size"):
            native_w, native_h = (v // 8 * 8 for v in p.init_images[0].size)  # img2img's own default
        else:
            native_w = native_h = native
        p._auto_size = (p.width or native_w, p.height or native_h) if (p.width is None or p.height is None) else None
        p.width, p.height = p.width or native_w, p.height or native_h
        outdir = ctx.settings.outdir_img2img_samples if p.is_img2img else ctx.settings.outdir_txt2img_samples
        p.outpath_samples = outdir
    p.do_not_save_samples = not getattr(request, "save_images", True)
    return p


def to_request(p: StableDiffusionProcessing, **update: Any) -> Any:
    """The Easel request for ``p`` as it is now (fields a script changed included), with ``update``."""
    from modules.schemas import Img2ImgRequest, Txt2ImgRequest, parse_request

    base = p._request
    cls = type(base) if base is not None else (Img2ImgRequest if p.is_img2img else Txt2ImgRequest)
    data = base.model_dump() if base is not None else {}
    data.pop("mode", None)
    for name in FIELDS:
        if name in cls.model_fields and hasattr(p, name):
            data[name] = getattr(p, name)
    if getattr(p, "_auto_size", None) == (p.width, p.height) and base is not None:  # unchanged: the mode decides
        data["width"], data["height"] = base.width, base.height
    data.update(update)
    return parse_request(cls, data)


def _call(p: StableDiffusionProcessing, method: str, *args: Any, **kwargs: Any) -> None:
    """Call ``method`` on each always-on script with its args; an exception is recorded, the job goes on."""
    for entry, script_args in p._run:
        fn = getattr(entry.script, method, None)
        if fn is None:
            continue
        try:
            if method == "postprocess_image":
                fn(p, args[0], *script_args)
            elif method == "postprocess":
                fn(p, args[0], *script_args)
            else:
                fn(p, *script_args, **kwargs)
        except Exception as err:  # noqa: BLE001 - an extension's fault must not fail the job
            runtime.services().hooks.record(entry.owner, f"script {entry.title!r}.{method}", err)


def _groups(prompts: list[str], negatives: list[str], hr: list[str], hr_neg: list[str], seeds: list[int],
            subseeds: list[int]) -> list[list[int]]:
    """Positions of a batch that one runner call can make together: same prompts, consecutive seeds."""
    groups: list[list[int]] = []
    for i in range(len(seeds)):
        if groups:
            j = groups[-1][-1]
            if ((prompts[i], negatives[i], hr[i], hr_neg[i]) == (prompts[j], negatives[j], hr[j], hr_neg[j])
                    and seeds[i] == seeds[j] + 1 and subseeds[i] == subseeds[j] + 1):
                groups[-1].append(i)
                continue
        groups.append([i])
    return groups


def _with_params(text: str, params: dict[str, Any]) -> str:
    """``text`` (an infotext) with ``params`` added to its parameters line."""
    last = text.rsplit("\n", 1)[-1]
    extra = [f"{k}: {infotext_mod.quote_value(infotext_mod.format_value(v))}" for k, v in params.items()
             if v is not None and not last.startswith(f"{k}: ") and f", {k}: " not in last]
    return ", ".join([text, *extra]) if extra else text


def process_images(p: StableDiffusionProcessing) -> Processed:
    """Generate ``p``'s images: inside a job (a dropdown script's ``run``), on that job's model;
    outside one (an extension's route), as a job in the bound app's queue."""
    job = runtime.current_job()
    if job is None:
        services = runtime.services()
        kind = "img2img" if p.is_img2img else "txt2img"
        result = services.submit(kind, to_request(p)).wait()
        return _processed(p, result)
    ctx, proceed, kind = job
    return run_in_job(p, ctx, proceed)


class RunsProgress:
    """The job's progress across the runner calls of one ``process_images``: each call reports its own
    steps from 0; the job's bar goes on from where the previous call ended."""

    def __init__(self, sink: Any, runs: int) -> None:
        self.sink, self.runs = sink, max(1, runs)
        self.offset, self.last_total, self.done_runs = 0, 0, 0

    def next_run(self) -> None:
        self.offset += self.last_total
        self.done_runs += 1

    def update(self, step: int, total: int, preview: Any | None = None, textinfo: str = "") -> None:
        self.last_total = total
        grand = max(self.offset + total * (self.runs - self.done_runs), self.offset + total)
        self.sink.update(min(self.offset + step, grand), grand, preview=preview, textinfo=textinfo)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sink, name)


def planned_runs(p: StableDiffusionProcessing) -> int:
    bs = int(p.batch_size)
    total = 0
    for n in range(int(p.n_iter)):
        sl = slice(n * bs, (n + 1) * bs)
        total += len(_groups(p.all_prompts[sl], p.all_negative_prompts[sl], p.all_hr_prompts[sl],
                             p.all_hr_negative_prompts[sl], p.all_seeds[sl], p.all_subseeds[sl]))
    return total


def run_in_job(p: StableDiffusionProcessing, ctx: Any, proceed: Any) -> Processed:
    import dataclasses

    from modules.processing import common

    _call(p, "before_process")
    p.setup_prompts()
    p.setup_seeds()
    _call(p, "process")
    progress = RunsProgress(ctx.progress, planned_runs(p)) if ctx is not None else None
    run_ctx = dataclasses.replace(ctx, progress=progress) if progress is not None else None
    bs = int(p.batch_size)
    images, infotexts, paths, save_errors, comments = [], [], [], [], []
    skipped = 0
    out_seeds, out_subseeds, out_prompts, out_negs = [], [], [], []
    first: GenerationResult | None = None
    for n in range(int(p.n_iter)):
        sl = slice(n * bs, (n + 1) * bs)
        prompts, negs = p.all_prompts[sl], p.all_negative_prompts[sl]
        hr, hr_neg = p.all_hr_prompts[sl], p.all_hr_negative_prompts[sl]
        seeds, subseeds = p.all_seeds[sl], p.all_subseeds[sl]
        p.iteration = n
        kwargs = {"batch_number": n, "prompts": prompts, "seeds": seeds, "subseeds": subseeds}
        _call(p, "before_process_batch", **kwargs)
        _call(p, "process_batch", **kwargs)
        batch_images, batch_meta = [], []
        for group in _groups(prompts, negs, hr, hr_neg, seeds, subseeds):
            i = group[0]
            update = {"prompt": prompts[i], "negative_prompt": negs[i], "seed": seeds[i], "subseed": subseeds[i],
                      "batch_size": len(group), "n_iter": 1, "save_images": False, "styles": []}
            if p._request is not None and "hr_prompt" in type(p._request).model_fields:
                update.update({"hr_prompt": hr[i], "hr_negative_prompt": hr_neg[i]})
            result = proceed(to_request(p, **update), run_ctx)
            if progress is not None:
                progress.next_run()
            first = first or result
            skipped += result.skipped
            comments += [c for c in result.comments if c not in comments]
            save_errors += [e for e in result.save_errors if e not in save_errors]
            batch_images += result.images
            batch_meta += zip(result.infotexts, result.seeds, result.subseeds, result.prompts, result.negative_prompts,
                              strict=False)
        _call(p, "postprocess_batch", images=batch_images, batch_number=n)
        pp_list = PostprocessBatchListArgs(batch_images)
        _call(p, "postprocess_batch_list", pp_list, batch_number=n)
        batch_images = pp_list.images
        for j, image in enumerate(batch_images):  # a script may have added or removed images: meta by place
            if not batch_meta:
                break
            raw_text, seed, subseed, prompt, negative = batch_meta[min(j, len(batch_meta) - 1)]
            p.batch_index = j
            pp = PostprocessImageArgs(image)
            _call(p, "postprocess_image", pp)
            text = _with_params(raw_text, p.extra_generation_params)
            images.append(pp.image)
            infotexts.append(text)
            out_seeds.append(seed)
            out_subseeds.append(subseed)
            out_prompts.append(prompt)
            out_negs.append(negative)
            if not p.do_not_save_samples and p.outpath_samples:
                holder = GenerationResult([], [], [], [], [], [], "", None, 0, 0, "", "")
                common.save_if_asked(holder, _SaveAsked(), ctx, pp.image, seed, text, p.outpath_samples)
                paths += holder.paths
                save_errors += [e for e in holder.save_errors if e not in save_errors]
    result = GenerationResult(
        images=images, infotexts=infotexts, seeds=out_seeds, subseeds=out_subseeds, prompts=out_prompts,
        negative_prompts=out_negs, model_name=first.model_name if first else "", model_hash=first.model_hash if first else None,
        width=first.width if first else int(p.width or 0), height=first.height if first else int(p.height or 0),
        sampler_name=first.sampler_name if first else str(p.sampler_name), scheduler=first.scheduler if first else "",
        paths=paths, save_errors=save_errors, skipped=skipped, comments=comments)
    processed = _processed(p, result)
    _call(p, "postprocess", processed)
    return processed


class _SaveAsked:
    save_images = True


def _processed(p: StableDiffusionProcessing, result: GenerationResult) -> Processed:
    processed = Processed(p, result.images, result.seeds[0] if result.seeds else -1,
                          result.infotexts[0] if result.infotexts else "",
                          subseed=result.subseeds[0] if result.subseeds else -1, all_prompts=result.prompts,
                          all_negative_prompts=result.negative_prompts, all_seeds=result.seeds,
                          all_subseeds=result.subseeds, infotexts=result.infotexts)
    processed.result = result
    return processed


def result_of(processed: Processed, p: StableDiffusionProcessing, ctx: Any) -> GenerationResult:
    """Easel's result for what a dropdown script's ``run`` returned."""
    if processed.result is not None and processed.result.images == processed.images:
        return processed.result
    n = len(processed.images)
    texts = list(processed.infotexts or [])
    texts += [processed.info] * (n - len(texts))
    model = ctx.model if ctx is not None else None

    def pad(values: list | None, fill: Any) -> list:
        values = list(values or [])
        return (values + [fill] * n)[:n]

    return GenerationResult(
        images=list(processed.images), infotexts=texts[:n], seeds=pad(processed.all_seeds, processed.seed),
        subseeds=pad(processed.all_subseeds, processed.subseed), prompts=pad(processed.all_prompts, p.prompt),
        negative_prompts=pad(processed.all_negative_prompts, p.negative_prompt),
        model_name=model.info.model_name if model else "", model_hash=model.short_hash if model else None,
        width=processed.images[0].width if n else int(p.width or 0),
        height=processed.images[0].height if n else int(p.height or 0),
        sampler_name=str(p.sampler_name or ""), scheduler="",
        paths=processed.result.paths if processed.result else [],
        save_errors=processed.result.save_errors if processed.result else [],
        comments=processed.result.comments if processed.result else [])
