"""Captions of instance images (``NAME.txt`` beside ``NAME.png``, uploaded ``.txt`` files, or the API's
``instance_captions``) and ``[filewords]`` in the instance and class prompts, on the tiny checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from modules.access import ClientAccess
from modules.schemas import RequestError, Txt2ImgRequest
from modules.training import data as training_data
from modules.training import job as training
from modules.training.lora_train import LoraMethod
from tests.test_training import FAST, b64, images, poll

CAPTIONS = ["a red zwx shape on the left", "a blue zwx shape at the top", "a green zwx shape in the center"]
FILEWORDS = {**FAST, "instance_prompt": "[filewords]", "class_prompt": "[filewords]", "token": "zwx",
             "instance_captions": CAPTIONS}


def image_folder(folder, prefix: str = "", captions: dict[int, str] | None = None):
    """Three seeded images PREFIX0.png .. PREFIX2.png, with PREFIXi.txt for each i in ``captions``."""
    folder.mkdir()
    for i, image in enumerate(images(3)):
        image.save(folder / f"{prefix}{i}.png")
    for i, text in (captions or {}).items():
        (folder / f"{prefix}{i}.txt").write_text(text)
    return folder


def test_captions_come_from_sidecar_files_in_a_folder_and_among_uploads(services, tmp_path):
    folder = image_folder(tmp_path / "folder", captions={0: "  a red zwx shape\n  second line ignored\n",
                                                         2: "a blue zwx shape"})
    (folder / "orphan.txt").write_text("no image of this name")
    found = training_data.load_instance_images(folder=folder)
    assert found.captions == ["a red zwx shape", None, "a blue zwx shape"]
    assert found.warnings == ["orphan.txt skipped: a caption file without an image orphan.*"]

    uploaded = tmp_path / "uploaded"  # the UI's uploads: each file in a folder of its own, captions among them
    paths = []
    for i, image in enumerate(images(3)):
        (uploaded / f"u{i}").mkdir(parents=True)
        paths.append(uploaded / f"u{i}" / f"pic{i}.png")
        image.save(paths[-1])
    (uploaded / "c1").mkdir()
    (uploaded / "c1" / "pic1.txt").write_text("a green zwx shape")
    request = training.build_request(services, FAST, uploads=[uploaded / "c1" / "pic1.txt", *paths])
    assert request.instance_captions == [None, "a green zwx shape", None]
    with pytest.raises(RequestError, match=r"the prompts use \[filewords\] but image\(s\) 1, 3 have no caption"):
        training.build_request(services, {**FAST, "instance_prompt": "[filewords]", "token": "zwx"},
                               uploads=[*paths, uploaded / "c1" / "pic1.txt"])


def test_filewords_make_one_prompt_per_image_and_class_prompts_without_the_identifier(services):
    request = training.build_request(services, FILEWORDS, uploads=images())
    assert request.instance_prompts() == CAPTIONS
    assert request.class_prompts() == ["a red shape on the left", "a blue shape at the top", "a green shape in the center"]
    assert request.output_name == "zwx"
    mixed = training.build_request(services, {**FILEWORDS, "instance_prompt": "photo of zwx, [filewords]",
                                              "class_prompt": "a photo of a shape", "token": None},
                                     uploads=images())
    assert mixed.instance_prompts()[1] == "photo of zwx, a blue zwx shape at the top"
    assert mixed.class_prompts() == ["a photo of a shape"] and mixed.identifier() == "zwx"
    lines = training.build_request(services, {**FILEWORDS, "class_prompt": "a red circle\n\n  [filewords], small \na square"},
                                   uploads=images())
    assert lines.class_prompts() == ["a red circle", "a red shape on the left, small", "a blue shape at the top, small",
                                     "a green shape in the center, small", "a square"]


@pytest.mark.parametrize(("values", "message"), [
    ({"token": None}, "token: required when the identifier is only in the captions"),
    ({"instance_captions": CAPTIONS[:2] + [""]}, r"image\(s\) 3 have no caption"),
    ({"instance_captions": CAPTIONS + ["one too many"]}, "instance_captions: 4 captions for 3 uploaded images"),
    ({"method": "textual_inversion", "token": None, "output_name": "zwx",
      "instance_captions": [*CAPTIONS[:2], "a green shape"]}, "'a green shape' lacks the embedding's name 'zwx'"),
])
def test_caption_mistakes_are_errors_before_the_job(services, values, message):
    with pytest.raises(RequestError, match=message):
        training.build_request(services, {**FILEWORDS, **values}, uploads=images())
    assert services.queue.job_count() == 0


def test_captions_unused_by_the_prompts_give_a_warning(services):
    request = training.build_request(services, {**FAST, "instance_captions": CAPTIONS}, uploads=images())
    assert any("neither prompt uses [filewords]" in w for w in request.warnings)
    assert request.instance_prompts() == ["a zwx shape"] * 3


def test_each_step_encodes_the_captions_of_the_images_it_draws(services, monkeypatch):
    seen: list[list[str]] = []
    original = LoraMethod.encode

    def recording(self, prompts):
        seen.append(list(prompts))
        return original(self, prompts)

    monkeypatch.setattr(LoraMethod, "encode", recording)
    result = training.submit(services, training.build_request(
        services, {**FILEWORDS, "method": "lora", "steps": 6, "batch_size": 2, "class_prompt": ""},
        uploads=images())).wait(timeout=300)
    assert result.steps == 6
    drawn = [p for batch in seen for p in batch]
    assert len(drawn) == 12 and set(drawn) <= set(CAPTIONS) and len(set(drawn)) >= 2


def test_prior_preservation_draws_class_image_i_for_class_prompt_i(services, monkeypatch):
    seen: list[list[str]] = []
    original = LoraMethod.encode
    monkeypatch.setattr(LoraMethod, "encode", lambda self, p: (seen.append(list(p)), original(self, p))[1])
    values = {**FILEWORDS, "method": "lora", "with_prior_preservation": True, "num_class_images": 4, "class_steps": 2,
              "batch_size": 2, "steps": 3}
    request = training.build_request(services, values, uploads=images())
    training.submit(services, request).wait(timeout=300)
    classes = request.class_prompts()
    assert all(set(batch[2:]) <= set(classes) for batch in seen)  # the prior half uses the class prompts
    folders = list((services.settings.cache_dir / "class_images").iterdir())
    assert len(folders) == 1
    cached = training_data.cached_class_images(folders[0], 4)
    assert len(cached) == 4
    for i in (0, 1, 3):  # image i: class prompt i % 3 with seed i, as txt2img draws it
        again = services.submit("txt2img", Txt2ImgRequest(
            prompt=classes[i % 3], seed=i, steps=2, cfg_scale=7.0, width=32, height=32,
            sampler_name=services.settings.default_sampler, save_images=False)).wait(timeout=120).images[0]
        assert np.abs(np.asarray(again, np.int16) - np.asarray(cached[i], np.int16)).max() <= 1
    assert np.abs(np.asarray(cached[0], np.int16) - np.asarray(cached[1], np.int16)).mean() > 1


def test_api_takes_captions_with_the_images(services):
    from modules.api import create_app

    with TestClient(create_app(services)) as client:
        body = {**FILEWORDS, "method": "lora", "instance_images": [b64(i) for i in images()]}
        r = client.post("/easel/v1/train", json=body)
        assert r.status_code == 202, r.text
        assert poll(client, r.json()["id"], ("done", "failed"))["state"] == "done"
        missing = client.post("/easel/v1/train", json={**body, "output_name": "other", "instance_captions": CAPTIONS[:1]})
        assert missing.status_code == 400 and "have no caption" in missing.json()["detail"]


def test_train_tab_pairs_uploaded_txt_files_with_their_images(services, tmp_path):
    from webui import train as train_tab

    paths = []
    for i, image in enumerate(images()):
        (tmp_path / f"u{i}").mkdir()
        paths.append(str(tmp_path / f"u{i}" / f"img{i}.png"))
        image.save(paths[-1])
        (tmp_path / f"t{i}").mkdir()
        (tmp_path / f"t{i}" / f"img{i}.txt").write_text(CAPTIONS[i])
    values = train_tab.request_values({"method": "lora", "instance_prompt": "[filewords]", "class_prompt": "",
                                       "token": "zwx", "steps": 2, "resolution": 32, "save_every": 0})
    started = train_tab.start_training(services, values, [*paths, *(str(p) for p in tmp_path.glob("t*/*.txt"))], "auto")
    assert started["job_id"], started
    job = services.queue.get(started["job_id"])
    assert job.request.instance_prompts() == CAPTIONS
    job.wait(timeout=120)


def test_class_images_from_a_folder_are_trained_with_their_captions_and_none_are_generated(services, tmp_path,
                                                                                         monkeypatch):
    services.access = ClientAccess(allow_server_paths=True)
    folder = image_folder(tmp_path / "classes", "c", {0: "a red circle", 2: "a blue square"})
    values = {**FAST, "method": "lora", "with_prior_preservation": True, "class_dir": str(folder), "class_prompt": "",
              "token": "zwx", "num_class_images": 2, "batch_size": 2, "steps": 4}
    with pytest.raises(RequestError, match="class_prompt: required for the class images without a caption: c1.png"):
        training.build_request(services, values, uploads=images())
    with_line = training.build_request(services, {**values, "class_prompt": "a shape", "num_class_images": 3},
                                       uploads=images())
    assert with_line.class_prompts() == ["a red circle", "a shape", "a blue square"]
    seen: list[list[str]] = []
    original = LoraMethod.encode
    monkeypatch.setattr(LoraMethod, "encode", lambda self, p: (seen.append(list(p)), original(self, p))[1])
    training.submit(services, with_line).wait(timeout=300)
    assert {p for batch in seen for p in batch[2:]} <= {"a red circle", "a shape", "a blue square"}
    assert not (services.settings.cache_dir / "class_images").exists()  # nothing generated


def test_class_dir_mistakes(services, tmp_path):
    services.access = ClientAccess(allow_server_paths=True)
    values = {**FAST, "with_prior_preservation": True, "class_dir": str(tmp_path / "nope")}
    with pytest.raises(RequestError, match="class_dir: folder .* not found"):
        training.build_request(services, values, uploads=images())
    (tmp_path / "empty").mkdir()
    with pytest.raises(RequestError, match="class_dir: no readable images"):
        training.build_request(services, {**values, "class_dir": str(tmp_path / "empty")}, uploads=images())
    ignored = training.build_request(services, {**values, "with_prior_preservation": False,
                                                "class_dir": str(tmp_path / "empty")}, uploads=images())
    assert any("class_dir is used only with prior preservation" in w for w in ignored.warnings)
