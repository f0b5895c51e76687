"""Installing a diffusers pipeline repo whole (modules.install_folders) from the local hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modules.checkpoints import scan_checkpoints
from modules.install_folders import components, select_files
from modules.install_types import RepoEntry
from modules.installer import InstallError, InstallRequest, Progress, install
from tests.model_host import ModelHost, create_host_app
from tests.served import served
from tests.test_installer import leftovers, make_target
from tests.tiny_models import write_diffusers_folder


@pytest.fixture(scope="module")
def pipeline_files(tmp_path_factory) -> dict[str, bytes]:
    folder = write_diffusers_folder(tmp_path_factory.mktemp("pipe"), "tiny-pipe", seed=4)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def host(pipeline_files):
    h = ModelHost()
    noisy = dict(pipeline_files)
    noisy["unet/diffusion_pytorch_model.fp16.safetensors"] = b"fp16 copy, never fetched"
    noisy["text_encoder/pytorch_model.bin"] = b"a pickle, never fetched"
    noisy["vae_1_0/config.json"] = b"{}"  # a folder the pipeline does not name
    noisy["tiny-pipe.onnx"] = b"onnx"
    h.repos["tiny-org/tiny-pipe"] = noisy
    fp16_only = {p: d for p, d in pipeline_files.items() if p != "unet/diffusion_pytorch_model.safetensors"}
    fp16_only["unet/diffusion_pytorch_model.fp16.safetensors"] = pipeline_files["unet/diffusion_pytorch_model.safetensors"]
    h.repos["tiny-org/fp16-only"] = fp16_only
    with served(create_host_app(h)) as port:
        h.base = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield h


@pytest.fixture(autouse=True)
def online(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_selects_configs_and_safetensors_of_named_components():
    listing = [RepoEntry(p, 1, None) for p in (
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin", "tokenizer/vocab.json", "tokenizer/merges.txt", "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.safetensors.index.fp16.json",
        "text_encoder/model-00001-of-00002.fp16.safetensors", "text_encoder/model.safetensors.index.json",
        "text_encoder/model-00001-of-00002.safetensors", "text_encoder/pytorch_model.bin.index.json")]
    chosen = {local for _, local in select_files(listing, ["unet", "tokenizer", "vae", "text_encoder"])}
    assert chosen == {"unet/config.json", "unet/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json",
                      "tokenizer/merges.txt", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
                      "text_encoder/model.safetensors.index.json", "text_encoder/model-00001-of-00002.safetensors"}
    assert components({"_class_name": "X", "unet": ["diffusers", "U"], "safety_checker": ["a", "b"],
                       "feature_extractor": [None, None], "..": ["a", "b"], "a/b": ["a", "b"]}) == ["unet"]
    with pytest.raises(InstallError, match="only pickle"):
        select_files([RepoEntry("unet/diffusion_pytorch_model.bin", 1, None)], ["unet"])


def test_install_a_pipeline_repo_whole(tmp_path, host, pipeline_files):
    progress = Progress()
    result = install(InstallRequest(source="tiny-org/tiny-pipe"), make_target(tmp_path, host), progress)
    assert progress.done_bytes == progress.total_bytes == sum(len(d) for d in pipeline_files.values())
    dest = tmp_path / "models/Stable-diffusion/tiny-pipe"
    assert result.type == "checkpoint" and result.path == dest and "diffusers folder" in result.note
    got = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert got == set(pipeline_files)  # nothing of the noise, nothing missing
    assert leftovers(tmp_path) == sorted(f"models/Stable-diffusion/tiny-pipe/{p}" for p in got)
    [info] = scan_checkpoints([tmp_path / "models/Stable-diffusion"])
    from modules.model_loading import load_diffusers_folder

    arch, _pipe = load_diffusers_folder(info)
    assert arch == "sd1"


def test_fp16_variant_is_saved_under_the_plain_name(tmp_path, host, pipeline_files):
    install(InstallRequest(source="tiny-org/fp16-only"), make_target(tmp_path, host))
    unet = tmp_path / "models/Stable-diffusion/fp16-only/unet/diffusion_pytorch_model.safetensors"
    assert unet.read_bytes() == pipeline_files["unet/diffusion_pytorch_model.safetensors"]


def test_sha256_mismatch_leaves_nothing(tmp_path, host):
    host.wrong_sha.add("vae/diffusion_pytorch_model.safetensors")
    with pytest.raises(InstallError, match="sha256 mismatch"):
        install(InstallRequest(source="tiny-org/tiny-pipe"), make_target(tmp_path, host))
    assert leftovers(tmp_path) == []


def test_size_limit_counts_every_file(tmp_path, host, pipeline_files):
    total = sum(len(d) for d in pipeline_files.values())
    with pytest.raises(InstallError, match="pipeline's files are"):
        install(InstallRequest(source="tiny-org/tiny-pipe"), make_target(tmp_path, host, max_bytes=total - 1))
    assert leftovers(tmp_path) == []


def test_existing_folder_is_not_overwritten(tmp_path, host):
    dest = tmp_path / "models/Stable-diffusion/tiny-pipe"
    dest.mkdir(parents=True)
    (dest / "model_index.json").write_text(json.dumps({"mine": True}))
    with pytest.raises(InstallError, match="already exists"):
        install(InstallRequest(source="tiny-org/tiny-pipe"), make_target(tmp_path, host))
    assert json.loads(Path(dest / "model_index.json").read_text()) == {"mine": True}


def test_a_pipeline_is_listed_and_deleted_as_one(tmp_path, host):
    from modules.installer import delete_installed, list_installed

    target = make_target(tmp_path, host)
    install(InstallRequest(source="tiny-org/tiny-pipe"), target)
    rows = [r for r in list_installed(target) if r["type"] == "checkpoint"]
    assert [r["name"] for r in rows] == ["tiny-pipe"] and rows[0]["size"] > 0
    with pytest.raises(InstallError, match="is not a checkpoint"):
        delete_installed(target, "checkpoint", "tiny-pipe/unet/diffusion_pytorch_model.safetensors")
    delete_installed(target, "checkpoint", "tiny-pipe")
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- resuming and locking

UNET = "unet/diffusion_pytorch_model.safetensors"


def fetched(pipeline_files: dict[str, bytes]) -> int:
    return sum(len(d) for d in pipeline_files.values())


def test_a_dropped_connection_mid_file_resumes(tmp_path, host, pipeline_files):
    host.drop_first = True  # every file's first response closes halfway
    install(InstallRequest(source="tiny-org/tiny-pipe"), make_target(tmp_path, host))
    dest = tmp_path / "models/Stable-diffusion/tiny-pipe"
    assert (dest / UNET).read_bytes() == pipeline_files[UNET]
    assert f"bytes={len(pipeline_files[UNET]) // 2}-" in host.ranges
    assert sum(host.sent.values()) == fetched(pipeline_files)  # each byte once: resumed, never restarted


def test_a_second_install_of_the_same_repo_is_refused(tmp_path, host, pipeline_files):
    from modules.install_jobs import Installer
    from modules.install_types import AlreadyInstalling

    host.stall.add(UNET)
    installer = Installer(make_target(tmp_path, host))
    try:
        first = installer.submit(InstallRequest(source="tiny-org/tiny-pipe"))
        wait_for(lambda: host.sent[UNET] > 0)
        with pytest.raises(AlreadyInstalling, match=f"already being installed \\(install {first.id}"):
            installer.submit(InstallRequest(source=f"{host.base}/tiny-org/tiny-pipe"))  # the same repo, as a URL
        host.release.set()
        assert first.wait(30) and first.snapshot()["state"] == "done", first.snapshot()
    finally:
        host.release.set()
        installer.close()
    assert (tmp_path / "models/Stable-diffusion/tiny-pipe" / UNET).read_bytes() == pipeline_files[UNET]


def test_a_killed_install_is_not_listed_locks_out_others_and_resumes(tmp_path, host, pipeline_files):
    """`./launch.sh install` killed mid-file: while it runs another install of the repo is refused
    (409's AlreadyInstalling) and touches nothing; once killed nothing is listed; the next install
    resumes from what is on disk."""
    import os
    import signal
    import subprocess
    import sys

    from modules.install_types import AlreadyInstalling
    from modules.installer import list_installed

    host.stall.add(UNET)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": host.base, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(root / "app.py"), "install", "tiny-org/tiny-pipe", "--allow-downloads",
                              "--data-dir", str(tmp_path)], cwd=root, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        half = len(pipeline_files[UNET]) // 2
        wait_for(lambda: any(p.stat().st_size == half for p in tmp_path.rglob("diffusion_pytorch_model*.part")),
                 timeout=120, why=lambda: child.stderr.read() if child.poll() is not None else "")
        target = make_target(tmp_path, host)
        before = leftovers(tmp_path)
        with pytest.raises(AlreadyInstalling, match="being installed by another install"):
            install(InstallRequest(source="tiny-org/tiny-pipe"), target)
        assert leftovers(tmp_path) == before  # the refused install wrote nothing
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        host.release.set()
    assert scan_checkpoints([tmp_path / "models/Stable-diffusion"]) == []
    assert scan_checkpoints([tmp_path / "models"]) == []  # --ckpt-dir models: models/.downloads is not scanned
    assert list((tmp_path / "models/.downloads").glob("*-tiny-pipe.folder/model_index.json"))  # though it is there
    assert [r for r in list_installed(target) if r["type"] == "checkpoint"] == []

    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".lock")
    assert on_disk >= half
    host.sent.clear()
    install(InstallRequest(source="tiny-org/tiny-pipe"), target)
    dest = tmp_path / "models/Stable-diffusion/tiny-pipe"
    assert {p: (dest / p).read_bytes() for p in pipeline_files} == pipeline_files
    assert f"bytes={half}-" in host.ranges  # the unet file continued from where the killed install stopped
    assert sum(host.sent.values()) == fetched(pipeline_files) - on_disk  # only what was missing
    assert leftovers(tmp_path) == sorted(f"models/Stable-diffusion/tiny-pipe/{p}" for p in pipeline_files)
    [info] = scan_checkpoints([tmp_path / "models/Stable-diffusion"])
    assert info.path == dest


def wait_for(condition, timeout: float = 30, why=lambda: "") -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out; {why()}"
        time.sleep(0.05)
