"""``app.py install`` (``./launch.sh install``), run as a user would: a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.model_host import ModelHost, create_host_app
from tests.served import served
from tests.test_installer import lora_bytes

ROOT = Path(__file__).resolve().parent.parent


def app(*args: str, offline: str = "1") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": offline, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


@pytest.fixture
def host():
    h = ModelHost()
    h.files["1"] = ("cli-lora.safetensors", lora_bytes(1))
    with served(create_host_app(h)) as port:
        h.base = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield h


def test_install_a_local_file_prints_its_path(tmp_path):
    src = tmp_path / "mine.safetensors"
    src.write_bytes(lora_bytes())
    data = tmp_path / "data"
    r = app("install", str(src), "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(data / "models/Lora/mine.safetensors")
    assert "installed lora mine.safetensors" in r.stderr


def test_downloads_need_the_flag(tmp_path, host):
    r = app("install", f"{host.base}/files/1", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "downloads are off" in r.stderr and "--allow-downloads" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = app("install", f"{host.base}/files/1", "--allow-downloads", "--data-dir", str(tmp_path), offline="0")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == tmp_path / "models/Lora/cli-lora.safetensors"


def test_bad_sha256_is_one_line(tmp_path):
    r = app("install", "o/n", "--sha256", "xyz", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "sha256" in r.stderr and len(r.stderr.strip().splitlines()) == 1
