"""ControlNet models: the original layout of real files, family detection, strict loading, the cache.

The full-size SD 1.5 / SD 2.x / SDXL ControlNets are built on the ``meta`` device (shapes only,
no memory). The key names and shapes asserted for SD 1.5 are those of lllyasviel's
``control_v11p_sd15_canny.pth`` (``cldm.ControlNet``: hint encoder convs at 0, 2, .., 14 going
3 -> 16 -> 32 -> 96 -> 256 -> 320, twelve zero convs, ``middle_block_out``).
"""

from __future__ import annotations

import hashlib
import pickle

import pytest
import torch
from diffusers import ControlNetModel
from safetensors.torch import save_file

from modules.checkpoints import UnsafeCheckpointError
from modules.controlnet.layout import _controlnet_fields, controlnet_ldm_yaml, controlnet_to_ldm, save_controlnet
from modules.controlnet.models import (
    ControlNetError,
    _base_config,
    check_family,
    controlnet_from_state_dict,
    detect_family,
    find_controlnet,
    legacy_model_hash,
    load_controlnet,
    scan_controlnets,
)
from modules.schemas import RequestError
from tests.tiny_controlnet import controlnet_outputs, tiny_controlnet, write_controlnet


def meta_controlnet(family: str) -> ControlNetModel:
    config = {k: v for k, v in _base_config(family).items() if k in _controlnet_fields()}
    with torch.device("meta"):
        return ControlNetModel.from_config(config)


def shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_sd15_original_layout_loads_and_maps_every_key():
    reference = meta_controlnet("sd1")
    ldm = controlnet_to_ldm(reference.state_dict())
    known = {
        "control_model.input_hint_block.0.weight": (16, 3, 3, 3),
        "control_model.input_hint_block.2.weight": (16, 16, 3, 3),
        "control_model.input_hint_block.4.weight": (32, 16, 3, 3),
        "control_model.input_hint_block.12.weight": (256, 96, 3, 3),
        "control_model.input_hint_block.14.weight": (320, 256, 3, 3),
        "control_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "control_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "control_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "control_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "control_model.input_blocks.11.0.out_layers.3.weight": (1280, 1280, 3, 3),
        "control_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
        "control_model.middle_block.2.in_layers.2.weight": (1280, 1280, 3, 3),
        "control_model.zero_convs.0.0.weight": (320, 320, 1, 1),
        "control_model.zero_convs.11.0.weight": (1280, 1280, 1, 1),
        "control_model.middle_block_out.0.weight": (1280, 1280, 1, 1),
        "control_model.time_embed.0.weight": (1280, 320),
    }
    assert {k: tuple(ldm[k].shape) for k in known} == known
    assert all(k.startswith("control_model.") for k in ldm)
    groups = {".".join(k.split(".")[1:3]) for k in ldm if not k.startswith("control_model.time_embed")}
    assert {g for g in groups if g.startswith("zero_convs")} == {f"zero_convs.{i}" for i in range(12)}
    assert {g for g in groups if g.startswith("input_hint_block")} == {f"input_hint_block.{i}" for i in range(0, 16, 2)}
    assert {g for g in groups if g.startswith("input_blocks")} == {f"input_blocks.{i}" for i in range(12)}
    assert 360e6 < sum(v.numel() for v in ldm.values()) < 362e6  # SD 1.5 ControlNet: 361M parameters

    family, model = controlnet_from_state_dict(ldm)
    assert family == "sd1"
    assert shapes(model.state_dict()) == shapes(reference.state_dict())
    assert model.config.attention_head_dim == 8 and model.config.cross_attention_dim == 768
    assert list(model.config.block_out_channels) == [320, 640, 1280, 1280]


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_sd2_and_sdxl_layouts_detect_their_family_and_map_fully(family):
    reference = meta_controlnet(family)
    ldm = controlnet_to_ldm(reference.state_dict())
    assert detect_family(ldm) == family
    assert detect_family(reference.state_dict()) == family  # the diffusers names too
    if family == "sdxl":
        assert tuple(ldm["control_model.label_emb.0.0.weight"].shape) == (1280, 2816)
    found, model = controlnet_from_state_dict(ldm)
    assert found == family
    assert shapes(model.state_dict()) == shapes(reference.state_dict())
    assert model.config.attention_head_dim == reference.config.attention_head_dim


def test_tiny_original_layout_round_trip_gives_identical_outputs(tmp_path):
    path = write_controlnet(tmp_path / "ControlNet", "tiny-canny", seed=3)
    [info] = scan_controlnets(tmp_path / "ControlNet")
    assert (info.stem, info.kind, info.path, info.config_path) == ("tiny-canny", "single", path, path.with_suffix(".yaml"))
    loaded = load_controlnet(info)
    assert loaded.family == "sd1" and loaded.short_hash == legacy_model_hash(path)
    assert loaded.model.config.attention_head_dim == 4  # from the companion yaml
    assert list(loaded.model.config.conditioning_embedding_out_channels) == [8, 16]
    reference = tiny_controlnet(seed=3)
    ref_state = reference.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in loaded.model.state_dict().items())
    assert set(loaded.model.state_dict()) == set(ref_state)
    expected, got = controlnet_outputs(reference), controlnet_outputs(loaded.model)
    assert len(got) == len(expected) == 5
    for a, b in zip(got, expected, strict=True):  # same weights; CPU attention kernels may differ in the last bit
        assert a.abs().max() > 0.01 and torch.allclose(a, b, atol=1e-5)
    assert loaded.size_bytes() == sum(p.numel() * 4 for p in reference.parameters())


def test_save_controlnet_writes_fp16_original_layout_with_its_yaml(tmp_path):
    reference = tiny_controlnet(seed=4)
    path = save_controlnet(reference, tmp_path / "tiny-export.safetensors")
    assert path.with_suffix(".yaml").is_file()
    loaded = load_controlnet(scan_controlnets(tmp_path)[0])
    assert loaded.model.dtype == torch.float16 and loaded.model.config.attention_head_dim == 4
    for a, b in zip(controlnet_outputs(loaded.model.float()), controlnet_outputs(reference), strict=True):
        assert torch.allclose(a, b, atol=2e-2)
    with pytest.raises(FileExistsError, match="already exists"):
        save_controlnet(reference, path)


def test_without_yaml_the_family_head_count_is_used(tmp_path):
    write_controlnet(tmp_path, "tiny-noyaml", yaml=False)
    loaded = load_controlnet(scan_controlnets(tmp_path)[0])
    assert loaded.model.config.attention_head_dim == 8  # SD 1.x's head count
    assert controlnet_outputs(loaded.model)[0].shape == controlnet_outputs(tiny_controlnet())[0].shape


def test_pth_loads_through_the_safe_loader_and_code_is_refused(tmp_path):
    path = write_controlnet(tmp_path, "tiny-pth", seed=1, suffix=".pth")
    loaded = load_controlnet(scan_controlnets(tmp_path)[0])
    for a, b in zip(controlnet_outputs(loaded.model), controlnet_outputs(tiny_controlnet(seed=1)), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"x": pickle.loads}, f, protocol=2)  # a pickle that names a callable: weights_only refuses it
    info = next(i for i in scan_controlnets(tmp_path) if i.path == evil)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_controlnet(info)
    assert path.exists()


def test_diffusers_folder_and_diffusers_named_single_file_load(tmp_path):
    model = tiny_controlnet(seed=2)
    model.save_pretrained(tmp_path / "tiny-folder")
    single = tmp_path / "tiny-diffusers-keys.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(single))
    single.with_suffix(".yaml").write_text(controlnet_ldm_yaml(model.config))  # the heads (no tensor shows them)
    (tmp_path / "annotators").mkdir()
    save_file({"w": torch.zeros(1)}, str(tmp_path / "annotators" / "sk_model.safetensors"))
    infos = scan_controlnets(tmp_path)
    title = f"tiny-diffusers-keys [{legacy_model_hash(single)}]"
    assert [(i.name, i.kind) for i in infos] == [(title, "single"), ("tiny-folder", "diffusers")]
    expected = controlnet_outputs(model)
    for info in infos:
        loaded = load_controlnet(info)
        assert loaded.family == "sd1"
        for a, b in zip(controlnet_outputs(loaded.model), expected, strict=True):
            assert torch.allclose(a, b, atol=1e-5)


def test_missing_or_extra_key_is_a_clear_error(tmp_path):
    state = controlnet_to_ldm(tiny_controlnet().state_dict())
    missing = {k: v for k, v in state.items() if k != "control_model.zero_convs.2.0.bias"}
    with pytest.raises(ControlNetError, match=r"1 missing keys \(e.g. \['controlnet_down_blocks.2.bias'\]\)"):
        controlnet_from_state_dict(missing)
    extra = {**state, "control_model.zero_convs.9.0.weight": torch.zeros(64, 64, 1, 1)}
    with pytest.raises(ControlNetError, match=r"1 keys of the file not mapped \(e.g. \['zero_convs.9.0.weight'\]\)"):
        controlnet_from_state_dict(extra)
    with pytest.raises(ControlNetError, match="not a ControlNet"):
        detect_family({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)})


def test_find_controlnet_by_title_stem_or_file_name(tmp_path):
    canny_hash = legacy_model_hash(write_controlnet(tmp_path, "control_tiny_canny"))
    depth_hash = legacy_model_hash(write_controlnet(tmp_path, "control_tiny_depth", seed=1, suffix=".pth", yaml=False))
    infos = scan_controlnets(tmp_path)
    assert [i.name for i in infos] == [f"control_tiny_canny [{canny_hash}]", f"control_tiny_depth [{depth_hash}]"]
    canny = infos[0]
    for query in (f"control_tiny_canny [{canny_hash}]", "control_tiny_canny", "CONTROL_TINY_CANNY",
                  "control_tiny_canny.safetensors", "control_tiny_canny [0123abcd]"):
        assert find_controlnet(query, infos) is canny
    assert find_controlnet("None", infos) is None and find_controlnet("", infos) is None
    with pytest.raises(RequestError) as err:
        find_controlnet("control_v11p_sd15_canny [d14c016b]", infos)
    assert str(err.value).startswith("controlnet model: 'control_v11p_sd15_canny [d14c016b]' not found")
    assert f"control_tiny_depth [{depth_hash}]" in str(err.value)


def test_titles_carry_a1111_legacy_hash(tmp_path):
    path = tmp_path / "big.safetensors"
    save_file({"control_model.input_hint_block.0.weight": torch.arange(600_000, dtype=torch.float32)}, str(path))
    data = path.read_bytes()
    expected = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert scan_controlnets(tmp_path)[0].name == f"big [{expected}]"


def test_wrong_family_is_refused_with_a_clear_message(tmp_path):
    path = write_controlnet(tmp_path, "tiny")
    loaded = load_controlnet(scan_controlnets(tmp_path)[0])
    check_family(loaded, "sd1")
    check_family(loaded, "sd1-inpaint")
    title = rf"tiny \[{legacy_model_hash(path)}\]"
    with pytest.raises(RequestError, match=title + " is an SD 1.x ControlNet, but the checkpoint is SDXL"):
        check_family(loaded, "sdxl")
    with pytest.raises(RequestError, match="checkpoint is SD 2.x"):
        check_family(loaded, "sd2-base")


def test_services_cache_controlnets_with_checkpoints(services):
    folder = services.controlnet_dir
    assert services.controlnet_infos() == []
    write_controlnet(folder, "tiny-a", seed=0)
    [info] = services.controlnet_infos()  # a new file shows up without a restart
    with services.use_controlnet("tiny-a") as loaded:
        assert loaded.info == info and loaded.model.dtype == services.runtime.dtype
        assert loaded.model.device.type == "cpu"
        cached = {e.key: e for e in services.models.loaded()}
        assert cached[f"controlnet:{info.name}"].locked
        assert cached[f"controlnet:{info.name}"].size_bytes == loaded.size_bytes()
    with services.use_controlnet(info.name) as again:
        assert again is loaded  # cached, not reloaded
    write_controlnet(folder, "tiny-b", seed=1, yaml=False)
    assert [i.stem for i in services.controlnet_infos()] == ["tiny-a", "tiny-b"]
    with pytest.raises(RequestError, match="controlnet model: 'nope' not found"):
        with services.use_controlnet("nope"):
            pass


def test_offload_modes_keep_controlnets_off_the_device_between_jobs():
    from modules.controlnet.runtime import offloads

    assert offloads("cuda", "medvram") and offloads("cuda:1", "lowvram")
    assert not offloads("cuda", "normal") and not offloads("cpu", "medvram") and not offloads("cpu", "lowvram")
