"""LoRA files used from prompts (``<lora:name:weight>``) on tiny checkpoints, through the job queue.

The LoRAs are written here with random small up/down matrices for the tiny UNet's and text
encoder's layers, in the formats users have: kohya/A1111 names, LDM-style UNet names, the
diffusers/peft layout and a ``.pt`` pickle.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from modules.infotext import parse_infotext
from modules.lora import lora_layers
from modules.schemas import RequestError, Txt2ImgRequest
from tests.tiny_models import tiny_components, tiny_sdxl_pipeline

RANK = 4


@pytest.fixture(scope="module")
def layers() -> dict[str, list[tuple[str, int, int]]]:
    """(module name, in features, out features) of the tiny model's LoRA targets: UNet attention
    and feed-forward layers, text-encoder attention and MLP layers."""
    unet, _, text_encoder = tiny_components(0)
    unet_layers = [(n, m.in_features, m.out_features) for n, m in unet.named_modules()
                   if isinstance(m, torch.nn.Linear) and ".attentions." in n]
    te_layers = [(n, m.in_features, m.out_features) for n, m in text_encoder.named_modules()
                 if isinstance(m, torch.nn.Linear) and ("self_attn" in n or "mlp" in n)]
    return {"unet": unet_layers, "te": te_layers}


def random_pairs(layers, seed: int, scale: float) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Seeded (down, up) matrices for every target layer."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {"unet": {}, "te": {}}
    for part in ("unet", "te"):
        for name, n_in, n_out in layers[part]:
            out[part][name] = (torch.randn(RANK, n_in, generator=g) * scale, torch.randn(n_out, RANK, generator=g) * scale)
    return out


def ldm_name(name: str) -> str:
    """The LDM (original SD) name of a tiny-UNet attention module."""
    for diffusers, ldm in (("down_blocks.0.attentions.0", "input_blocks.1.1"), ("mid_block.attentions.0", "middle_block.1"),
                           ("up_blocks.1.attentions.0", "output_blocks.2.1"), ("up_blocks.1.attentions.1", "output_blocks.3.1")):
        if name.startswith(diffusers):
            return ldm + name[len(diffusers):]
    raise AssertionError(name)


def kohya_state(pairs, ldm: bool = False) -> dict[str, torch.Tensor]:
    """kohya/A1111 keys (alpha = rank: scale 1)."""
    state = {}
    for part, prefix in (("unet", "lora_unet_"), ("te", "lora_te_text_model_")):
        for name, (down, up) in pairs[part].items():
            module = ldm_name(name) if ldm and part == "unet" else name
            key = prefix + module.replace(".", "_")
            state[f"{key}.lora_down.weight"] = down
            state[f"{key}.lora_up.weight"] = up
            state[f"{key}.alpha"] = torch.tensor(float(RANK))
    return state


def peft_state(pairs) -> dict[str, torch.Tensor]:
    """The diffusers/peft layout (``unet.<module>.lora_A.weight``; text encoder as transformers 4 named it)."""
    state = {}
    for name, (down, up) in pairs["unet"].items():
        state[f"unet.{name}.lora_A.weight"], state[f"unet.{name}.lora_B.weight"] = down, up
    for name, (down, up) in pairs["te"].items():
        state[f"text_encoder.text_model.{name}.lora_A.weight"], state[f"text_encoder.text_model.{name}.lora_B.weight"] = down, up
    return state


def write_lora(data_dir: Path, name: str, state: dict[str, torch.Tensor], suffix: str = ".safetensors",
               metadata: dict[str, str] | None = None) -> Path:
    folder = data_dir / "models" / "Lora"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    else:
        torch.save(state, path)
    return path


@pytest.fixture
def loras(data_dir, layers) -> dict[str, Path]:
    """Two kohya LoRAs in models/Lora: ``style`` (seed 1) and ``other`` (seed 2)."""
    return {
        "style": write_lora(data_dir, "style", kohya_state(random_pairs(layers, 1, 0.12))),
        "other": write_lora(data_dir, "other", kohya_state(random_pairs(layers, 2, 0.12))),
    }


def run(services, **fields):
    fields = {"steps": 3, "seed": 11, "sampler_name": "Euler", **fields}
    return services.submit("txt2img", Txt2ImgRequest(**fields)).wait(timeout=120)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def loaded_pipe(services):
    with services.models.use(services.selected_checkpoint) as model:
        return model.pipe


# --------------------------------------------------------------------------- using LoRAs


def test_lora_changes_the_image_and_weight_zero_is_no_lora(services, loras):
    plain = pixels(run(services, prompt="a red circle"))
    with_lora = pixels(run(services, prompt="a red circle <lora:style:1>"))
    zero = pixels(run(services, prompt="a red circle <lora:style:0>"))
    assert np.abs(with_lora - plain).mean() > 1
    assert np.array_equal(zero, plain)


def test_the_next_job_sees_the_clean_model(services, loras):
    plain = pixels(run(services, prompt="a red circle"))
    run(services, prompt="a red circle <lora:style:1>")
    after = pixels(run(services, prompt="a red circle"))
    assert np.array_equal(after, plain)
    pipe = loaded_pipe(services)
    assert lora_layers(pipe.unet) == 0 and lora_layers(pipe.text_encoder) == 0


def test_the_tag_is_taken_out_of_the_prompt_and_kept_in_the_infotext(services, loras):
    plain = pixels(run(services, prompt="a red circle"))
    zero = run(services, prompt="a red <lora:style:0>circle")
    assert np.array_equal(pixels(zero), plain)  # "a red circle" is what the encoder saw
    assert zero.infotexts[0].startswith("a red <lora:style:0>circle\n")
    assert zero.prompts == ["a red <lora:style:0>circle"]


def test_lora_hashes_in_the_infotext(services, loras):
    r = run(services, prompt="a <lora:style:0.8> circle, <lora:other>")
    parsed = parse_infotext(r.infotexts[0])
    body = loras["style"].read_bytes()
    header = int.from_bytes(body[:8], "little")
    style_hash = hashlib.sha256(body[8 + header:]).hexdigest()[:12]  # kohya's hash of the tensor data
    assert parsed["Lora hashes"].startswith(f"style: {style_hash}, other: ")
    assert 'Lora hashes: "style: ' in r.infotexts[0]  # quoted, as A1111 writes it
    assert "Lora hashes" not in run(services, prompt="a circle").infotexts[0]


def test_two_loras_at_once(services, loras):
    one = pixels(run(services, prompt="x <lora:style:1>"))
    other = pixels(run(services, prompt="x <lora:other:1>"))
    both = pixels(run(services, prompt="x <lora:style:1> <lora:other:1>"))
    both_again = pixels(run(services, prompt="x <lora:other:1><lora:style:1>"))
    assert np.abs(both - one).mean() > 0.5 and np.abs(both - other).mean() > 0.5
    assert np.abs(both - both_again).max() <= 1  # the order does not matter (float sums may round apart)


def test_weights_scale_and_split_between_text_encoder_and_unet(services, loras):
    plain = pixels(run(services, prompt="x"))
    full = pixels(run(services, prompt="x <lora:style:1>"))
    half = pixels(run(services, prompt="x <lora:style:0.5>"))
    te_only = pixels(run(services, prompt="x <lora:style:1:0>"))
    unet_only = pixels(run(services, prompt="x <lora:style:te=0:unet=1>"))
    assert 0 < np.abs(half - plain).mean() < np.abs(full - plain).mean()
    assert np.abs(te_only - plain).mean() > 0.5 and np.abs(unet_only - plain).mean() > 0.5
    assert not np.array_equal(te_only, unet_only)
    assert np.array_equal(pixels(run(services, prompt="x <lora:style:0:0>")), plain)
    # the same LoRA named twice: the weights add up (A1111)
    assert np.array_equal(pixels(run(services, prompt="x <lora:style:0.5> <lora:style:0.5>")), full)


def test_a_lora_in_the_negative_prompt_is_applied(services, loras):
    plain = run(services, prompt="x", negative_prompt="blurry")
    lora = run(services, prompt="x", negative_prompt="blurry <lora:style:1>")
    assert np.abs(pixels(lora) - pixels(plain)).mean() > 1
    assert "Negative prompt: blurry <lora:style:1>" in lora.infotexts[0]
    assert "Lora hashes" in parse_infotext(lora.infotexts[0])


def test_the_same_lora_in_other_formats_gives_the_same_image(services, data_dir, layers, loras):
    pairs = random_pairs(layers, 3, 0.12)
    write_lora(data_dir, "kohya", kohya_state(pairs))
    write_lora(data_dir, "ldm", kohya_state(pairs, ldm=True))
    write_lora(data_dir, "peft", peft_state(pairs))
    write_lora(data_dir, "pickled", kohya_state(pairs), suffix=".pt")
    reference = pixels(run(services, prompt="a red circle <lora:kohya:0.7>"))
    assert np.abs(reference - pixels(run(services, prompt="a red circle"))).mean() > 0.5
    for name in ("ldm", "peft", "pickled"):
        image = pixels(run(services, prompt=f"a red circle <lora:{name}:0.7>"))
        assert np.abs(image - reference).max() <= 1, name


def test_a_unet_only_lora_works(services, data_dir, layers):
    pairs = random_pairs(layers, 4, 0.12)
    pairs["te"] = {}
    write_lora(data_dir, "unet-only", kohya_state(pairs))
    plain = pixels(run(services, prompt="x"))
    assert np.abs(pixels(run(services, prompt="x <lora:unet-only>")) - plain).mean() > 0.5
    assert np.array_equal(pixels(run(services, prompt="x")), plain)


def test_a_lora_is_found_by_its_alias(services, data_dir, layers):
    write_lora(data_dir, "file-name", kohya_state(random_pairs(layers, 1, 0.12)), metadata={"ss_output_name": "nice"})
    r = run(services, prompt="x <lora:nice:1>")
    assert parse_infotext(r.infotexts[0])["Lora hashes"].startswith("file-name: ")


def test_after_a_failed_job_the_model_is_clean(services, loras):
    plain = pixels(run(services, prompt="x", enable_hr=True, hr_scale=2, denoising_strength=0.5))
    with pytest.raises(RequestError, match="same LoRAs"):  # the hires prompt names another LoRA
        run(services, prompt="x <lora:style:1>", enable_hr=True, hr_scale=2, denoising_strength=0.5,
            hr_prompt="x <lora:other:1>")
    assert np.array_equal(pixels(run(services, prompt="x", enable_hr=True, hr_scale=2, denoising_strength=0.5)), plain)
    pipe = loaded_pipe(services)
    assert lora_layers(pipe.unet) == 0 and lora_layers(pipe.text_encoder) == 0


def test_hires_with_a_lora_keeps_it_for_both_passes(services, loras):
    plain = run(services, prompt="x", enable_hr=True, hr_scale=2, denoising_strength=0.5)
    lora = run(services, prompt="x <lora:style:1>", enable_hr=True, hr_scale=2, denoising_strength=0.5)
    assert lora.images[0].size == (64, 64) and np.abs(pixels(lora) - pixels(plain)).mean() > 1


def test_img2img_uses_loras_too(services, loras):
    from modules.schemas import Img2ImgRequest
    from tests.tiny_models import noise_image

    def img2img(prompt):
        req = Img2ImgRequest(prompt=prompt, init_images=[noise_image(32, 32)], steps=4, seed=3, denoising_strength=0.8)
        return np.asarray(services.submit("img2img", req).wait(timeout=120).images[0], dtype=np.int16)

    plain = img2img("x")
    assert np.abs(img2img("x <lora:style:1>") - plain).mean() > 1
    assert np.array_equal(img2img("x <lora:style:0>"), plain)


# --------------------------------------------------------------------------- bad input


def test_unknown_lora_is_a_clear_error(services, loras):
    with pytest.raises(RequestError) as err:
        run(services, prompt="x <lora:nope:1>")
    message = str(err.value)
    assert message == "prompt: LoRA 'nope' not found in models/Lora; available: other, style"


@pytest.mark.parametrize("tag, expected", [
    ("<lora:style:11>", "outside -10..10"),
    ("<lora:style:-10.5>", "outside -10..10"),
    ("<lora:style:abc>", "'abc' is not a number"),
    ("<lora:style:1:1:1>", "at most two weights"),
    ("<lora:style:dyn=4>", "unknown argument 'dyn'"),
    ("<hypernet:foo:1>", "kind 'hypernet' are not supported"),
])
def test_bad_tags_are_clear_errors(services, loras, tag, expected):
    with pytest.raises(RequestError, match=expected) as err:
        run(services, prompt=f"x {tag}")
    assert str(err.value).startswith("prompt: ")


def test_weights_at_the_limits_are_accepted(services, loras):
    assert run(services, prompt="x <lora:style:10>").images and run(services, prompt="x <lora:style:-10>").images


def test_a_lora_of_another_family_is_refused(services, data_dir, layers):
    pairs = random_pairs(layers, 1, 0.12)
    wide = kohya_state(pairs)
    key = next(k for k in wide if "attn2_to_k.lora_down" in k)
    wide[key] = torch.zeros(RANK, 2048)  # an SDXL UNet's cross-attention width
    write_lora(data_dir, "xl-unet", wide)
    sdxl = kohya_state(pairs)
    sdxl["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(RANK, 1280)
    sdxl["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(1280, RANK)
    write_lora(data_dir, "xl-te", sdxl)
    plain = pixels(run(services, prompt="x"))
    with pytest.raises(RequestError, match=r"LoRA 'xl-unet' is for SDXL \(cross-attention width 2048\); "
                                           r"the model 'tiny-a' is SD 1.x \(32\)"):
        run(services, prompt="x <lora:xl-unet>")
    with pytest.raises(RequestError, match="LoRA 'xl-te' is for SDXL .*second text encoder"):
        run(services, prompt="x <lora:xl-te>")
    assert np.array_equal(pixels(run(services, prompt="x")), plain)


def test_files_that_are_no_lora_are_refused(services, data_dir):
    write_lora(data_dir, "notalora", {"weight": torch.zeros(3)})
    with pytest.raises(RequestError, match="LoRA 'notalora' holds no LoRA weights"):
        run(services, prompt="x <lora:notalora>")
    (data_dir / "models" / "Lora" / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RequestError, match="LoRA 'broken': broken.safetensors is not a readable LoRA file"):
        run(services, prompt="x <lora:broken>")


def test_a_pickle_that_could_run_code_is_refused(services, data_dir, layers):
    state = kohya_state(random_pairs(layers, 1, 0.12))
    path = data_dir / "models" / "Lora" / "evil.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": state, "extra": Path("/tmp")}, path)  # a Path: not allowed by weights_only
    with pytest.raises(RequestError, match="LoRA 'evil': evil.pt was refused: it is a pickle that holds more than tensors"):
        run(services, prompt="x <lora:evil>")


# --------------------------------------------------------------------------- the API


def test_api_lists_and_refreshes_loras(loras, services, data_dir, layers):
    from modules.api.app import create_app

    with TestClient(create_app(services)) as client:
        listed = client.get("/sdapi/v1/loras").json()
        assert [item["name"] for item in listed] == ["other", "style"]
        assert listed[1] == {"name": "style", "alias": "style", "path": str(loras["style"]), "metadata": {}}
        write_lora(data_dir, "later", kohya_state(random_pairs(layers, 5, 0.12)),
                   metadata={"ss_output_name": "later-alias", "ss_tag_frequency": '{"a": {"b": 1}}'})
        assert "later" not in [item["name"] for item in client.get("/sdapi/v1/loras").json()]
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200
        later = [item for item in client.get("/sdapi/v1/loras").json() if item["name"] == "later"][0]
        assert later["alias"] == "later-alias" and later["metadata"]["ss_tag_frequency"] == {"a": {"b": 1}}
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x <lora:nope>", "steps": 2})
        assert r.status_code == 400 and "LoRA 'nope' not found" in r.json()["detail"]


# --------------------------------------------------------------------------- SDXL


@pytest.mark.slow  # about 9 s: the SDXL pipeline call is heavier than the tiny SD 1.x one
def test_an_sdxl_lora_on_an_sdxl_pipeline(tmp_path):
    """kohya's SDXL names (lora_te1_/lora_te2_) reach all three models, and come out again."""
    from modules.lora import LoraFile, LoraUse, apply_loras, remove_loras

    pipe = tiny_sdxl_pipeline()
    g = torch.Generator().manual_seed(1)
    state = {}
    targets = [("lora_unet_", n, m) for n, m in pipe.unet.named_modules() if ".attentions." in n]
    for prefix, encoder in (("lora_te1_text_model_", pipe.text_encoder), ("lora_te2_text_model_", pipe.text_encoder_2)):
        targets += [(prefix, n.removeprefix("text_model."), m) for n, m in encoder.named_modules() if "self_attn." in n]
    for prefix, name, module in targets:
        if isinstance(module, torch.nn.Linear):
            key = prefix + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = torch.randn(RANK, module.in_features, generator=g) * 0.1
            state[f"{key}.lora_up.weight"] = torch.randn(module.out_features, RANK, generator=g) * 0.1
    path = tmp_path / "xl.safetensors"
    save_file(state, str(path))

    def generate() -> np.ndarray:
        return pipe("a cat", num_inference_steps=2, height=32, width=32, generator=torch.Generator().manual_seed(1),
                    output_type="np").images

    plain = generate()
    apply_loras(pipe, [LoraUse(LoraFile("xl", path, "xl", {}), 1.0, 1.0)], "sdxl", "tiny-xl")
    assert {c for c, names in pipe.get_list_adapters().items() if names} == {"unet", "text_encoder", "text_encoder_2"}
    assert np.abs(generate() - plain).mean() > 1e-3
    remove_loras(pipe)
    assert np.array_equal(generate(), plain)
    assert all(lora_layers(m) == 0 for m in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2))
