"""The extra-networks cards without a browser: listing, descriptions, previews kept inside the
models folders, the folder stamp, and the card panel's prompt edits."""

from __future__ import annotations

import os

import pytest
from PIL import Image
from safetensors.torch import save_file

from modules.network_cards import CardError, find_card, folders_stamp, list_cards, preview_file, set_preview
from tests.test_installer import embedding_pt_bytes, lora_bytes
from tests.tiny_controlnet import write_controlnet
from webui.extra_networks import cards_html, toggle_in_prompt


@pytest.fixture
def networks(services):
    """Services whose data folder also holds a LoRA (with a .txt), an embedding and a ControlNet."""
    data = services.settings.data_dir
    lora_dir = data / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    (lora_dir / "style-a.safetensors").write_bytes(lora_bytes(1))
    (lora_dir / "style-a.txt").write_text("  Bold\noutlines  ")
    (data / "embeddings").mkdir()
    (data / "embeddings" / "zwx-word.pt").write_bytes(embedding_pt_bytes())
    write_controlnet(data / "models" / "ControlNet", "shapes-cn", yaml=False)
    services.networks.loras.refresh()
    return services


def test_every_kind_is_listed_with_its_description(networks):
    cards = {(card.kind, card.name): card for card in list_cards(networks)}
    assert ("checkpoint", "tiny-a.safetensors") in cards and ("checkpoint", "tiny-folder") in cards
    assert cards[("lora", "style-a")].description == "Bold outlines"  # NAME.txt, whitespace folded
    assert cards[("embedding", "zwx-word")].description == "embedding, 2 vector(s) of 32, step 10"
    controlnet = [card for card in cards.values() if card.kind == "controlnet"]
    assert len(controlnet) == 1 and controlnet[0].label == "shapes-cn" and controlnet[0].name.startswith("shapes-cn [")
    assert cards[("checkpoint", "tiny-a.safetensors")].description.startswith("checkpoint, ")


def test_safetensors_metadata_gives_the_description(networks, tmp_path):
    import torch

    path = networks.networks.loras.folder / "meta.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"modelspec.description": "From the metadata"})
    networks.networks.loras.refresh()
    assert find_card(networks, "lora", "meta").description == "From the metadata"


def test_find_card_refuses_what_a_browser_may_send(networks):
    assert find_card(networks, "lora", "style-a").path.name == "style-a.safetensors"
    for kind, name in (("lora", "../../etc/passwd"), ("nonsense", "style-a"), ("lora", None), (None, 3)):
        with pytest.raises(CardError, match="card"):
            find_card(networks, kind, name)


def test_set_preview_writes_beside_the_model_and_the_card_shows_it(networks):
    card = find_card(networks, "checkpoint", "tiny-a.safetensors")
    assert preview_file(card) is None
    path = set_preview(card, Image.new("RGB", (1024, 512), "red"))
    assert path == card.path.with_name("tiny-a.preview.png")
    with Image.open(path) as saved:
        assert saved.size == (512, 256)  # kept small
    assert preview_file(card) == path
    assert "data:image/png;base64," in cards_html([card])
    folder_card = find_card(networks, "checkpoint", "tiny-folder")
    assert set_preview(folder_card, Image.new("RGB", (8, 8))).name == "tiny-folder.preview.png"


def test_a_preview_linked_outside_the_models_folder_is_neither_read_nor_written(networks, tmp_path):
    secret = tmp_path / "outside.png"
    Image.new("RGB", (8, 8), "blue").save(secret)
    card = find_card(networks, "lora", "style-a")
    os.symlink(secret, card.preview_path)
    assert preview_file(card) is None  # never shown
    assert "data:image" not in cards_html([card])
    with pytest.raises(CardError, match="outside"):
        set_preview(card, Image.new("RGB", (8, 8), "green"))
    with Image.open(secret) as untouched:
        assert untouched.getpixel((0, 0)) == (0, 0, 255)


def test_folder_stamp_changes_with_a_new_model_only(networks):
    before = folders_stamp(networks)
    assert folders_stamp(networks) == before
    (networks.settings.data_dir / "outputs").mkdir(exist_ok=True)
    (networks.settings.data_dir / "outputs" / "x.png").write_bytes(b"not a model folder")
    assert folders_stamp(networks) == before
    folder = networks.settings.models_dir / "Stable-diffusion"
    (folder / "new.safetensors").write_bytes((folder / "tiny-a.safetensors").read_bytes())
    assert folders_stamp(networks) != before


def test_search_and_escaping_in_the_cards(networks):
    cards = list_cards(networks)
    shown = cards_html(cards, "bold")
    assert "style-a" in shown and "tiny-a" not in shown
    assert "No models matching" in cards_html(cards, "nothing-like-this")
    weird = find_card(networks, "lora", "style-a")
    from dataclasses import replace

    html_text = cards_html([replace(weird, label="<b>x</b> ${value} {{x}}", description="<script>")])
    assert "<b>" not in html_text and "<script>" not in html_text and "${" not in html_text and "{{" not in html_text


@pytest.mark.parametrize("prompt, text, expected", [
    ("a red circle", "<lora:style-a:1>", "a red circle <lora:style-a:1>"),
    ("a red circle <lora:style-a:0.6>, blue", "<lora:style-a:1>", "a red circle, blue"),
    ("", "zwx-word", "zwx-word"),
    ("a zwx-word shape", "zwx-word", "a shape"),
    ("a zwx-words shape", "zwx-word", "a zwx-words shape zwx-word"),  # a longer word is not the embedding
])
def test_a_card_click_adds_or_takes_out_its_text(prompt, text, expected):
    assert toggle_in_prompt(prompt, text) == expected
