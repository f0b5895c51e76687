"""Shared fixtures: a data folder with tiny checkpoints, and services built on it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.tiny_models import write_diffusers_folder, write_single_file

torch.set_num_threads(1)  # tiny models: one thread is fastest and leaves a core free
# precision "auto" picks bf16 on CPUs with native bf16 (#26); the suite's images and thresholds were
# measured in fp32, so tests run "auto" as fp32 unless they ask for bf16 (tests/test_model_dtypes.py,
# tests/test_cpu_precision.py). EASEL_CPU_BF16=1 runs the whole suite on the bf16 default instead.
os.environ.setdefault("EASEL_CPU_BF16", "0")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: heavy test (several seconds to minutes); deselect with -m 'not slow'")
    config.addinivalue_line("markers", "browser: drives the web UI in Chromium via Playwright; deselect with -m 'not browser'")
    config.addinivalue_line("markers", "soak: bounded load test on a real server (under a minute); deselect with -m 'not soak'")
    config.addinivalue_line("markers", "heavy: minutes of generation on the shipped model; runs only with EASEL_HEAVY=1")


def pytest_collection_modifyitems(config, items):
    """``heavy`` tests are left out of the default run (CI) unless EASEL_HEAVY=1."""
    if os.environ.get("EASEL_HEAVY") == "1":
        return
    skip = pytest.mark.skip(reason="heavy: run with EASEL_HEAVY=1 ./launch.sh test -m heavy")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)


def pytest_collection_finish(session):
    """Every test module is imported: keep those objects out of the tests' full garbage collections
    (each model eviction runs one), as the app does once it has started."""
    from modules.devices import freeze_startup_objects

    freeze_startup_objects()


_PIL_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS  # PIL's own default, before any server set it


@pytest.fixture(autouse=True)
def _pil_pixel_limit():
    """Serving sets PIL's process-wide decompression-bomb limit (webui.server.start), also from
    module-scoped server fixtures: every test starts from PIL's default and leaves it so."""
    Image.MAX_IMAGE_PIXELS = _PIL_MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = _PIL_MAX_IMAGE_PIXELS


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """models/Stable-diffusion with two single files (seeds 0 and 1) and one diffusers folder."""
    root = tmp_path_factory.mktemp("models") / "Stable-diffusion"
    root.mkdir(parents=True)
    write_single_file(root, "tiny-a", seed=0)
    write_single_file(root, "tiny-b", seed=1)
    write_diffusers_folder(root, "tiny-folder", seed=2)
    return root


@pytest.fixture
def data_dir(tmp_path, tiny_models_dir) -> Path:
    """A fresh data folder whose models/Stable-diffusion holds the tiny checkpoints."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(tiny_models_dir, models / "Stable-diffusion")
    return tmp_path


@pytest.fixture(scope="module")
def bundled_services(tmp_path_factory):
    """Services on a data folder holding only the shipped model (and its .yaml), one per test module."""
    from modules.config import load_settings
    from modules.services import build_services

    bundled = Path(__file__).resolve().parent.parent / "models" / "Stable-diffusion" / "easel-shapes.safetensors"
    data = tmp_path_factory.mktemp("bundled")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for src in (bundled, bundled.with_suffix(".yaml")):
        shutil.copy(src, folder / src.name)
    s = build_services(load_settings(data, {"show_progress_every_n_steps": 0}))
    yield s
    s.close()


@pytest.fixture
def services(data_dir):
    from modules.config import load_settings
    from modules.services import build_services

    s = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0}))
    yield s
    s.close()


@pytest.fixture
def ctx(services):
    """A RunContext on the tiny-a checkpoint that never saves (test_img2img has one that saves)."""
    from modules.processing.context import RunContext

    with services.models.use(services.checkpoints.get("tiny-a").name) as model:
        yield RunContext(model, services.settings, None)
