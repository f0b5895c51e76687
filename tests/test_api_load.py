"""Load on a real uvicorn server: generation requests wait for their jobs without holding a worker
thread, so reads (/sdapi/v1/options, /progress) stay fast with 50 jobs queued; and a bounded soak of
generation, decompression bombs and cancelled jobs ends with no 5xx and bounded memory."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from modules.api import create_app
from modules.config import load_settings
from modules.services import build_services
from tests.served import served

TINY = {"prompt": "a cat", "steps": 2, "width": 16, "height": 16, "cfg_scale": 1.0}
FAST_S = 1.0  # what "fast" means for a read under load


def rss_bytes() -> int:
    """This process's resident set size (the server runs in-process, in a thread)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line in /proc/self/status")


def bomb_png_b64() -> str:
    """A 1-bit 12000x12000 PNG: a few kB on the wire, 144 megapixels once decoded."""
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def timed_get(client: httpx.Client, url: str) -> tuple[float, int]:
    """(seconds, status) of one GET; status 0 when it timed out."""
    start = time.monotonic()
    try:
        status = client.get(url).status_code
    except httpx.TimeoutException:
        status = 0
    return time.monotonic() - start, status


async def post_all(base: str, path: str, bodies: list[dict], timeout: float,
                   answered_at: list[float] | None = None) -> list[httpx.Response]:
    """POST every body at once, each on its own connection; ``answered_at`` gets each answer's time."""
    limits = httpx.Limits(max_connections=len(bodies) + 10, max_keepalive_connections=0)

    async def post(client: httpx.AsyncClient, body: dict) -> httpx.Response:
        response = await client.post(path, json=body)
        if answered_at is not None:
            answered_at.append(time.monotonic())
        return response

    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:
        return list(await asyncio.gather(*(post(client, body) for body in bodies)))


def start_in_thread(coro_factory) -> tuple[threading.Thread, dict]:
    """Run ``asyncio.run(coro_factory())`` in a thread; its result lands in the returned dict."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = asyncio.run(coro_factory())
        except BaseException as err:  # noqa: BLE001 - re-raised by the test
            out["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def join(thread: threading.Thread, out: dict, timeout: float):
    thread.join(timeout)
    assert not thread.is_alive(), f"the requests did not finish within {timeout} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def paused_server(data_dir):
    """A real server whose worker has not started: submitted jobs stay queued until the test starts it."""
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0, "max_queue": 200}), start=False)
    with served(create_app(services)) as port:
        yield services, f"http://127.0.0.1:{port}"
    services.close()


def test_fifty_waiting_generations_leave_reads_fast(paused_server):
    """50 txt2img requests wait for their jobs (the worker is paused); all 50 are queued, reads answer
    in under a second, and once the worker starts every request gets its image."""
    services, base = paused_server
    bodies = [{**TINY, "seed": i} for i in range(50)]
    thread, out = start_in_thread(lambda: post_all(base, "/sdapi/v1/txt2img", bodies, timeout=120))
    deadline = time.monotonic() + 20
    while len(services.queue.pending()) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    queued = len(services.queue.pending())
    with httpx.Client(base_url=base, timeout=3) as client:
        reads = [timed_get(client, path) for path in ("/sdapi/v1/options", "/sdapi/v1/progress") * 3]
    services.queue.start()
    started = time.monotonic()
    responses = join(thread, out, 120)
    assert queued == 50, f"only {queued} of 50 requests reached the queue: the others wait for a worker thread"
    assert all(status == 200 for _, status in reads), reads
    slowest = max(t for t, _ in reads)
    assert slowest < FAST_S, f"a read took {slowest:.2f} s with 50 jobs queued"
    assert [r.status_code for r in responses] == [200] * 50
    assert all(len(r.json()["images"]) == 1 for r in responses)
    assert services.queue.job_count() == 0
    assert time.monotonic() - started < 60


def test_reads_stay_fast_while_fifty_generations_run(data_dir):
    """50 txt2img run one after another; /options and /progress are polled all along and stay under 1 s."""
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0, "max_queue": 200}))
    with served(create_app(services)) as port:
        base = f"http://127.0.0.1:{port}"
        httpx.post(f"{base}/sdapi/v1/txt2img", json=TINY, timeout=60).raise_for_status()  # model loaded
        bodies = [{**TINY, "steps": 4, "seed": i} for i in range(50)]
        answered_at: list[float] = []
        start = time.monotonic()
        thread, out = start_in_thread(lambda: post_all(base, "/sdapi/v1/txt2img", bodies, 120, answered_at))
        reads: list[tuple[float, int]] = []
        with httpx.Client(base_url=base, timeout=10) as client:
            while thread.is_alive() and time.monotonic() - start < 120:
                reads.extend(timed_get(client, path) for path in ("/sdapi/v1/options", "/sdapi/v1/progress"))
                time.sleep(0.1)
        responses = join(thread, out, 120)
    services.close()
    assert [r.status_code for r in responses] == [200] * 50
    assert len(reads) >= 4 and all(status == 200 for _, status in reads)
    slowest = max(t for t, _ in reads)
    print(f"\n50 txt2img in {max(answered_at) - start:.1f} s, first answer after {min(answered_at) - start:.2f} s;"
          f" {len(reads)} reads, slowest {slowest:.3f} s")
    assert slowest < FAST_S, f"a read took {slowest:.2f} s while 50 generations ran"


# ---------------------------------------------------------------------------------------------
# Soak: bounded (90 requests, well under 2 minutes), so it runs with the rest of the suite


SOAK_TXT2IMG, SOAK_BOMBS, SOAK_PNG_INFO, SOAK_CANCELLED = 50, 20, 10, 5
MAX_RSS_GROWTH = 500 * 1024 * 1024


async def soak_requests(base: str, bomb: str, valid_png: str) -> dict[str, list[httpx.Response]]:
    """Every soak request at once: txt2img, png-info with bombs and with a good image, jobs submitted and cancelled."""
    limits = httpx.Limits(max_connections=120, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def submit_and_cancel(i: int) -> list[httpx.Response]:
            body = {"type": "txt2img", "request": {**TINY, "steps": 150, "seed": 1000 + i}}
            created = await client.post("/easel/v1/jobs", json=body)
            if created.status_code != 202:
                return [created]
            return [created, await client.delete(f"/easel/v1/jobs/{created.json()['id']}")]

        txt2img = [client.post("/sdapi/v1/txt2img", json={**TINY, "seed": i}) for i in range(SOAK_TXT2IMG)]
        bombs = [client.post("/sdapi/v1/png-info", json={"image": bomb}) for _ in range(SOAK_BOMBS)]
        infos = [client.post("/sdapi/v1/png-info", json={"image": valid_png}) for _ in range(SOAK_PNG_INFO)]
        cancels = [submit_and_cancel(i) for i in range(SOAK_CANCELLED)]
        done = await asyncio.gather(asyncio.gather(*txt2img), asyncio.gather(*bombs), asyncio.gather(*infos),
                                    asyncio.gather(*cancels))
    return {"txt2img": list(done[0]), "bombs": list(done[1]), "png-info": list(done[2]),
            "jobs": [r for pair in done[3] for r in pair]}


@pytest.mark.soak
@pytest.mark.timeout(180)
def test_soak_generation_bombs_and_cancels(data_dir):
    """50 txt2img, 20 png-info decompression bombs (1-bit 12000x12000 PNG), 10 good png-info, 5 jobs
    queued then cancelled, all at once: every valid request 2xx, every bomb 4xx, no 5xx, /options
    under 1 s all along (polled from another thread), and the server's memory grows by < 500 MB."""
    from tests.test_api import png_b64

    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0, "max_queue": 200}))
    bomb, valid_png = bomb_png_b64(), png_b64(size=(16, 16))
    polls: list[tuple[float, int]] = []
    stop = threading.Event()
    with served(create_app(services)) as port:
        base = f"http://127.0.0.1:{port}"
        httpx.post(f"{base}/sdapi/v1/txt2img", json=TINY, timeout=60).raise_for_status()  # model loaded
        rss_before = rss_bytes()

        def poll_options() -> None:
            with httpx.Client(base_url=base, timeout=5) as client:
                while not stop.is_set():
                    polls.append(timed_get(client, "/sdapi/v1/options"))
                    stop.wait(0.25)

        poller = threading.Thread(target=poll_options, daemon=True)
        poller.start()
        start = time.monotonic()
        thread, out = start_in_thread(lambda: soak_requests(base, bomb, valid_png))
        answers = join(thread, out, 150)
        elapsed = time.monotonic() - start
        stop.set()
        poller.join(10)
        rss_after = rss_bytes()
        stopped = [services.queue.get(r.json()["id"]) for r in answers["jobs"] if r.status_code == 202]
        cancelled = [(job.state.value, job.interrupted) for job in stopped]
    services.close()

    statuses = {kind: [r.status_code for r in responses] for kind, responses in answers.items()}
    slowest = max(t for t, _ in polls)
    growth = rss_after - rss_before
    print(f"\nsoak: {sum(map(len, statuses.values()))} requests in {elapsed:.1f} s; {len(polls)} /options polls,"
          f" slowest {slowest:.3f} s; RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB;"
          f" bombs answered {sorted(set(statuses['bombs']))}")
    assert not [s for codes in statuses.values() for s in codes if s >= 500], statuses
    assert statuses["txt2img"] == [200] * SOAK_TXT2IMG
    assert all(len(r.json()["images"]) == 1 for r in answers["txt2img"])
    assert statuses["png-info"] == [200] * SOAK_PNG_INFO
    assert all(400 <= s < 500 for s in statuses["bombs"]), statuses["bombs"]
    assert statuses["jobs"] == [202, 200] * SOAK_CANCELLED
    # a queued job is cancelled; one already running is interrupted and keeps what it made
    assert len(cancelled) == SOAK_CANCELLED and all(s == "cancelled" or (s == "done" and i) for s, i in cancelled)
    assert len(polls) >= 4 and all(status == 200 for _, status in polls), polls
    assert slowest < FAST_S, f"/sdapi/v1/options took {slowest:.2f} s under load"
    assert growth < MAX_RSS_GROWTH, f"the server grew by {growth / 2**20:.0f} MiB"
    assert elapsed < 120
