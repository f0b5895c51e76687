"""Bounded memory per request (issue #19): an input image is refused from its header before it is
decoded (413 naming the field), the queue holds at most ``max_queue_mb`` of input images (429),
finished jobs keep no inputs and their results stay within a budget, and no resize makes an
image larger than its output (Extras' crop, img2img/ControlNet "crop and resize")."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib
from functools import cache
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules import masks, upscalers
from modules.api import create_app
from modules.api.controlnet import DetectBody, detect_request
from modules.api.convert import InputBudget
from modules.config import load_settings, make_settings
from modules.images import ImageTooLarge, decode_image, limit_decoded_pixels
from modules.jobs import Job, JobQueue, JobState, JobTooLarge, QueueFull
from modules.processing import extras
from modules.processing.context import RunContext
from modules.request_checks import check_limits
from modules.schemas import (
    ControlNetUnit,
    ExtrasRequest,
    GenerationResult,
    Img2ImgRequest,
    RequestError,
    Txt2ImgRequest,
    image_bytes,
    without_input_images,
)
from modules.services import build_services
from tests.test_api import make_data_dir, png_b64

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]

BOMB_SIDE = 12000  # 144 million pixels: 576 MB as RGBA, from a PNG of 17 KB


@cache
def bomb_png(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A valid 1-bit PNG of width x height black pixels, built row by row without ever holding them."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bomb_b64() -> str:
    return base64.b64encode(bomb_png()).decode()


def detail_of(response) -> str:
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else " ".join(f"{e['loc']} {e['msg']}" for e in detail)


# ---------------------------------------------------------------------------------------------
# 1. decode_image reads the header and refuses before decoding


def test_decode_image_refuses_a_bomb_from_its_header(monkeypatch):
    def no_load(self):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(Image.Image, "load", no_load)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_load)
    with pytest.raises(ImageTooLarge, match="12000x12000 = 144000000 pixels; at most 16777216") as err:
        decode_image(bomb_png(), max_pixels=4096 * 4096)
    assert (err.value.width, err.value.height, err.value.max_pixels) == (BOMB_SIDE, BOMB_SIDE, 4096 * 4096)
    assert isinstance(err.value, ValueError)  # callers that catch ValueError still do


def test_decode_image_within_the_limit_decodes():
    image = decode_image(png_b64(size=(64, 32)), max_pixels=64 * 32)
    assert image.size == (64, 32) and image.getpixel((0, 0)) == (200, 30, 30)


def test_limit_decoded_pixels_sets_pils_backstop(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    limit_decoded_pixels(4096 * 4096)
    assert Image.MAX_IMAGE_PIXELS == 4096 * 4096
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb_png()))  # what Gradio's own decoding meets
    with pytest.raises(ImageTooLarge):  # past twice the limit PIL refuses in open(): still ImageTooLarge
        decode_image(bomb_png())
    with pytest.raises(ValueError, match="at least 1"):
        limit_decoded_pixels(0)


def test_input_budget_counts_the_request_s_images_together():
    budget = InputBudget(max_pixels=100 * 100, max_bytes=2 * 100 * 100 * 4)
    assert budget.pixels_left() == 100 * 100
    budget.used_bytes = 100 * 100 * 4 + 4 * 50
    assert budget.pixels_left() == 100 * 100 - 50


@pytest.fixture(scope="module")
def paused_api(tmp_path_factory, tiny_models_dir):
    """Services whose worker never starts (nothing here runs a job), default limits."""
    data = make_data_dir(tmp_path_factory.mktemp("memory-limits"), tiny_models_dir)
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0}), start=False)
    with TestClient(create_app(services)) as client:
        yield services, client
    services.close()


T2I = {"prompt": "a red apple", "steps": 2, "width": 32, "height": 32, "seed": 7}
BOMB_CASES = [
    # (path, body builder, field named in the answer)
    ("/sdapi/v1/png-info", lambda b: {"image": b}, "image"),
    ("/sdapi/v1/img2img", lambda b: {**T2I, "init_images": [b]}, "init_images.0"),
    ("/sdapi/v1/img2img", lambda b: {**T2I, "init_images": [png_b64()], "mask": b}, "mask"),
    ("/sdapi/v1/img2img", lambda b: {**T2I, "init_images": [png_b64()],
                                     "alwayson_scripts": {"controlnet": {"args": [{"image": b}]}}},
     "alwayson_scripts.controlnet.args.0.image"),
    ("/easel/v1/jobs", lambda b: {"type": "img2img", "request": {"init_images": [png_b64(), b]}}, "request.init_images.1"),
    ("/easel/v1/jobs", lambda b: {"type": "img2img", "request": {"init_images": [png_b64()], "mask": b}}, "request.mask"),
    ("/easel/v1/jobs", lambda b: {"type": "outpaint", "request": {"init_images": [b]}}, "request.init_images.0"),
    ("/easel/v1/jobs", lambda b: {"type": "extras", "request": {"image": b}}, "request.image"),
    ("/easel/v1/jobs", lambda b: {"type": "txt2img", "request": {"controlnet_units": [{"image": b}]}},
     "request.controlnet_units.0.image"),
    ("/easel/v1/jobs", lambda b: {"type": "txt2img", "request": {"controlnet_units": [
        {"image": {"image": png_b64(), "mask": b}}]}}, "request.controlnet_units.0.mask"),
]


@pytest.mark.parametrize(("path", "body", "field"), BOMB_CASES, ids=[c[2] for c in BOMB_CASES])
def test_a_decompression_bomb_is_413_naming_the_field(paused_api, path, body, field):
    services, client = paused_api
    before = services.queue.job_count()
    r = client.post(path, json=body(bomb_b64()))
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "ImageTooLarge"
    detail = detail_of(r)
    assert detail.startswith(f"{field}: the image is 12000x12000") and "max_input_pixels" in detail, detail
    assert services.queue.job_count() == before  # nothing was queued


def test_controlnet_detect_images_are_decoded_within_the_budget():
    body = DetectBody(controlnet_module="none", controlnet_input_images=[png_b64(), bomb_b64()])
    with pytest.raises(ImageTooLarge, match="^controlnet_input_images.1: the image is 12000x12000"):
        detect_request(body, "cpu", InputBudget(max_pixels=4096 * 4096, max_bytes=1 << 30))


@pytest.fixture
def small_budget(data_dir):
    """Paused services with 16 MiB for the queue (and one request's images) and 2048x2048 per image."""
    settings = load_settings(data_dir, {"show_progress_every_n_steps": 0, "max_queue_mb": 16,
                                        "max_input_pixels": 2048 * 2048})
    services = build_services(settings, start=False)
    with TestClient(create_app(services)) as client:
        yield services, client
    services.close()


def test_one_request_s_images_together_stay_within_max_queue_mb(small_budget):
    _, client = small_budget
    image = png_b64(size=(1500, 1500))  # 8.6 MiB decoded: two are over 16 MiB
    r = client.post("/easel/v1/jobs", json={"type": "img2img", "request": {"init_images": [image, image]}})
    assert r.status_code == 413, r.text
    assert detail_of(r).startswith("request.init_images.1: the image is 1500x1500") and "max_queue_mb" in detail_of(r)
    r = client.post("/sdapi/v1/img2img", json={**T2I, "init_images": [image], "mask": image})
    assert r.status_code == 413 and detail_of(r).startswith("mask: ") and "max_queue_mb" in detail_of(r), r.text


# ---------------------------------------------------------------------------------------------
# 3. the queue's byte budget


def sized(nbytes: int) -> Img2ImgRequest:
    """An img2img request whose one input image takes ``nbytes`` (a multiple of 4) decoded."""
    return Img2ImgRequest(init_images=[Image.new("RGB", (nbytes // 4, 1))])


def test_image_bytes_counts_every_input_image():
    unit = ControlNetUnit(image=Image.new("RGB", (10, 10)))
    request = Img2ImgRequest(init_images=[Image.new("RGB", (8, 8))] * 2, mask=Image.new("L", (8, 8)),
                             controlnet_units=[unit, ControlNetUnit()])
    assert image_bytes(request) == (64 * 2 + 64 + 100) * 4
    assert image_bytes(ExtrasRequest(image=Image.new("RGB", (5, 5)))) == 100
    assert image_bytes(Txt2ImgRequest()) == 0 and image_bytes("model.safetensors") == 0


def test_queue_refuses_jobs_past_max_queued_bytes():
    queue = JobQueue(lambda job: None, max_queued_bytes=1000, size_of=image_bytes)  # never started
    first = queue.submit("img2img", sized(600))
    assert first.request_bytes == 600 and queue.queued_bytes() == 600
    with pytest.raises(QueueFull, match="max_queue_mb"):
        queue.submit("img2img", sized(600))
    with pytest.raises(JobTooLarge, match="more than the whole queue may hold"):
        queue.submit("img2img", sized(1200))
    queue.submit("txt2img", Txt2ImgRequest())  # no images: always fits
    queue.cancel(first.id)
    assert queue.queued_bytes() == 0
    queue.submit("img2img", sized(600))
    queue.stop()
    assert queue.queued_bytes() == 0


def test_queue_bytes_are_released_when_a_job_starts():
    gate = threading.Event()
    queue = JobQueue(lambda job: gate.wait(5), max_queued_bytes=1000, size_of=image_bytes)
    queue.start()
    try:
        running = queue.submit("img2img", sized(800))
        deadline = time.monotonic() + 5
        while running.state is not JobState.running:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert queue.queued_bytes() == 0
        queue.submit("img2img", sized(800))  # fits: the running job's inputs are not queued any more
        gate.set()
    finally:
        queue.stop()


def test_api_answers_429_when_the_queue_s_images_are_full(small_budget):
    services, client = small_budget
    image = png_b64(size=(1500, 1500))  # 8.6 MiB decoded
    assert client.post("/easel/v1/jobs", json={"type": "img2img", "request": {"init_images": [image]}}).status_code == 202
    r = client.post("/easel/v1/jobs", json={"type": "img2img", "request": {"init_images": [image]}})
    assert r.status_code == 429 and "Retry-After" in r.headers and "max_queue_mb" in detail_of(r), r.text
    assert services.queue.job_count() == 1


# ---------------------------------------------------------------------------------------------
# 2. finished jobs keep no inputs; their results stay within a budget


def copy_first_image(job: Job) -> Image.Image:
    """A run for tests: sends a preview and returns a copy of the first input image."""
    job.progress.update(1, 1, preview=Image.new("RGB", (4, 4)))
    return job.request.init_images[0].copy()


def finished_queue(**kwargs: Any) -> JobQueue:
    queue = JobQueue(copy_first_image, size_of=image_bytes, release=without_input_images, **kwargs)
    queue.start()
    return queue


def test_a_finished_job_keeps_no_input_images_nor_preview():
    queue = finished_queue()
    try:
        request = Img2ImgRequest(init_images=[Image.new("RGB", (16, 16))], mask=Image.new("L", (16, 16)), steps=7,
                                 controlnet_units=[ControlNetUnit(image=Image.new("RGB", (8, 8)))])
        job = queue.submit("img2img", request)
        assert job.wait(5).size == (16, 16)
        assert job.request.init_images == [] and job.request.mask is None
        assert job.request.controlnet_units[0].image is None and job.request.steps == 7  # what pollers read stays
        assert job.progress.snapshot().preview is None
        assert request.init_images  # the caller's own request is untouched
    finally:
        queue.stop()


def test_a_cancelled_queued_job_keeps_no_input_images():
    queue = JobQueue(lambda job: None, size_of=image_bytes, release=without_input_images)  # never started
    job = queue.submit("img2img", sized(400))
    queue.cancel(job.id)
    assert job.state is JobState.cancelled and job.request.init_images == []


def test_kept_results_stay_within_max_finished_bytes():
    queue = finished_queue(max_finished_bytes=2 * 400)
    try:
        jobs = [queue.submit("img2img", sized(400)) for _ in range(3)]
        for job in jobs:
            job.wait(5)
        deadline = time.monotonic() + 5
        while queue.finished_bytes() != 800:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        with pytest.raises(KeyError, match="results within"):
            queue.get(jobs[0].id)  # the oldest result was forgotten
        assert queue.get(jobs[2].id).result.size == (100, 1)
        huge = queue.submit("img2img", sized(4000))  # alone over the budget: kept, as the newest
        huge.wait(5)
        deadline = time.monotonic() + 5
        while queue.finished_bytes() != 4000:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert queue.get(huge.id).result.size == (1000, 1)
    finally:
        queue.stop()


def test_services_wire_the_byte_budget_and_drop_inputs(data_dir):
    settings = load_settings(data_dir, {"show_progress_every_n_steps": 0, "max_queue_mb": 16})
    services = build_services(settings, start=False)
    try:
        with pytest.raises(JobTooLarge):  # 4096 x 1100 x 4 bytes > 16 MiB
            services.submit("extras", ExtrasRequest(image=Image.new("RGB", (4096, 1100))))
        with TestClient(create_app(services)) as client:
            services.queue.start()
            r = client.post("/easel/v1/jobs", json={"type": "extras", "request": {
                "image": png_b64(size=(16, 16)), "upscaler_1": "Nearest", "save_images": False}})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            deadline = time.monotonic() + 60
            while (body := client.get(f"/easel/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert body["state"] == "done" and len(body["result"]["images"]) == 1  # pollers still get the result
            job = services.queue.get(job_id)
            assert job.request.image is None and job.result_bytes == 32 * 32 * 4
    finally:
        services.close()


def test_a_failing_release_never_kills_the_worker():
    def release(request: Any) -> Any:
        raise RuntimeError("boom")

    queue = JobQueue(lambda job: job.request, release=release)
    queue.start()
    try:
        assert queue.submit("x", 1).wait(5) == 1
        assert queue.submit("x", 2).wait(5) == 2
    finally:
        queue.stop()


# ---------------------------------------------------------------------------------------------
# 4. no resize makes an image larger than its output


@pytest.fixture
def no_big_resizes(monkeypatch):
    """Fail any PIL resize to more than 2048 x 2048 pixels (before it allocates)."""
    resize = Image.Image.resize

    def checked(self: Image.Image, size: tuple[int, int], *args: Any, **kwargs: Any) -> Image.Image:
        assert size[0] * size[1] <= 2048 * 2048, f"a resize to {size[0]}x{size[1]}"
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", checked)


def test_extras_crop_of_a_thin_image_makes_nothing_larger_than_the_output(tmp_path, no_big_resizes):
    settings = make_settings(data_dir=tmp_path, max_side=2048)
    ctx = RunContext(model=None, settings=settings, saver=None)  # type: ignore[arg-type]
    request = ExtrasRequest(image=Image.new("RGB", (64, 1), (9, 200, 9)), resize_mode=1, upscaling_resize_w=2048,
                            upscaling_resize_h=2048, upscaling_crop=True, upscaler_1="Lanczos")
    out = extras.run(request, ctx).images[0]
    assert out.size == (2048, 2048) and out.getpixel((1024, 1024)) == (9, 200, 9)


def test_extras_crop_keeps_the_centre_with_the_targets_aspect_ratio(tmp_path):
    settings = make_settings(data_dir=tmp_path, max_side=256)
    ctx = RunContext(model=None, settings=settings, saver=None)  # type: ignore[arg-type]
    image = Image.new("RGB", (40, 10), (255, 0, 0))
    image.paste((0, 255, 0), (15, 0, 25, 10))
    out = extras.run(ExtrasRequest(image=image, resize_mode=1, upscaling_resize_w=40, upscaling_resize_h=20,
                                   upscaler_1="Nearest"), ctx).images[0]
    assert out.size == (40, 20)  # the centre 20x10 of the image, doubled: red 5 columns each side, green 10
    assert out.getpixel((9, 10)) == (255, 0, 0) and out.getpixel((10, 10)) == (0, 255, 0)
    assert out.getpixel((29, 10)) == (0, 255, 0) and out.getpixel((30, 10)) == (255, 0, 0)


def test_crop_and_resize_of_a_thin_image_makes_nothing_larger_than_the_output(no_big_resizes):
    thin = Image.new("RGB", (1_000_000, 1), (50, 60, 70))  # fits max_input_pixels; "cover" would be 512M x 512
    out = masks.resize_image(thin, 512, 512, 1)
    assert out.size == (512, 512) and out.getpixel((256, 256)) == (50, 60, 70)
    assert masks.resize_image(thin, 512, 512, 2).size == (512, 512)  # fit and fill: a band 1 pixel high


def test_model_upscaler_passes_stop_once_a_side_is_past_the_target(monkeypatch):
    sizes = []

    def fake_pass(model: Any, image: Image.Image) -> Image.Image:
        sizes.append((image.width * 4, image.height * 4))
        return Image.new("RGB", (image.width * 4, image.height * 4))

    monkeypatch.setattr(upscalers, "load_model", lambda path: object())
    monkeypatch.setattr(upscalers, "run_model", fake_pass)
    model = upscalers.Upscaler("4x-Fake", "model", None)
    out = upscalers.upscale_image(Image.new("RGB", (64, 1)), model, 2048, 2048)
    assert out.size == (2048, 2048)
    assert sizes and max(max(s) for s in sizes) <= 4 * 2048, sizes
    sizes.clear()
    assert upscalers.upscale_image(Image.new("RGB", (100, 80)), model, 1600, 1280).size == (1600, 1280)
    assert sizes == [(400, 320), (1600, 1280)]  # near the target's aspect ratio: passes as before


def test_a_preprocessor_refuses_a_thin_image_before_resizing_it(monkeypatch):
    from modules.controlnet import preprocessors

    resize = preprocessors.cv2.resize

    def checked(image: Any, size: tuple[int, int], *args: Any, **kwargs: Any) -> Any:
        assert size[0] * size[1] <= 4096 * 4096, f"a resize to {size[0]}x{size[1]}"
        return resize(image, size, *args, **kwargs)

    monkeypatch.setattr(preprocessors.cv2, "resize", checked)
    thin = Image.new("RGB", (100_000, 8))  # short side to 512: 6400000x512, 9.8 GB
    with pytest.raises(preprocessors.PreprocessorError, match="would be 6400000x512") as err:
        preprocessors.preprocess("canny", thin, 512)
    assert err.value.field == "image"
    assert preprocessors.preprocess("canny", Image.new("RGB", (1024, 8)), 64).size == (8192, 64)  # 0.5M pixels: fine


# ---------------------------------------------------------------------------------------------
# 5. seed_resize_from_w/h are bounded


def test_seed_resize_is_bounded_by_the_schema_and_max_side(paused_api):
    services, client = paused_api
    r = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {"seed_resize_from_w": 100_000_000,
                                                                           "seed_resize_from_h": 500}})
    assert r.status_code == 422 and "seed_resize_from_w" in detail_of(r), r.text
    r = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {"seed_resize_from_w": 512,
                                                                           "seed_resize_from_h": 4096}})
    assert r.status_code == 400 and detail_of(r).startswith("seed_resize_from_h: 4096") and "max_side" in detail_of(r)
    assert services.queue.job_count() == 0
    with pytest.raises(RequestError, match="seed_resize_from_w: 3000"):
        check_limits([Txt2ImgRequest(seed_resize_from_w=3000, seed_resize_from_h=64)], services.settings)
    check_limits([Txt2ImgRequest(seed_resize_from_w=2048, seed_resize_from_h=-1)], services.settings)


def test_result_and_request_sizes_are_estimated_at_four_bytes_a_pixel():
    result = GenerationResult(images=[Image.new("RGB", (10, 10))] * 3, infotexts=[], seeds=[], subseeds=[], prompts=[],
                              negative_prompts=[], model_name="", model_hash=None, width=10, height=10,
                              sampler_name="", scheduler="")
    assert image_bytes(result) == 3 * 400
    assert image_bytes([Image.new("L", (3, 3))]) == 36


def test_a_bomb_past_pils_own_limit_is_refused_alike(monkeypatch):
    """With PIL's process-wide limit set when serving, a huge header trips PIL first: still ImageTooLarge."""
    from modules.images import limit_decoded_pixels

    limit_decoded_pixels(4096 * 4096)  # the conftest fixture restores PIL's value afterwards
    with pytest.raises(ImageTooLarge, match="more than 33554432 pixels") as err:
        decode_image(bomb_png(), max_pixels=4096 * 4096)
    assert err.value.max_pixels == 4096 * 4096
