"""Extra-networks cards and self-refreshing model lists (issue #24, item 5) in a real browser.

Same set-up as ``tests/test_browser.py`` (Debian's Chromium driven by Playwright, skipped with the
reason when either is missing). Every wait is for a state of the page, never a fixed time.
"""

from __future__ import annotations

import shutil

import pytest

from tests.test_browser import (  # noqa: F401 - browser and context are fixtures
    DEFAULT_CKPT,
    SIZE,
    browser,
    context,
    make_data_dir,
    open_page,
    running_server,
    set_slider,
)
from tests.test_installer import lora_bytes
from tests.tiny_controlnet import write_controlnet

pytestmark = pytest.mark.browser


def wait_value(page, selector: str, value: str) -> None:
    page.wait_for_function("([sel, want]) => document.querySelector(sel)?.value === want", arg=[selector, value])


def card(page, prefix: str, kind: str, name: str):
    return page.locator(f"#{prefix}_extra_networks_cards .easel-card[data-kind='{kind}'][data-name='{name}']")


def open_cards(page, prefix: str = "txt2img") -> None:
    page.locator(f"#{prefix}_extra_networks").get_by_text("Extra networks").click()
    page.locator(f"#{prefix}_extra_networks_cards .easel-card").first.wait_for()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models_dir):
    data = make_data_dir(tmp_path_factory.mktemp("webui-cards"), tiny_models_dir)
    (data / "models" / "Lora").mkdir(parents=True)
    (data / "models" / "Lora" / "style-a.safetensors").write_bytes(lora_bytes(3))
    (data / "models" / "Lora" / "style-a.txt").write_text("Bold outlines, trained on ten pictures.\n")
    for seed, name in enumerate(("cn-one", "cn-two")):  # two: the unit's model is not preselected
        write_controlnet(data / "models" / "ControlNet", name, seed=seed, yaml=False)
    with running_server(data) as running:
        yield running


@pytest.fixture
def page(context, server):  # noqa: F811
    return open_page(context, server[0].local_url)


def test_card_click_inserts_the_lora_tag_search_and_set_preview(page, server, tmp_path):
    services = server[1]
    open_cards(page)
    lora = card(page, "txt2img", "lora", "style-a")
    assert "Bold outlines" in lora.inner_text()  # the description from style-a.txt
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a red circle")
    wait_value(page, "#txt2img_prompt textarea", "a red circle")
    lora.locator(".easel-card-name").click()
    wait_value(page, "#txt2img_prompt textarea", "a red circle <lora:style-a:1>")
    lora.locator(".easel-card-name").click()  # a second click takes it out again, as in A1111
    wait_value(page, "#txt2img_prompt textarea", "a red circle")
    # search: only the cards that match stay
    page.locator("#txt2img_extra_networks_search textarea, #txt2img_extra_networks_search input").first.fill("outlines")
    page.wait_for_function("() => document.querySelectorAll('#txt2img_extra_networks_cards .easel-card').length === 1")
    assert card(page, "txt2img", "lora", "style-a").count() == 1
    page.locator("#txt2img_extra_networks_search textarea, #txt2img_extra_networks_search input").first.fill("")
    # set preview: the selected result becomes NAME.preview.png beside the checkpoint, and the card shows it
    set_slider(page, "txt2img_steps", 2)
    set_slider(page, "txt2img_width", SIZE)
    set_slider(page, "txt2img_height", SIZE)
    page.locator("#txt2img_generate").click()
    page.wait_for_selector("#txt2img_gallery img")
    page.wait_for_selector("#txt2img_generate:visible")
    name = f"{DEFAULT_CKPT}.safetensors"
    checkpoint_card = card(page, "txt2img", "checkpoint", name)
    checkpoint_card.locator(".easel-card-preview").click()
    page.wait_for_selector("#txt2img_extra_networks_status:has-text('Preview of')")
    preview = services.settings.models_dir / "Stable-diffusion" / f"{DEFAULT_CKPT}.preview.png"
    assert preview.is_file()
    card(page, "txt2img", "checkpoint", name).locator("img").wait_for()
    page.screenshot(path=str(tmp_path / "cards.png"))
    # a ControlNet card becomes the model of the tab's unit 0
    page.locator("#txt2img_controlnet").get_by_text("ControlNet", exact=True).first.click()
    assert page.locator("#txt2img_cn0_model input").input_value() == "None"
    card(page, "txt2img", "controlnet", services.controlnet_infos()[1].name).locator(".easel-card-name").click()
    page.wait_for_function("document.querySelector('#txt2img_cn0_model input').value.startsWith('cn-two [')")
    # a checkpoint card selects the checkpoint in the top dropdown and loads it
    card(page, "txt2img", "checkpoint", "tiny-b.safetensors").locator(".easel-card-name").click()
    page.wait_for_function("document.querySelector('#sd_model_checkpoint input').value.startsWith('tiny-b.safetensors')")
    page.wait_for_selector("#sd_model_status:has-text('Loaded')")
    assert services.selected_checkpoint == "tiny-b.safetensors"
    services.select_checkpoint(DEFAULT_CKPT).wait(60)


def test_a_new_checkpoint_appears_in_the_dropdown_and_cards_without_a_click(page, server, tmp_path):
    from modules.training.job import refresh_lists

    services = server[1]
    open_cards(page)
    folder = services.settings.models_dir / "Stable-diffusion"
    # what a DreamBooth job does at its end: write the checkpoint, then refresh the registry
    shutil.copy2(folder / "tiny-a.safetensors", folder / "trained-zwx.safetensors")
    refresh_lists(services)
    card(page, "txt2img", "checkpoint", "trained-zwx.safetensors").wait_for()
    page.locator("#sd_model_checkpoint input").click()
    page.get_by_role("option", name="trained-zwx.safetensors", exact=False).first.wait_for()
    page.keyboard.press("Escape")
    # a file the installer (or the user) puts into models/Lora shows up as a card too
    (services.settings.models_dir / "Lora" / "installed-b.safetensors").write_bytes(lora_bytes(4))
    card(page, "txt2img", "lora", "installed-b").wait_for()
    assert page.locator("#refresh_sd_model_checkpoint").count() == 1  # never clicked
