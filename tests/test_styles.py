"""A1111 styles.csv: loading, {prompt} placeholder, order, unknown names, use in a run."""

from __future__ import annotations

import pytest

from modules import styles
from modules.schemas import RequestError

CSV = 'name,prompt,negative_prompt\nanime,"anime style, {prompt}, detailed",lowres\nsharp,sharp focus,"blurry, noisy"\n'


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(CSV)
    return styles.load_styles(path)


def test_load(table):
    assert table["anime"].prompt == "anime style, {prompt}, detailed"
    assert table["sharp"].negative_prompt == "blurry, noisy"


def test_missing_file_means_no_styles(tmp_path):
    assert styles.load_styles(tmp_path / "none.csv") == {}


@pytest.mark.parametrize(
    "prompt,negative,names,expected",
    [
        ("a cat", "", ["anime"], ("anime style, a cat, detailed", "lowres")),
        ("a cat", "ugly", ["sharp"], ("a cat, sharp focus", "ugly, blurry, noisy")),
        ("a cat", "", ["anime", "sharp"], ("anime style, a cat, detailed, sharp focus", "lowres, blurry, noisy")),
        ("", "", ["sharp"], ("sharp focus", "blurry, noisy")),
        ("a cat", "x", [], ("a cat", "x")),
    ],
)
def test_apply(table, prompt, negative, names, expected):
    assert styles.apply_styles(prompt, negative, names, table) == expected


def test_unknown_style_lists_the_known_ones(table):
    with pytest.raises(RequestError, match=r"unknown style 'nope'; known: anime, sharp"):
        styles.apply_styles("a", "", ["nope"], table)


def test_save_round_trip(tmp_path, table):
    path = tmp_path / "out.csv"
    styles.save_styles(path, list(table.values()))
    assert styles.load_styles(path) == table


def test_styles_apply_to_a_txt2img_run(services):
    from modules.processing import txt2img
    from modules.processing.context import RunContext
    from modules.schemas import Txt2ImgRequest

    (services.settings.data_dir / "styles.csv").write_text(CSV)
    with services.models.use(services.checkpoints.get("tiny-a").name) as model:
        ctx = RunContext(model, services.settings, None)
        request = Txt2ImgRequest(prompt="a cat", styles=["anime"], steps=2, width=32, height=32, seed=1, save_images=False)
        r = txt2img.run(request, ctx)
        assert r.prompts == ["anime style, a cat, detailed"]
        assert r.infotexts[0].startswith("anime style, a cat, detailed\nNegative prompt: lowres\n")
        with pytest.raises(RequestError, match="unknown style"):
            txt2img.run(Txt2ImgRequest(prompt="a", styles=["zzz"], steps=1, save_images=False), ctx)


def test_put_and_delete_styles_keep_the_others_in_order(tmp_path):
    from modules.styles import Style, delete_style, load_styles, put_style

    path = tmp_path / "styles.csv"
    put_style(path, Style("a", "{prompt}, sunny", "rain"))
    put_style(path, Style("b, with comma", "bold"))
    put_style(path, Style("a", "{prompt}, cloudy", ""))  # edited in place
    assert list(load_styles(path)) == ["a", "b, with comma"]
    assert load_styles(path)["a"] == Style("a", "{prompt}, cloudy", "")
    delete_style(path, "a")
    assert list(load_styles(path)) == ["b, with comma"]
    with pytest.raises(ValueError, match="no such style"):
        delete_style(path, "a")
    with pytest.raises(ValueError, match="empty"):
        put_style(path, Style("  ", "x"))
