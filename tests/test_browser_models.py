"""The Models tab in a real browser: install from a URL with progress, the list, delete after confirming."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.model_host import ModelHost, create_host_app
from tests.served import served
from tests.test_browser import TIMEOUT_MS, browser, context, free_port, make_data_dir  # noqa: F401 - fixtures
from tests.test_installer import lora_bytes

pytestmark = pytest.mark.browser


@pytest.fixture
def models_server(tmp_path, tiny_models_dir):
    from modules.config import load_settings
    from modules.services import build_services
    from webui.server import start

    data = make_data_dir(tmp_path / "data", tiny_models_dir)
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0}), allow_downloads=True)
    services.installer.target = replace(services.installer.target, allow_private_hosts=True)  # the host is local
    running = start(services, port=free_port(), quiet=True)
    try:
        yield running, data
    finally:
        running.close()
        services.close()


def test_install_list_and_delete_in_the_models_tab(context, models_server, tmp_path):  # noqa: F811
    running, data = models_server
    host = ModelHost()
    host.files["9"] = ("browser-lora.safetensors", lora_bytes(9))
    with served(create_host_app(host)) as port:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(running.local_url)
        page.get_by_role("tab", name="Models").click()
        page.locator("#models_source textarea, #models_source input").first.fill(f"http://127.0.0.1:{port}/files/9")
        page.locator("#models_install").click()
        page.wait_for_selector("#models_status:has-text('Installed lora')")
    assert (data / "models/Lora/browser-lora.safetensors").is_file()
    page.wait_for_selector("#models_table:has-text('browser-lora.safetensors')")
    page.screenshot(path=str(tmp_path / "models-installed.png"))

    page.locator("#models_choice input").fill("lora: browser-lora.safetensors")
    page.get_by_role("option", name="lora: browser-lora.safetensors").click()
    page.locator("#models_delete").click()
    page.locator("#models_keep").click()  # changed one's mind: nothing is deleted
    assert (data / "models/Lora/browser-lora.safetensors").is_file()
    page.locator("#models_delete").click()
    page.locator("#models_confirm").click()
    page.wait_for_selector("#models_delete_status:has-text('Deleted browser-lora.safetensors')")
    assert not (data / "models/Lora/browser-lora.safetensors").exists()
