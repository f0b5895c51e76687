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
