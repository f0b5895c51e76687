"""Textual-inversion embeddings used by name in prompts, on tiny checkpoints, through the job queue.

The sharpest check: an embedding whose vectors are the token embeddings of ``red circle`` must
give exactly the image of the words ``red circle``, weighted or not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from modules.embeddings import EmbeddingError, read_embedding
from modules.infotext import parse_infotext
from modules.prompts import CHUNK_TOKENS, EmbeddingTable, TokenVector, embeddings_in_text, tokenize_weighted
from modules.schemas import RequestError, Txt2ImgRequest


def run(services, **fields):
    fields = {"steps": 3, "seed": 5, "sampler_name": "Euler", **fields}
    return services.submit("txt2img", Txt2ImgRequest(**fields)).wait(timeout=120)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def word_vectors(services, text: str) -> torch.Tensor:
    """The tiny-a text encoder's token embeddings of ``text`` ([n_tokens, 32])."""
    with services.models.use(services.selected_checkpoint) as model:
        pipe = model.pipe
        ids = pipe.tokenizer.convert_tokens_to_ids(pipe.tokenizer.tokenize(text))
        return pipe.text_encoder.get_input_embeddings().weight[ids].detach().clone()


def folder(data_dir: Path) -> Path:
    path = data_dir / "embeddings"
    path.mkdir(exist_ok=True)
    return path


def write_a1111(data_dir: Path, name: str, vectors: torch.Tensor) -> Path:
    """An embedding as A1111's trainer saves it."""
    path = folder(data_dir) / f"{name}.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(vectors.clone())},
                "name": name, "step": 500, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "tiny-a"}, path)
    return path


# --------------------------------------------------------------------------- through the queue


def test_an_embedding_is_its_vectors_in_place_of_its_name(services, data_dir):
    words = run(services, prompt="a red circle, blue background")
    weighted_words = run(services, prompt="a (red circle:1.3), blue background")
    write_a1111(data_dir, "zzstyle", word_vectors(services, "red circle"))
    emb = run(services, prompt="a zzstyle, blue background")
    weighted = run(services, prompt="a (zzstyle:1.3), blue background")
    assert np.array_equal(pixels(emb), pixels(words))
    assert np.array_equal(pixels(weighted), pixels(weighted_words))
    assert not np.array_equal(pixels(weighted), pixels(emb))


def test_an_embedding_changes_the_image_only_where_it_is_named(services, data_dir):
    before = run(services, prompt="a photo of my-style")
    plain = run(services, prompt="a photo of a cat")
    write_a1111(data_dir, "my-style", torch.randn(3, 32, generator=torch.Generator().manual_seed(1)) * 0.05)
    after = run(services, prompt="a photo of my-style")
    assert np.abs(pixels(after) - pixels(before)).mean() > 0.5
    assert np.array_equal(pixels(run(services, prompt="a photo of a cat")), pixels(plain))
    assert "TI hashes" not in plain.infotexts[0]
    assert np.array_equal(pixels(run(services, prompt="a photo of MY-STYLE")), pixels(after))  # the tokenizer lower-cases


def test_ti_hashes_in_the_infotext(services, data_dir):
    path = write_a1111(data_dir, "zzstyle", word_vectors(services, "red circle"))
    r = run(services, prompt="a zzstyle", negative_prompt="blurry")
    assert r.infotexts[0].startswith("a zzstyle\nNegative prompt: blurry\n")
    expected = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert parse_infotext(r.infotexts[0])["TI hashes"] == f"zzstyle: {expected}"
    assert f'TI hashes: "zzstyle: {expected}"' in r.infotexts[0]


def test_an_embedding_in_the_negative_prompt(services, data_dir):
    words = run(services, prompt="x", negative_prompt="red circle")
    write_a1111(data_dir, "zzstyle", word_vectors(services, "red circle"))
    emb = run(services, prompt="x", negative_prompt="zzstyle")
    assert np.array_equal(pixels(emb), pixels(words))
    assert "TI hashes" in parse_infotext(emb.infotexts[0])


def test_every_file_format_gives_the_same_image(services, data_dir):
    vectors = word_vectors(services, "red circle")
    reference = pixels(run(services, prompt="a red circle"))
    save_file({"emb_params": vectors.contiguous()}, str(folder(data_dir) / "kohya.safetensors"))
    torch.save({"<cat-toy>": vectors}, folder(data_dir) / "diffusers.bin")
    for name in ("kohya", "diffusers"):
        assert np.array_equal(pixels(run(services, prompt=f"a {name}")), reference), name


def test_an_edited_file_is_read_again(services, data_dir):
    path = write_a1111(data_dir, "zzstyle", word_vectors(services, "red circle"))
    assert np.array_equal(pixels(run(services, prompt="a zzstyle")), pixels(run(services, prompt="a red circle")))
    write_a1111(data_dir, "zzstyle", word_vectors(services, "blue square"))
    os.utime(path, (1, 1))  # a different mtime, whatever the clock's resolution
    assert np.array_equal(pixels(run(services, prompt="a zzstyle")), pixels(run(services, prompt="a blue square")))


# --------------------------------------------------------------------------- bad files


def test_an_embedding_of_another_width_is_an_error_when_used(services, data_dir):
    write_a1111(data_dir, "wide", torch.zeros(2, 768))
    plain = run(services, prompt="a cat")
    with pytest.raises(RequestError) as err:
        run(services, prompt="a wide cat")
    assert str(err.value) == ("prompt: embedding 'wide' has 768-wide vectors; the model 'tiny-a' takes 32-wide ones "
                              "(an embedding works only on the model family it was trained for)")
    assert np.array_equal(pixels(run(services, prompt="a cat")), pixels(plain))


def test_an_sdxl_embedding_is_read_but_does_not_fit_sd1(services, data_dir):
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, str(folder(data_dir) / "xl.safetensors"))
    embedding = read_embedding(folder(data_dir) / "xl.safetensors")
    assert embedding.is_sdxl and embedding.shape == 2048 and embedding.vectors == 2
    with pytest.raises(RequestError, match="embedding 'xl' has 2048-wide vectors"):
        run(services, prompt="a xl")


def test_unreadable_files_are_errors_only_when_used(services, data_dir):
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "extra": Path("/tmp")}, folder(data_dir) / "unsafe.pt")
    (folder(data_dir) / "garbage.safetensors").write_bytes(b"not safetensors")
    torch.save({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)}, folder(data_dir) / "two.bin")
    assert run(services, prompt="a cat").images
    with pytest.raises(RequestError, match="embedding 'unsafe' cannot be used: unsafe.pt was refused: it is a pickle"):
        run(services, prompt="an unsafe cat")
    with pytest.raises(RequestError, match="embedding 'garbage' cannot be used: garbage.safetensors is not a readable"):
        run(services, prompt="garbage")
    with pytest.raises(RequestError, match="'two' cannot be used: two.bin is not a textual-inversion embedding"):
        run(services, prompt="two")


def test_read_embedding_messages(tmp_path):
    torch.save({"string_to_param": {"*": torch.zeros(1, 8), "#": torch.zeros(1, 8)}}, tmp_path / "multi.pt")
    with pytest.raises(EmbeddingError, match="exactly one term"):
        read_embedding(tmp_path / "multi.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(EmbeddingError, match="holds a list, not an embedding"):
        read_embedding(tmp_path / "list.pt")
    torch.save({"string_to_param": {"*": torch.zeros(8)}, "step": 3}, tmp_path / "one.pt")
    one = read_embedding(tmp_path / "one.pt")
    assert one.vectors == 1 and one.shape == 8 and one.step == 3


# --------------------------------------------------------------------------- the API


def test_api_lists_loaded_and_skipped_embeddings(services, data_dir):
    from modules.api.app import create_app

    write_a1111(data_dir, "zzstyle", torch.zeros(2, 32))
    save_file({"emb_params": torch.zeros(1, 768)}, str(folder(data_dir) / "sd1-size.safetensors"))
    (folder(data_dir) / "garbage.pt").write_bytes(b"nope")
    with TestClient(create_app(services)) as client:
        assert client.get("/sdapi/v1/embeddings").json() == {
            "loaded": {"zzstyle": {"step": 500, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "tiny-a",
                                   "shape": 32, "vectors": 2}},
            "skipped": {"sd1-size": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                     "shape": 768, "vectors": 1}},
        }
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "sd1-size", "steps": 2})
        assert r.status_code == 400 and "embedding 'sd1-size' has 768-wide vectors" in r.json()["detail"]


# --------------------------------------------------------------------------- prompts level


@pytest.fixture(scope="module")
def tokenizer():
    from modules.model_loading import make_tokenizer

    return make_tokenizer()


def test_names_match_by_tokens_and_the_longest_wins(tokenizer):
    vectors = {"style": torch.zeros(1, 4), "style-two": torch.ones(2, 4)}
    assert embeddings_in_text(tokenizer, "a style-two, style and styles", list(vectors)) == ["style-two", "style"]
    table = EmbeddingTable(tokenizer, vectors)
    tokens = table.substitute(tokenizer.convert_tokens_to_ids(tokenizer.tokenize("a style-two styles")))
    names = [t.name if isinstance(t, TokenVector) else t for t in tokens]
    assert names[1:3] == ["style-two", "style-two"] and isinstance(names[3], int)  # "styles" is another word


def test_an_embedding_never_straddles_two_chunks(tokenizer):
    table = EmbeddingTable(tokenizer, {"emb": torch.zeros(4, 4)})
    chunks = tokenize_weighted(tokenizer, "a " * 73 + "emb", embeddings=table)
    assert [len(c) for c in chunks] == [73, 4]  # padded, as A1111 does, rather than cut
    assert all(isinstance(token, TokenVector) for token, _ in chunks[1])
    chunks = tokenize_weighted(tokenizer, "a " * 71 + "emb", embeddings=table)
    assert [len(c) for c in chunks] == [CHUNK_TOKENS]
