"""Checkpoints as cached components: shared VAE / text encoder between fine-tunes, per-component keys
and reads, VAE files and diffusers folders as components, and partial placement of a UNet."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from modules import devices, partial_offload
from modules.checkpoints import CheckpointInfo, CheckpointRegistry, HashCache
from modules.model_loading import load_checkpoint
from modules.model_manager import CacheSettings, ModelManager, ModelRecipe
from modules.model_parts import CheckpointSource, PartHashes, PartOptions, checkpoint_recipe, safetensors_part_digests
from modules.services import split_model_key
from tests.tiny_models import write_diffusers_folder, write_single_file

UNET = "model.diffusion_model."


def write_fine_tune(folder, name: str, base, unet_seed: int):
    """A checkpoint with ``base``'s VAE and text encoder bytes and the UNet of another seed."""
    other = write_single_file(folder / "tmp", f"{name}-unet", seed=unet_seed)
    state = {k: v for k, v in load_file(str(base)).items() if not k.startswith(UNET)}
    state.update({k: v for k, v in load_file(str(other)).items() if k.startswith(UNET)})
    path = folder / f"{name}.safetensors"
    save_file(state, str(path))
    shutil.copy(base.with_suffix(".yaml"), path.with_suffix(".yaml"))
    shutil.rmtree(folder / "tmp")
    return path


@pytest.fixture
def models(tmp_path):
    ckpts = tmp_path / "Stable-diffusion"
    (ckpts / "tmp").mkdir(parents=True)
    base = write_single_file(ckpts, "ft1", seed=1)
    write_fine_tune(ckpts, "ft2", base, unet_seed=2)
    (tmp_path / "VAE").mkdir()
    return tmp_path


def make_manager(root, max_models: int = 3) -> tuple[ModelManager, list[tuple[str, str]]]:
    """A CPU model cache over ``root``'s checkpoints that records each component load (model key, part)."""
    hashes = HashCache(root / "hashes.json")
    registry = CheckpointRegistry([root / "Stable-diffusion"], hashes)
    source = CheckpointSource(registry, PartHashes(root / "component_hashes.json", hashes), root / "VAE", PartOptions())
    loads: list[tuple[str, str]] = []

    def recipe(key: str) -> ModelRecipe:
        inner = checkpoint_recipe(source, *split_model_key(key))

        def load(part: str):
            loads.append((key, part))
            return inner.load(part)

        return ModelRecipe(inner.parts, load, inner.assemble, inner.estimate)

    manager = ModelManager(recipe, devices.module_bytes, partial_offload.place, devices.TorchMemoryProbe(), "cpu",
                           CacheSettings(max_models=max_models, reserve_bytes=0))
    return manager, loads


def unet_out(unet) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.no_grad():
        return unet(torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, 32)).sample


def test_switching_fine_tunes_reads_only_the_unet(models):
    manager, loads = make_manager(models)
    with manager.use("ft1.safetensors") as first:
        pass
    with manager.use("ft2.safetensors") as second:
        assert second.pipe.vae is first.pipe.vae and second.pipe.text_encoder is first.pipe.text_encoder
        assert second.pipe.unet is not first.pipe.unet
        got = unet_out(second.pipe.unet)
    assert loads == [("ft1.safetensors", "unet"), ("ft1.safetensors", "vae"), ("ft1.safetensors", "text_encoder"),
                     ("ft2.safetensors", "unet")]
    path = models / "Stable-diffusion" / "ft2.safetensors"
    reference = load_checkpoint(CheckpointInfo(path.name, path, "single", path.with_suffix(".yaml")), None)
    assert torch.equal(got, unet_out(reference.pipe.unet))  # the UNet read alone is the file's
    parts = manager.components()
    assert len(parts) == 4 and {p.key.kind for p in parts} == {"unet", "vae", "text_encoder"}
    shared = [p for p in parts if p.key.kind != "unet"]
    assert all(p.models == ("ft1.safetensors", "ft2.safetensors") for p in shared)
    total = sum(p.size_bytes for p in parts)
    assert total == devices.module_bytes(first.pipe.unet, second.pipe.unet, first.pipe.vae, first.pipe.text_encoder)


def test_component_digests_follow_the_bytes_and_are_cached(models):
    folder = models / "Stable-diffusion"
    one, two = (safetensors_part_digests(folder / f"ft{i}.safetensors") for i in (1, 2))
    assert one["first_stage_model."] == two["first_stage_model."]
    assert one["cond_stage_model."] == two["cond_stage_model."]
    assert one[UNET] != two[UNET]
    manager, _ = make_manager(models)
    manager.ensure_loaded("ft1.safetensors")
    cached = json.loads((models / "component_hashes.json").read_text())
    assert [json.loads(v["sha256"]) for v in cached.values()] == [one]


def test_a_vae_file_is_its_own_component(models):
    other = write_single_file(models / "VAE", "donor", seed=9)  # its first_stage_model.* tensors
    vae_path = models / "VAE" / "other.safetensors"
    save_file({k: v for k, v in load_file(str(other)).items() if k.startswith("first_stage_model.")}, str(vae_path))
    other.unlink()
    other.with_suffix(".yaml").unlink()
    manager, loads = make_manager(models)
    with manager.use("ft1.safetensors") as own:
        pass
    with manager.use("ft1.safetensors + VAE other.safetensors") as swapped:
        assert swapped.pipe.vae is not own.pipe.vae and swapped.pipe.unet is own.pipe.unet
        assert swapped.vae_name == "other.safetensors"
        expected = load_file(str(vae_path))["first_stage_model.decoder.conv_out.weight"]
        assert torch.equal(swapped.pipe.vae.decoder.conv_out.weight, expected)
    assert loads[3:] == [("ft1.safetensors + VAE other.safetensors", "vae")]


def test_identical_diffusers_folders_share_every_component(tmp_path):
    ckpts = tmp_path / "Stable-diffusion"
    write_diffusers_folder(ckpts, "a", seed=3)
    shutil.copytree(ckpts / "a", ckpts / "b")
    manager, loads = make_manager(tmp_path)
    with manager.use("a") as a, manager.use("b") as b:
        assert a.pipe is not b.pipe and a.pipe.unet is b.pipe.unet and a.arch == b.arch == "sd1"
    assert [part for _, part in loads] == ["unet", "vae", "text_encoder"]


def test_partial_placement_keeps_a_prefix_of_blocks_within_the_budget(models):
    path = models / "Stable-diffusion" / "ft1.safetensors"
    unet = load_checkpoint(CheckpointInfo(path.name, path, "single", path.with_suffix(".yaml")), None).pipe.unet
    expected = unet_out(unet)
    blocks = partial_offload.blocks(unet)
    sizes = [partial_offload.tensor_bytes(b) for b in blocks]
    assert len(blocks) > 5 and sum(sizes) == devices.module_bytes(unet)
    assert partial_offload.min_device_bytes(unet) == max(sizes) < devices.module_bytes(unet) // 4
    budget = devices.module_bytes(unet) // 2
    placed = partial_offload.place(unet, "cpu", budget)  # on the CPU the hooks move nothing, but they run
    hooked = [b for b in blocks if hasattr(b, "_easel_offload_hooks")]
    assert 0 < placed <= budget and placed == sum(s for b, s in zip(blocks, sizes, strict=True) if b not in hooked)
    assert hooked == blocks[len(blocks) - len(hooked):]  # the device part is a prefix
    assert torch.equal(unet_out(unet), expected)
    assert partial_offload.place(unet, "cpu") == 0 and not any(hasattr(b, "_easel_offload_hooks") for b in blocks)


def test_memory_flags_map_onto_the_cache(data_dir):
    from modules.config import load_settings
    from modules.services import build_services

    services = build_services(load_settings(data_dir, {"memory_mode": "lowvram"}), start=False)
    try:
        assert services.models.settings.memory_mode == "lowvram"
        services.update_settings(services.settings.model_copy(update={"sd_checkpoints_limit": 3}))
        assert services.models.settings.memory_mode == "lowvram"  # read once at start-up
        assert services.models.settings.max_models == 3
    finally:
        services.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_unet_placed_partly_on_cuda_computes_the_same(models):
    path = models / "Stable-diffusion" / "ft1.safetensors"
    unet = load_checkpoint(CheckpointInfo(path.name, path, "single", path.with_suffix(".yaml")), None).pipe.unet
    expected = unet_out(unet)
    placed = partial_offload.place(unet, "cuda", devices.module_bytes(unet) // 3)
    torch.manual_seed(0)
    x, ctx = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32)
    with torch.no_grad():
        got = unet(x.cuda(), torch.tensor([500]).cuda(), ctx.cuda()).sample.cpu()
    assert 0 < placed < devices.module_bytes(unet) and torch.allclose(got, expected, atol=1e-4)
    assert all(p.device.type == "cpu" for b in partial_offload.blocks(unet) if hasattr(b, "_easel_offload_hooks")
               for p in b.parameters())


def test_a_damaged_header_is_a_checkpoint_error(models):
    from modules.checkpoints import CheckpointError

    header = json.dumps({"model.diffusion_model.x": {"dtype": "F32", "data_offsets": [0, 4]}}).encode()
    (models / "Stable-diffusion" / "bad.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    manager, loads = make_manager(models)
    with pytest.raises(CheckpointError, match="bad.safetensors is not a readable .safetensors file"):
        manager.ensure_loaded("bad.safetensors")
    assert loads == [] and manager.loaded() == []


def test_first_use_hashes_a_new_file_in_one_pass_with_its_a1111_hash(models):
    import hashlib

    def second_pass(path):
        raise AssertionError(f"{path.name} was read again to hash it")

    hashes = HashCache(models / "hashes.json", digest=second_pass)
    registry = CheckpointRegistry([models / "Stable-diffusion"], hashes)
    source = CheckpointSource(registry, PartHashes(models / "component_hashes.json", hashes), models / "VAE", PartOptions())
    recipe = checkpoint_recipe(source, "ft1.safetensors", None)
    model = recipe.assemble({part: recipe.load(part) for part in recipe.parts})
    path = models / "Stable-diffusion" / "ft1.safetensors"
    assert model.short_hash == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert registry.sha256(registry.get("ft1.safetensors")) == hashlib.sha256(path.read_bytes()).hexdigest()
