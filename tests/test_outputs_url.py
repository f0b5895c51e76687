"""Saved images under an fsspec URL (modules/outputs_url.py, the serve command's --outputs-url):
readable files with their infotext, A1111 numbering, names apart per writer, whole files only."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import fsspec
import pytest
from PIL import Image

from modules.images import ImageSaveError, ImageSaver, read_infotext
from modules.outputs_url import OutputsUrlError, UrlOutputs

INFO = "a red circle\nSteps: 2, Sampler: Euler a, Seed: {seed}, Size: 16x16, Model: tiny-a"


def red(size: int = 16) -> Image.Image:
    return Image.new("RGB", (size, size), (200, 10, 10))


def read(url: str) -> tuple[Image.Image, str | None]:
    fs, path = fsspec.core.url_to_fs(url)
    data = fs.cat_file(path)
    import io

    return Image.open(io.BytesIO(data)), read_infotext(data)


def test_memory_url_files_are_readable_numbered_and_carry_their_infotext(tmp_path):
    url = f"memory://easel-{uuid.uuid4().hex[:8]}/outputs"
    saver = ImageSaver(outputs=UrlOutputs(url, tmp_path, tag="rep1"))
    outdir = tmp_path / "outputs" / "txt2img-images"
    saved = [saver.save_image(red(), outdir, seed, INFO.format(seed=seed), use_date_subdir=False) for seed in (7, 8)]
    assert saved == [f"{url}/txt2img-images/00000-7-rep1.png", f"{url}/txt2img-images/00001-8-rep1.png"]
    image, text = read(saved[1])
    assert image.size == (16, 16) and image.getpixel((3, 3)) == (200, 10, 10)
    assert text == INFO.format(seed=8)
    assert not (tmp_path / "outputs").exists()  # nothing went to the local folder


def test_two_writers_of_one_url_never_take_the_same_name(tmp_path):
    """Two replicas (separate savers, separate locks) saving at once into one shared place."""
    url = f"memory://easel-{uuid.uuid4().hex[:8]}/out"
    savers = [ImageSaver(outputs=UrlOutputs(url, tmp_path, tag=tag)) for tag in ("rep1", "rep2")]
    results: list[str] = []

    def save(saver: ImageSaver, seed: int) -> None:
        results.append(saver.save_image(red(), tmp_path / "outputs" / "x", seed, INFO.format(seed=seed),
                                        use_date_subdir=False))

    threads = [threading.Thread(target=save, args=(savers[i % 2], i)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    fs, root = fsspec.core.url_to_fs(url)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/x", detail=False))
    assert len(set(results)) == 8 and len(names) == 8
    assert sum(n.endswith("-rep1.png") for n in names) == 4 and sum(n.endswith("-rep2.png") for n in names) == 4


def test_file_url_moves_whole_files_into_place_and_maps_the_data_folder(tmp_path):
    shared = tmp_path / "shared"
    data = tmp_path / "data"
    saver = ImageSaver(file_format="webp", outputs=UrlOutputs(shared.as_uri(), data, tag="r9"))
    url = saver.save_image(red(), data / "outputs" / "img2img-images", 3, INFO.format(seed=3), pattern="[seed]",
                           use_date_subdir=False)
    again = saver.save_image(red(), data / "outputs" / "img2img-images", 3, INFO.format(seed=3), pattern="[seed]",
                             use_date_subdir=False)
    assert url == (shared / "img2img-images" / "3-r9.webp").as_uri()
    assert again == (shared / "img2img-images" / "3-1-r9.webp").as_uri()
    assert sorted(p.name for p in (shared / "img2img-images").iterdir()) == ["3-1-r9.webp", "3-r9.webp"]  # no .tmp left
    assert read(url)[1] == INFO.format(seed=3)
    # a folder of the data folder outside outputs/, and one outside the data folder
    outside = saver.save_image(red(), tmp_path / "elsewhere", 4, "x", use_date_subdir=False)
    assert outside == (shared / tmp_path.relative_to("/") / "elsewhere" / "00000-4-r9.webp").as_uri()
    inside = saver.save_image(red(), data / "grids", 5, "x", use_date_subdir=False)
    assert inside == (shared / "grids" / "00000-5-r9.webp").as_uri()


def test_a_failed_save_names_the_url_and_leaves_nothing(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "txt2img-images").write_text("a file where the folder should be")
    saver = ImageSaver(outputs=UrlOutputs(shared.as_uri(), tmp_path, tag="r"))
    with pytest.raises(ImageSaveError) as caught:
        saver.save_image(red(), tmp_path / "outputs" / "txt2img-images", 1, "x", use_date_subdir=False)
    assert str(caught.value).startswith(f"could not save the image in {(shared / 'txt2img-images').as_uri()}")
    assert sorted(p.name for p in shared.iterdir()) == ["txt2img-images"]


@pytest.mark.parametrize("url, words", [("nosuchproto://bucket/x", "Protocol not known"),
                                        ("/a/local/path", "give a URL such as")])
def test_a_url_that_cannot_work_is_refused_naming_the_flag(url, words):
    with pytest.raises(OutputsUrlError, match=words) as caught:
        UrlOutputs(url, Path("/data"))
    assert str(caught.value).startswith(f"--outputs-url {url!r}")
