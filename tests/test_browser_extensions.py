"""Extensions in a real browser: the extension's tab, its javascript and css in the page, the Extensions tab."""

from __future__ import annotations

import shutil

import pytest

from tests.test_browser import TIMEOUT_MS, browser, context, free_port, make_data_dir  # noqa: F401 - fixtures
from tests.test_extensions import FIXTURES

pytestmark = pytest.mark.browser


@pytest.fixture
def ext_server(tmp_path, tiny_models_dir):
    from modules.a1111_compat.loader import load_extensions
    from modules.config import load_settings
    from modules.services import build_services
    from webui.server import start

    data = make_data_dir(tmp_path / "data", tiny_models_dir)
    for name in ("rewriter", "broken"):
        shutil.copytree(FIXTURES / name, data / "extensions" / name)
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0}))
    extensions = load_extensions(services)
    running = start(services, port=free_port(), quiet=True)
    try:
        yield running
    finally:
        running.close()
        extensions.unload()
        services.close()


def test_extension_tab_script_style_and_the_extensions_tab(context, ext_server, tmp_path):  # noqa: F811
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(ext_server.local_url)
    page.wait_for_function("window.rewriterLoaded === true")  # the head is put into the page as it loads
    page.get_by_role("tab", name="Rewriter").click()
    marker = page.locator("#rewriter_markdown")
    marker.wait_for()
    assert marker.evaluate("el => getComputedStyle(el).color") == "rgb(1, 2, 3)"
    page.get_by_role("tab", name="Extensions").click()
    page.wait_for_selector("#extensions_table:has-text('ModuleNotFoundError')")
    page.wait_for_selector("#extensions_table:has-text('Prompt rewriter')")
    page.screenshot(path=str(tmp_path / "extensions-tab.png"))
