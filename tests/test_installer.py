"""Model installs (modules.installer, modules.install_jobs) against a local hub and file host."""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from modules.install_jobs import Installer
from modules.install_sources import name_from_disposition, parse_source
from modules.installer import InstallError, InstallRequest, InstallTarget, install
from tests.model_host import ModelHost, create_host_app
from tests.served import served
from tests.tiny_models import write_single_file

TYPES = {"checkpoint": "models/Stable-diffusion", "lora": "models/Lora", "vae": "models/VAE",
         "controlnet": "models/ControlNet", "embedding": "embeddings"}


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    return write_single_file(tmp_path_factory.mktemp("ckpt"), "tiny", seed=3, yaml=False).read_bytes()


def lora_bytes(seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    return save({f"{key}.lora_down.weight": torch.randn(4, 32, generator=g),
                 f"{key}.lora_up.weight": torch.randn(32, 4, generator=g), f"{key}.alpha": torch.tensor(4.0)})


def embedding_pt_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"string_to_param": {"*": torch.randn(2, 32)}, "name": "tiny", "step": 10}, buf)
    return buf.getvalue()


class RunsCode:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def evil_pt_bytes() -> bytes:
    return pickle.dumps({"weight": RunsCode()})


@pytest.fixture
def host(checkpoint_bytes):
    h = ModelHost()
    h.repos["tiny-org/tiny-sd"] = {"tiny-sd.safetensors": checkpoint_bytes, "README.md": b"# tiny"}
    h.repos["tiny-org/two-files"] = {"a.safetensors": lora_bytes(1), "b.safetensors": lora_bytes(2)}
    h.repos["tiny-org/pixel-style"] = {"pytorch_lora_weights.safetensors": lora_bytes(3), "README.md": b"#"}
    h.files["123"] = ("tiny-lora.safetensors", lora_bytes())
    h.files["ti"] = ("tiny-ti.pt", embedding_pt_bytes())
    h.files["evil"] = ("evil.pt", evil_pt_bytes())
    h.files["html"] = ("page.safetensors", b"<html>please log in</html>" * 10)
    with served(create_host_app(h)) as port:
        h.base = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield h


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub online in this process (launch.sh runs tests with HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def make_target(data_dir: Path, host=None, allow_downloads: bool = True, **kw) -> InstallTarget:
    """Installs into ``data_dir``; the local host counts as public here unless ``allow_private_hosts=False``."""
    kw.setdefault("allow_private_hosts", True)
    return InstallTarget(data_dir, {k: data_dir / v for k, v in TYPES.items()}, allow_downloads,
                         endpoint=host.base if host else None, **kw)


def leftovers(data_dir: Path) -> list[str]:
    return sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- sources


def test_parse_source_kinds():
    assert parse_source("owner/name") == parse_source("owner/name")
    s = parse_source("stabilityai/stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors@main")
    assert (s.kind, s.text, s.file, s.revision) == ("hub", "stabilityai/stable-diffusion-xl-base-1.0",
                                                   "sd_xl_base_1.0.safetensors", "main")
    assert parse_source("https://civitai.com/api/download/models/123").kind == "url"
    hub = parse_source("https://huggingface.co/o/n/resolve/v1/sub/x.safetensors", endpoint="https://huggingface.co")
    assert (hub.kind, hub.text, hub.file, hub.revision) == ("hub", "o/n", "sub/x.safetensors", "v1")
    page = parse_source("https://huggingface.co/o/n/tree/dev", endpoint="https://huggingface.co")
    assert (page.kind, page.text, page.file, page.revision) == ("hub", "o/n", None, "dev")
    assert parse_source("https://huggingface.co/o/n", endpoint="https://huggingface.co").text == "o/n"
    assert parse_source("./models/x.safetensors").kind == "path"
    assert parse_source("/tmp/x.safetensors").kind == "path"
    with pytest.raises(InstallError, match="not a repo id"):
        parse_source("just-a-name")
    with pytest.raises(InstallError, match="ftp:// is not supported"):
        parse_source("ftp://host/x.safetensors")


def test_content_disposition_names():
    assert name_from_disposition('attachment; filename="a b.safetensors"') == "a b.safetensors"
    assert name_from_disposition("attachment; filename*=UTF-8''caf%C3%A9.safetensors") == "café.safetensors"
    assert name_from_disposition(None) is None


# --------------------------------------------------------------------------- installs


def test_install_by_repo_id(tmp_path, host, online, checkpoint_bytes):
    result = install(InstallRequest(source="tiny-org/tiny-sd"), make_target(tmp_path, host))
    assert result.type == "checkpoint" and result.path == tmp_path / "models/Stable-diffusion/tiny-sd.safetensors"
    assert result.path.read_bytes() == checkpoint_bytes
    assert result.sha256 == hashlib.sha256(checkpoint_bytes).hexdigest()
    assert "sd1" in result.note
    assert leftovers(tmp_path) == ["models/Stable-diffusion/tiny-sd.safetensors"]


def test_installed_file_is_not_downloaded_again(tmp_path, host, online):
    target = make_target(tmp_path, host)
    install(InstallRequest(source="tiny-org/tiny-sd"), target)
    host.drop_first = True  # a download would show up as a dropped first response and a Range
    again = install(InstallRequest(source="tiny-org/tiny-sd"), target)
    assert "nothing downloaded" in again.note and host.ranges == []


def test_generic_diffusers_file_names_take_the_repo_name(tmp_path, host, online):
    result = install(InstallRequest(source="tiny-org/pixel-style"), make_target(tmp_path, host))
    assert result.path == tmp_path / "models/Lora/pixel-style.safetensors"  # <lora:pixel-style>


def test_repo_with_several_files_asks_for_one(tmp_path, host, online):
    with pytest.raises(InstallError, match="several model files.*a.safetensors, b.safetensors"):
        install(InstallRequest(source="tiny-org/two-files"), make_target(tmp_path, host))
    result = install(InstallRequest(source="tiny-org/two-files", file="b.safetensors"), make_target(tmp_path, host))
    assert result.type == "lora" and result.path.name == "b.safetensors"


def test_unknown_repo_is_a_clear_error(tmp_path, host, online):
    with pytest.raises(InstallError, match="not found"):
        install(InstallRequest(source="tiny-org/missing"), make_target(tmp_path, host))


def test_install_by_url_uses_content_disposition(tmp_path, host):
    result = install(InstallRequest(source=f"{host.base}/files/123"), make_target(tmp_path))
    assert result.type == "lora" and result.path == tmp_path / "models/Lora/tiny-lora.safetensors"


def test_a_url_that_needs_a_login_says_how(tmp_path, host):
    with pytest.raises(InstallError, match=r"401 Unauthorized; the file needs a login: for Civitai add \?token="):
        install(InstallRequest(source=f"{host.base}/api/download/models/login"), make_target(tmp_path))


def test_resume_after_dropped_connection(tmp_path, host):
    host.drop_first = True
    result = install(InstallRequest(source=f"{host.base}/files/123"), make_target(tmp_path))
    data = host.files["123"][1]
    assert result.path.read_bytes() == data
    assert host.ranges == [f"bytes={len(data) // 2}-"]  # the rest only, from where the connection dropped


def test_old_unfinished_downloads_are_removed_at_the_next_install(tmp_path, host):
    import os
    import time

    target = make_target(tmp_path)
    old, fresh = target.downloads_dir / "abc-old.safetensors.part", target.downloads_dir / "def-new.safetensors.part"
    target.downloads_dir.mkdir(parents=True)
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    install(InstallRequest(source=f"{host.base}/files/123"), target)
    assert not old.exists() and fresh.exists()  # a recent one may still be resumed


def test_a_file_being_downloaded_is_not_fetched_twice(tmp_path, host):
    from modules.install_download import install_lock, part_path
    from modules.install_types import AlreadyInstalling, Resolved

    target = make_target(tmp_path)
    part = part_path(target, Resolved("", "tiny-lora.safetensors", None, None, {}, f"url:{host.base}/files/123"))
    with install_lock(part, "tiny-lora.safetensors"):
        with pytest.raises(AlreadyInstalling, match="tiny-lora.safetensors is being installed by another install"):
            install(InstallRequest(source=f"{host.base}/files/123"), target)
    assert install(InstallRequest(source=f"{host.base}/files/123"), target).type == "lora"
    assert leftovers(tmp_path) == ["models/Lora/tiny-lora.safetensors"]


def test_sha256_mismatch_refused_and_nothing_left(tmp_path, host):
    with pytest.raises(InstallError, match="sha256 mismatch"):
        install(InstallRequest(source=f"{host.base}/files/123", sha256="0" * 64), make_target(tmp_path))
    assert leftovers(tmp_path) == []


def test_given_sha256_that_matches(tmp_path, host):
    sha = hashlib.sha256(host.files["123"][1]).hexdigest()
    assert install(InstallRequest(source=f"{host.base}/files/123", sha256=sha.upper()), make_target(tmp_path)).sha256 == sha


def test_pickle_refused_unless_allowed(tmp_path, host):
    with pytest.raises(InstallError, match="pickles.*allow"):
        install(InstallRequest(source=f"{host.base}/files/ti"), make_target(tmp_path))
    assert leftovers(tmp_path) == []
    result = install(InstallRequest(source=f"{host.base}/files/ti", allow_pickle=True), make_target(tmp_path))
    assert result.type == "embedding" and result.path == tmp_path / "embeddings/tiny-ti.pt"


def test_pickle_that_runs_code_refused_even_when_allowed(tmp_path, host, capsys):
    with pytest.raises(InstallError, match="refused"):
        install(InstallRequest(source=f"{host.base}/files/evil", allow_pickle=True), make_target(tmp_path))
    assert "this pickle runs code" not in capsys.readouterr().out
    assert leftovers(tmp_path) == []


def test_not_a_safetensors_file_refused(tmp_path, host):
    with pytest.raises(InstallError, match="not a .safetensors file"):
        install(InstallRequest(source=f"{host.base}/files/html"), make_target(tmp_path))
    assert leftovers(tmp_path) == []


def test_wrong_family_goes_where_its_contents_say(tmp_path, host, online):
    result = install(InstallRequest(source="tiny-org/tiny-sd", type="lora"), make_target(tmp_path, host))
    assert result.type == "checkpoint" and result.path.parent == tmp_path / "models/Stable-diffusion"
    assert "you asked for a lora" in result.note


def test_same_file_twice_is_kept_other_contents_refused(tmp_path, host):
    target = make_target(tmp_path)
    install(InstallRequest(source=f"{host.base}/files/123"), target)
    again = install(InstallRequest(source=f"{host.base}/files/123"), target)
    assert "already installed" in again.note
    host.files["123"] = ("tiny-lora.safetensors", lora_bytes(seed=9))
    with pytest.raises(InstallError, match="already exists"):
        install(InstallRequest(source=f"{host.base}/files/123"), target)
    assert leftovers(tmp_path) == ["models/Lora/tiny-lora.safetensors"]


def test_size_limit(tmp_path, host):
    with pytest.raises(InstallError, match="over the"):
        install(InstallRequest(source=f"{host.base}/files/123"), make_target(tmp_path, max_bytes=100))


def test_offline_says_how_to_turn_downloads_on(tmp_path, host):
    with pytest.raises(InstallError, match="downloads are off.*--allow-downloads"):
        install(InstallRequest(source="tiny-org/tiny-sd"), make_target(tmp_path, host, allow_downloads=False))
    with pytest.raises(InstallError, match="downloads are off"):
        install(InstallRequest(source=f"{host.base}/files/123"), make_target(tmp_path, allow_downloads=False))


def test_hub_offline_env_named(tmp_path, host, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InstallError, match="HF_HUB_OFFLINE=1"):
        install(InstallRequest(source="tiny-org/tiny-sd"), make_target(tmp_path, host))


def test_local_path_needs_server_paths_for_clients(tmp_path):
    src = tmp_path / "elsewhere" / "style.safetensors"
    src.parent.mkdir()
    src.write_bytes(lora_bytes())
    data = tmp_path / "data"
    with pytest.raises(InstallError, match="--allow-server-paths"):
        install(InstallRequest(source=str(src)), make_target(data, allow_downloads=False))
    result = install(InstallRequest(source=str(src)), make_target(data, allow_downloads=False), from_client=False)
    assert result.path == data / "models/Lora/style.safetensors" and src.exists()


def test_clients_cannot_make_the_server_fetch_from_its_own_network(tmp_path, host, monkeypatch):
    import modules.install_sources as sources

    target = make_target(tmp_path, allow_private_hosts=False)
    for url in (f"{host.base}/files/123", "http://169.254.169.254/latest/meta-data", "http://[::1]:1/x.safetensors"):
        with pytest.raises(InstallError, match="private network"):
            install(InstallRequest(source=url), target)
    monkeypatch.setattr(sources, "host_addresses", lambda host: ["10.0.0.5"])  # a name that resolves inside
    with pytest.raises(InstallError, match="private network"):
        install(InstallRequest(source="https://models.example/x.safetensors"), target)
    # the operator (CLI) may fetch from anywhere
    assert install(InstallRequest(source=f"{host.base}/files/123"), target, from_client=False).type == "lora"


# --------------------------------------------------------------------------- the download worker


def test_installer_job_reports_progress_and_refreshes(tmp_path, host):
    seen = []
    installer = Installer(make_target(tmp_path), on_installed=seen.append)
    try:
        job = installer.submit(InstallRequest(source=f"{host.base}/files/123"))
        assert job.wait(30)
        snap = job.snapshot()
        assert snap["state"] == "done", snap
        assert snap["progress"] == 1.0 and snap["result"]["type"] == "lora"
        assert [r.name for r in seen] == ["tiny-lora.safetensors"]
    finally:
        installer.close()


def test_installer_refuses_at_submit_when_offline(tmp_path):
    installer = Installer(make_target(tmp_path, allow_downloads=False))
    try:
        with pytest.raises(InstallError, match="--allow-downloads"):
            installer.submit(InstallRequest(source="https://example.com/x.safetensors"))
    finally:
        installer.close()


def test_cancel_removes_the_partial_file(tmp_path, host):
    from modules.installer import InstallCancelled

    with pytest.raises(InstallCancelled):
        install(InstallRequest(source=f"{host.base}/files/123"), make_target(tmp_path), cancelled=lambda: True)
    assert leftovers(tmp_path) == []


def test_shutdown_keeps_the_partial_file_for_the_next_install(tmp_path, host):
    """Closing the installer (the server stopping) mid-download is not a cancel: the next install resumes."""
    import time

    host.stall.add("123")
    installer = Installer(make_target(tmp_path))
    try:
        job = installer.submit(InstallRequest(source=f"{host.base}/files/123"))
        deadline = time.monotonic() + 30
        while host.sent["123"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        installer.close()
    finally:
        host.release.set()
    assert job.wait(30) and job.state == "failed" and "shutting down" in job.error
    data = host.files["123"][1]
    [part] = [p for p in leftovers(tmp_path) if p.endswith(".part")]
    assert (tmp_path / part).stat().st_size == len(data) // 2
    install(InstallRequest(source=f"{host.base}/files/123"), make_target(tmp_path))
    assert host.ranges == [f"bytes={len(data) // 2}-"]
    assert leftovers(tmp_path) == ["models/Lora/tiny-lora.safetensors"]


def test_a_failed_install_does_not_show_the_token(tmp_path, host):
    installer = Installer(make_target(tmp_path))
    try:
        job = installer.submit(InstallRequest(source=f"{host.base}/api/download/models/login?token=s3cret"))
        assert job.wait(30)
        snap = job.snapshot()
        assert snap["state"] == "failed" and "401" in snap["error"]
        assert "s3cret" not in snap["error"] and "s3cret" not in snap["source"]
    finally:
        installer.close()


def test_cancel_a_finished_install_changes_nothing(tmp_path, host):
    installer = Installer(make_target(tmp_path))
    try:
        job = installer.submit(InstallRequest(source=f"{host.base}/files/123"))
        assert job.wait(30)
        assert installer.cancel(job.id).state == "done"
        assert installer.cancel("nope") is None
    finally:
        installer.close()


def test_secrets_in_a_source_are_not_shown():
    from modules.install_jobs import shown_source

    assert shown_source("https://civitai.com/api/download/models/1?type=Model&token=abc123") == \
        "https://civitai.com/api/download/models/1?type=Model&token=***"
    assert shown_source("https://user:pw@host.example/x.safetensors") == "https://***@host.example/x.safetensors"
    assert shown_source("owner/name/file.safetensors") == "owner/name/file.safetensors"
