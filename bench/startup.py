"""UI startup: seconds from ``python app.py`` to the first served page (HTTP 200 on ``/``).

Each run starts a fresh ``python app.py --port PORT --data-dir DIR`` (the environment
launch.sh exports: Hugging Face offline), polls http://127.0.0.1:PORT/ until it answers 200,
then, after --settle seconds, stops the server with Ctrl+C (SIGINT) and waits for it to exit
(the page is served while Gradio's launch() still runs its own check of the URL: a Ctrl+C at
that moment ends in a KeyboardInterrupt traceback, exit status -2, instead of a clean close). The data folder holds one
shapes-architecture checkpoint (random weights) unless --data-dir names another.
Prints each run's seconds and their median (target: a few seconds).

    python -m bench.startup [--repeats 3] [--timeout 120] [--settle 2] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.common import ROOT, bench_data_dir

# What launch.sh exports before ``exec python app.py``.
LAUNCH_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DIFFUSERS_NO_ADVISORY_WARNINGS": "1",
}
POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_ok(url: str) -> bool:
    """True when ``url`` answers HTTP 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def stop(proc: subprocess.Popen) -> tuple[float, str]:
    """Ctrl+C the server and wait for it; returns (seconds to exit, how it ended)."""
    t0 = time.perf_counter()
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return time.perf_counter() - t0, f"did not exit {STOP_GRACE_SECONDS:.0f} s after Ctrl+C; terminated"
    return time.perf_counter() - t0, f"exit status {proc.returncode}"


def one_start(data: Path, timeout: float, settle: float, log: Path) -> tuple[float, float, str]:
    """Start app.py, wait for the page; returns (seconds to 200, seconds to stop, how it stopped)."""
    port = free_port()
    cmd = [sys.executable, "app.py", "--port", str(port), "--data-dir", str(data)]
    env = {**os.environ, **LAUNCH_ENV}
    url = f"http://127.0.0.1:{port}/"
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while not page_ok(url):
                if proc.poll() is not None:
                    raise RuntimeError(f"app.py exited with status {proc.returncode} before serving {url}; see {log}")
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s; see {log}")
                time.sleep(POLL_SECONDS)
            elapsed = time.perf_counter() - t0
            time.sleep(settle)
        finally:
            stop_s, how = stop(proc)
    return elapsed, stop_s, how


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the page before failing")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds between the served page and Ctrl+C")
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a fresh folder with one random checkpoint")
    args = ap.parse_args()

    data = args.data_dir or bench_data_dir()
    logs = Path(tempfile.mkdtemp(prefix="easel-startup-"))
    times = []
    print(f"python app.py --port PORT --data-dir {data}  (logs in {logs})")
    for i in range(args.repeats):
        elapsed, stop_s, how = one_start(data, args.timeout, args.settle, logs / f"run{i + 1}.log")
        times.append(elapsed)
        print(f"run {i + 1}: page served after {elapsed:.2f} s; stopped in {stop_s:.2f} s ({how})")
    print(f"median of {args.repeats}: {statistics.median(times):.2f} s to a served page")


if __name__ == "__main__":
    main()
