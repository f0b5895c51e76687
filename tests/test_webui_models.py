"""The Models tab: the request it builds, its progress line, the installed list, delete, the whole tab."""

from __future__ import annotations

from dataclasses import replace

import pytest

from modules.config import load_settings
from modules.schemas import RequestError
from modules.services import build_services
from tests.model_host import ModelHost, create_host_app
from tests.served import served
from tests.test_installer import lora_bytes
from webui import models


@pytest.fixture
def online_services(data_dir):
    s = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0}), allow_downloads=True)
    s.installer.target = replace(s.installer.target, allow_private_hosts=True)  # the test host is 127.0.0.1
    yield s
    s.close()


def test_request_from_fields():
    r = models.install_request(" o/n/f.safetensors ", models.AUTOMATIC, "", False)
    assert (r.source, r.type, r.sha256, r.allow_pickle) == ("o/n/f.safetensors", None, None, False)
    assert models.install_request("o/n", "lora", "A" * 64, True).type == "lora"
    with pytest.raises(RequestError, match="sha256"):
        models.install_request("o/n", models.AUTOMATIC, "abc", False)


def test_progress_lines():
    base = {"state": "running", "stage": "downloading", "done_bytes": 2**20, "total_bytes": 2**21, "error": None,
            "result": None}
    assert "1.0 of 2.0 MiB" in models.progress_html(base) and "<progress" in models.progress_html(base)
    failed = models.progress_html({**base, "state": "failed", "error": "sha256 mismatch <x>"})
    assert "easel-error" in failed and "&lt;x&gt;" in failed


def test_human_sizes():
    assert [models.human_size(n) for n in (1452, 27288414, 6938078334)] == ["1.4 KiB", "26.0 MiB", "6.46 GiB"]


def test_notice_when_downloads_are_off(services, online_services):
    assert "--allow-downloads" in models.downloads_notice(services)
    assert models.downloads_notice(online_services) == ""


def test_install_streams_then_lists_and_deletes(online_services, data_dir):
    host = ModelHost()
    host.files["1"] = ("ui-lora.safetensors", lora_bytes(4))
    with served(create_host_app(host)) as port:
        steps = list(models.run_install(online_services, f"http://127.0.0.1:{port}/files/1", models.AUTOMATIC, "",
                                        False, poll_seconds=0.02))
    assert steps[-1][0] is None and "Installed lora" in steps[-1][1]
    assert "lora: ui-lora.safetensors" in models.model_choices(online_services)
    rows = models.installed_rows(online_services, hashes=True)
    recent = models.recent_installs_html(online_services)
    assert "Recent installs (1)" in recent and "/files/1" in recent and "Installed lora" in recent
    [row] = [r for r in rows if r[:2] == ["lora", "ui-lora.safetensors"]]
    assert len(row[3]) == 10
    assert ["checkpoint", "tiny-folder"] in [r[:2] for r in rows]  # a diffusers folder is one row (no file hash)
    assert "Deleted ui-lora.safetensors" in models.delete_model(online_services, "lora: ui-lora.safetensors")
    assert not (data_dir / "models/Lora/ui-lora.safetensors").exists()
    assert "easel-error" in models.delete_model(online_services, "lora: ../../config.json")


def test_install_refused_shows_the_reason(services):
    steps = list(models.run_install(services, "https://example.com/x.safetensors", models.AUTOMATIC, "", False))
    assert steps == [(None, steps[0][1])] and "--allow-downloads" in steps[0][1]


def test_the_tab_is_in_the_ui(services):
    from webui.app import create_ui

    demo = create_ui(services)
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    for elem_id in ("tab_models", "models_source", "models_install", "models_cancel", "models_table", "models_confirm"):
        assert elem_id in ids, elem_id
