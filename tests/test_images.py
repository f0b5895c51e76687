"""Saving images with infotext, reading it back, base64 decoding/encoding and grids."""

import base64
import datetime as dt
import io
import random
import threading
from pathlib import Path

import pytest
from PIL import Image

from modules.images import (
    ImageSaver,
    decode_image,
    encode_image_base64,
    image_grid,
    labelled_grid,
    read_infotext,
    save_image,
)

DAY = dt.date(2024, 5, 17)
INFOTEXT = "a red fox, (snow:1.2)\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 42, Size: 16x8"


def solid(color, size=(16, 8)):
    return Image.new("RGB", size, color)


def png_bytes(image, **params):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


NOISY_PNG = png_bytes(Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3)))


# -- saving ------------------------------------------------------------------------------------


def test_first_file_in_a_date_folder(tmp_path):
    path = save_image(solid("red"), tmp_path, 42, INFOTEXT, date=DAY)
    assert path == tmp_path / "2024-05-17" / "00000-42.png"
    with Image.open(path) as saved:
        assert saved.size == (16, 8)
        assert saved.getpixel((3, 3)) == (255, 0, 0)


def test_numbering_continues_after_existing_files(tmp_path):
    folder = tmp_path / "2024-05-17"
    folder.mkdir()
    (folder / "00007-1.png").write_bytes(b"x")
    (folder / "00003-9.png").write_bytes(b"x")
    (folder / "notes.txt").write_text("no number")
    path = save_image(solid("blue"), tmp_path, 1234, INFOTEXT, date=DAY)
    assert path.name == "00008-1234.png"
    assert save_image(solid("blue"), tmp_path, 5, INFOTEXT, date=DAY).name == "00009-5.png"


def test_without_date_subdir(tmp_path):
    path = save_image(solid("red"), tmp_path, 3, INFOTEXT, date=DAY, use_date_subdir=False)
    assert path == tmp_path / "00000-3.png"


def test_png_carries_parameters_and_read_infotext_gets_them_back(tmp_path):
    text = INFOTEXT.replace("fox", "f\u00f6x \u72d0")  # non-Latin-1 text needs an iTXt chunk
    path = save_image(solid("red"), tmp_path, 42, text, date=DAY)
    with Image.open(path) as saved:
        saved.load()
        assert saved.info["parameters"] == text
    assert read_infotext(path) == text
    assert read_infotext(path.read_bytes()) == text
    with Image.open(path) as saved:
        assert read_infotext(saved) == text


def test_read_infotext_absent_and_unreadable(tmp_path):
    assert read_infotext(png_bytes(solid("red"))) is None
    with pytest.raises(ValueError, match="not a readable image"):
        read_infotext(b"definitely not an image")


def test_pattern_tokens(tmp_path):
    when = dt.datetime(2024, 5, 17, 13, 4, 5)
    path = save_image(
        solid("red"),
        tmp_path,
        42,
        "A red fox, jumping!! over/the lazy dog's back in a snowy field\nSteps: 1, Seed: 42, CFG scale: 7",
        pattern="[number]-[date]-[datetime]-[width]x[height]-[seed]-[prompt_words]",
        date=when,
    )
    assert path.parent.name == "2024-05-17"
    assert path.name == "00000-2024-05-17-20240517130405-16x8-42-A red fox jumping over the lazy dog.png"


def test_prompt_words_are_short_and_safe(tmp_path):
    prompt = "/".join(["verylongword" * 3] * 8) + "\nSteps: 1, Seed: 1, CFG scale: 7"
    path = save_image(solid("red"), tmp_path, 1, prompt, pattern="[prompt_words]", date=DAY)
    assert path.parent == tmp_path / "2024-05-17"
    assert len(path.stem) <= 80 and "/" not in path.stem


def test_pattern_without_number_does_not_overwrite(tmp_path):
    first = save_image(solid("red"), tmp_path, 7, INFOTEXT, pattern="[seed]", date=DAY)
    second = save_image(solid("blue"), tmp_path, 7, INFOTEXT, pattern="[seed]", date=DAY)
    assert (first.name, second.name) == ("7.png", "7-1.png")
    with Image.open(first) as image:
        assert image.getpixel((0, 0)) == (255, 0, 0)


def test_number_counts_files_sharing_the_prefix(tmp_path):
    folder = tmp_path / "2024-05-17"
    folder.mkdir()
    (folder / "99999-1.png").write_bytes(b"x")  # not "seed-" prefixed: ignored
    (folder / "7-00004.png").write_bytes(b"x")
    path = save_image(solid("red"), tmp_path, 7, INFOTEXT, pattern="[seed]-[number]", date=DAY)
    assert path.name == "7-00005.png"


@pytest.mark.parametrize("pattern", ["[number]-[sede]", "[nope]"])
def test_unknown_token_lists_known_ones(tmp_path, pattern):
    with pytest.raises(ValueError, match=r"unknown token .*\[seed\].*\[prompt_words\]"):
        save_image(solid("red"), tmp_path, 1, INFOTEXT, pattern=pattern, date=DAY)


@pytest.mark.parametrize("pattern", ["../[seed]", "a/b-[number]", "x:[seed]", ""])
def test_unsafe_pattern_rejected(tmp_path, pattern):
    with pytest.raises(ValueError, match="not usable as a file name"):
        save_image(solid("red"), tmp_path, 1, INFOTEXT, pattern=pattern, date=DAY)
    assert list(tmp_path.iterdir()) == []


def test_two_threads_get_distinct_files_and_leave_no_temp_files(tmp_path):
    saver = ImageSaver()
    paths: list[Path] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(color):
        start.wait()
        try:
            for seed in range(10):
                paths.append(saver.save_image(solid(color), tmp_path, seed, INFOTEXT, date=DAY))
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(c,)) for c in ("red", "blue")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(paths)) == 20
    files = sorted(p.name for p in (tmp_path / "2024-05-17").iterdir())
    assert len(files) == 20 and all(f.endswith(".png") and not f.startswith(".") for f in files)
    assert sorted(int(f[:5]) for f in files) == list(range(20))
    for p in paths:
        assert read_infotext(p) == INFOTEXT


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def disk_error(fd):
        raise OSError("simulated disk error")

    monkeypatch.setattr("modules.images.os.fsync", disk_error)  # fails after the PNG bytes are written
    with pytest.raises(OSError, match="simulated disk error"):
        save_image(solid("red"), tmp_path, 1, INFOTEXT, date=DAY)
    assert list((tmp_path / "2024-05-17").iterdir()) == []


# -- base64 ------------------------------------------------------------------------------------


def test_decode_raw_base64_data_url_and_bytes():
    data = png_bytes(solid((10, 20, 30)))
    raw = base64.b64encode(data).decode()
    for source in (raw, f"data:image/png;base64,{raw}", data, raw[: len(raw) - raw.count("=")]):
        image = decode_image(source)
        assert image.size == (16, 8)
        assert image.getpixel((5, 5)) == (10, 20, 30)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not base64 at all!!",
        base64.b64encode(b"hello world, not an image").decode(),
        "data:image/png;base64,%%%",
        "data:text/plain,hello",
        b"",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40,  # a PNG signature with a broken body
        NOISY_PNG[: len(NOISY_PNG) // 2],  # truncated in the middle of the pixel data
        12345,
    ],
)
def test_decode_garbage_raises_value_error(garbage):
    with pytest.raises(ValueError, match="is not a readable image"):
        decode_image(garbage)


def test_encode_keeps_parameters_chunk():
    encoded = encode_image_base64(solid("red"), infotext=INFOTEXT)
    image = decode_image(encoded)
    assert image.info["parameters"] == INFOTEXT
    again = decode_image(encode_image_base64(image))  # carried over from the image itself
    assert read_infotext(again) == INFOTEXT
    assert image.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("fmt", ["JPEG", "webp"])
def test_encode_jpeg_and_webp_carry_infotext_in_exif(fmt):
    text = INFOTEXT + ", Note: \u00e9t\u00e9"
    image = decode_image(encode_image_base64(Image.new("RGBA", (16, 16), (0, 0, 255, 255)), fmt, text))
    assert image.format == fmt.upper()
    assert read_infotext(image) == text


def test_encode_unknown_format():
    with pytest.raises(ValueError, match="PNG, JPEG, WEBP"):
        encode_image_base64(solid("red"), "TIFF")


# -- grids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "rows", "expected"),
    [(1, None, (1, 1)), (2, None, (1, 2)), (3, None, (2, 2)), (4, None, (2, 2)), (5, None, (2, 3)),
     (9, None, (3, 3)), (10, None, (3, 4)), (4, 1, (1, 4)), (6, 3, (3, 2)), (5, 4, (3, 2)), (2, 5, (2, 1))],
)
def test_grid_shapes(count, rows, expected):
    grid = image_grid([solid("red")] * count, rows=rows)
    assert grid.size == (expected[1] * 16, expected[0] * 8)


def test_grid_places_images_row_by_row():
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    grid = image_grid([solid(c) for c in colors])  # 2x2, last cell empty
    assert grid.getpixel((8, 4)) == colors[0]
    assert grid.getpixel((24, 4)) == colors[1]
    assert grid.getpixel((8, 12)) == colors[2]
    assert grid.getpixel((24, 12)) == (0, 0, 0)


def test_grid_centres_smaller_images():
    grid = image_grid([solid("red", (16, 16)), solid("blue", (8, 8))])
    assert grid.size == (32, 16)
    assert grid.getpixel((24, 8)) == (0, 0, 255)
    assert grid.getpixel((17, 1)) == (0, 0, 0)


def test_grid_bad_input():
    with pytest.raises(ValueError, match="at least one image"):
        image_grid([])
    with pytest.raises(ValueError, match="at least 1 row"):
        image_grid([solid("red")], rows=0)


def test_labelled_grid_draws_labels_and_places_images():
    size = (64, 48)
    colors = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200)]
    images = [solid(c, size) for c in colors]
    grid = labelled_grid(images, ["Steps: 10", "Steps: 20"], ["Euler", "DDIM", "DPM++ 2M"])
    pad_left, pad_top = grid.width - 3 * size[0], grid.height - 2 * size[1]
    assert pad_left > 0 and pad_top > 0
    for index, color in enumerate(colors):
        row, col = divmod(index, 3)
        assert grid.getpixel((pad_left + col * size[0] + 32, pad_top + row * size[1] + 24)) == color
    header = grid.crop((pad_left, 0, grid.width, pad_top))
    left_margin = grid.crop((0, pad_top, pad_left, grid.height))
    assert header.convert("L").getextrema()[0] < 128  # dark text pixels in the column labels
    assert left_margin.convert("L").getextrema()[0] < 128  # and in the row labels
    assert grid.getpixel((0, 0)) == (255, 255, 255)


def test_labelled_grid_with_columns_only_and_count_check():
    grid = labelled_grid([solid("red", (64, 48))] * 2, [], ["a", "b"])
    assert grid.width == 128 and grid.height > 48
    with pytest.raises(ValueError, match="need 4 images"):
        labelled_grid([solid("red")] * 3, ["r1", "r2"], ["c1", "c2"])
