"""diffusers -> LDM export: round trips through diffusers' own LDM readers, yaml, and saving."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from modules.ldm_export import (
    LdmExportError,
    ldm_yaml,
    pipeline_to_ldm,
    save_ldm_checkpoint,
    text_encoder_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)

UNET_FIELDS = (
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "use_linear_projection",
    "transformer_layers_per_block",
)
VAE_FIELDS = (
    "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels", "latent_channels",
    "layers_per_block", "scaling_factor",
)
SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}


def make_unet(layers_per_block: int = 1, **overrides) -> UNet2DConditionModel:
    torch.manual_seed(0)
    config = dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=layers_per_block,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=32,
    )
    config.update(overrides)
    return UNet2DConditionModel(**config).eval()


def make_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    ).eval()


def text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def make_text_encoder() -> CLIPTextModel:
    torch.manual_seed(0)
    return CLIPTextModel(text_config()).eval()


def unet_output(unet: UNet2DConditionModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 16, 16, generator=generator)
    context = torch.randn(1, 7, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([10]), encoder_hidden_states=context).sample


def assert_same_state(expected: dict, actual: dict) -> None:
    assert set(actual) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


@pytest.mark.parametrize("layers_per_block", [1, 2])
def test_unet_round_trips_through_diffusers_reader(layers_per_block):
    unet = make_unet(layers_per_block)
    ldm = unet_to_ldm(unet.state_dict(), unet.config)

    assert all(key.startswith("model.diffusion_model.") for key in ldm)
    # LDM names, e.g. the second level's downsampler and the mid transformer.
    assert f"model.diffusion_model.input_blocks.{2 * (layers_per_block + 1)}.0.op.weight" in ldm
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in ldm
    assert "model.diffusion_model.time_embed.0.weight" in ldm

    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert_same_state(unet.state_dict(), back)

    reloaded = make_unet(layers_per_block)
    torch.nn.init.zeros_(reloaded.conv_out.weight)  # make sure loading really changes something
    reloaded.load_state_dict(back, strict=True)
    assert torch.equal(unet_output(reloaded), unet_output(unet))


def test_vae_round_trips_and_uses_conv_attention_weights():
    vae = make_vae()
    ldm = vae_to_ldm(vae.state_dict(), vae.config)

    assert all(key.startswith("first_stage_model.") for key in ldm)
    for name in ("q", "k", "v", "proj_out"):
        assert ldm[f"first_stage_model.encoder.mid.attn_1.{name}.weight"].shape == (64, 64, 1, 1)
    # The decoder counts levels from the bottom: diffusers up_blocks.0 is LDM up.1.
    upsample = vae.decoder.up_blocks[0].upsamplers[0].conv.weight
    assert torch.equal(ldm["first_stage_model.decoder.up.1.upsample.conv.weight"], upsample)

    back = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    assert_same_state(vae.state_dict(), back)

    reloaded = make_vae()
    torch.nn.init.zeros_(reloaded.decoder.conv_out.weight)
    reloaded.load_state_dict(back, strict=True)
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = vae.decode(vae.encode(image).latent_dist.mean).sample
        actual = reloaded.decode(reloaded.encode(image).latent_dist.mean).sample
    assert torch.equal(actual, expected)


def test_text_encoder_round_trips_with_position_ids():
    text_encoder = make_text_encoder()
    ldm = text_encoder_to_ldm(text_encoder.state_dict())

    assert all(key.startswith("cond_stage_model.transformer.text_model.") for key in ldm)
    position_ids = ldm.pop("cond_stage_model.transformer.text_model.embeddings.position_ids")
    assert position_ids.dtype == torch.int64 and torch.equal(position_ids, torch.arange(77)[None])

    back = convert_ldm_clip_checkpoint(ldm)
    if not hasattr(text_encoder, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        back = {key.removeprefix("text_model."): value for key, value in back.items()}
    assert_same_state(text_encoder.state_dict(), back)

    reloaded = CLIPTextModel(text_config()).eval()
    reloaded.load_state_dict(back, strict=True)
    ids = torch.tensor([[0, 5, 17, 2, 1, 1]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).last_hidden_state, text_encoder(ids).last_hidden_state)


def test_text_encoder_accepts_wrapped_keys_and_rejects_foreign_ones():
    state = {f"text_model.{key}": value for key, value in make_text_encoder().state_dict().items()}
    ldm = text_encoder_to_ldm(state, add_position_ids=False)
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in ldm
    assert not any("position_ids" in key for key in ldm)

    with pytest.raises(LdmExportError, match="text_projection.weight"):
        text_encoder_to_ldm({**state, "text_projection.weight": torch.zeros(2, 2)})


def test_unknown_unet_key_is_an_error():
    unet = make_unet()
    state = {**unet.state_dict(), "encoder_hid_proj.weight": torch.zeros(1)}
    with pytest.raises(LdmExportError, match="encoder_hid_proj.weight"):
        unet_to_ldm(state, unet.config)


def test_pipeline_to_ldm_holds_all_three_parts():
    unet, vae, text_encoder = make_unet(), make_vae(), make_text_encoder()
    state = pipeline_to_ldm(unet, vae, text_encoder)
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")
    counts = {prefix: sum(key.startswith(prefix) for key in state) for prefix in prefixes}
    assert counts == {
        "model.diffusion_model.": len(unet.state_dict()),
        "first_stage_model.": len(vae.state_dict()),
        "cond_stage_model.": len(text_encoder.state_dict()) + 1,  # + position_ids
    }


def test_yaml_round_trips_through_diffusers_config_readers():
    unet, vae = make_unet(layers_per_block=2), make_vae()
    text = ldm_yaml(unet.config, vae.config, text_config().to_dict(), SCHEDULER, scaling_factor=0.5)
    original = yaml.safe_load(text)
    params = original["model"]["params"]
    assert params["linear_start"] == 0.00085 and params["linear_end"] == 0.012 and params["timesteps"] == 1000
    assert params["scale_factor"] == 0.5
    assert "parameterization" not in params
    assert params["cond_stage_config"]["target"] == "ldm.modules.encoders.modules.FrozenCLIPEmbedder"
    assert params["cond_stage_config"]["params"]["text_config"]["hidden_size"] == 32
    assert params["first_stage_config"]["params"]["ddconfig"]["attn_resolutions"] == []

    ldm = unet_to_ldm(unet.state_dict(), unet.config)
    unet_config = create_unet_diffusers_config_from_ldm(original, ldm)
    vae_config = create_vae_diffusers_config_from_ldm(original, ldm)
    for field in UNET_FIELDS:
        expected = unet.config[field]
        assert unet_config[field] == pytest.approx(list(expected) if isinstance(expected, tuple) else expected), field
    for field in VAE_FIELDS:
        expected = vae.config[field]
        expected = 0.5 if field == "scaling_factor" else (list(expected) if isinstance(expected, tuple) else expected)
        assert vae_config[field] == expected, field

    # The config diffusers reads back builds a model that takes the exported weights.
    rebuilt = UNet2DConditionModel(**{**unet_config, "sample_size": 16, "norm_num_groups": 32}).eval()
    rebuilt.load_state_dict(convert_ldm_unet_checkpoint(ldm, unet_config), strict=True)
    assert torch.equal(unet_output(rebuilt), unet_output(unet))


def test_yaml_for_sd2_style_heads_and_v_prediction():
    unet = make_unet(attention_head_dim=(2, 4, 4), use_linear_projection=True)
    vae = make_vae()
    text = ldm_yaml(unet.config, vae.config, None, {**SCHEDULER, "prediction_type": "v_prediction"}, 0.18215)
    original = yaml.safe_load(text)
    params = original["model"]["params"]
    assert params["parameterization"] == "v"
    assert params["unet_config"]["params"]["num_head_channels"] == 16
    assert "num_heads" not in params["unet_config"]["params"]
    assert "params" not in params["cond_stage_config"]

    unet_config = create_unet_diffusers_config_from_ldm(original, unet_to_ldm(unet.state_dict(), unet.config))
    assert unet_config["attention_head_dim"] == [2, 4, 4]
    assert unet_config["use_linear_projection"] is True


def test_yaml_rejects_what_ldm_cannot_express():
    vae = make_vae()
    lopsided = make_unet(up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    with pytest.raises(LdmExportError, match="mirror"):
        ldm_yaml(lopsided.config, vae.config, None, SCHEDULER, 0.18215)
    with pytest.raises(LdmExportError, match="beta_schedule"):
        ldm_yaml(make_unet().config, vae.config, None, {**SCHEDULER, "beta_schedule": "sigmoid"}, 0.18215)


def test_save_writes_fp16_atomically_and_refuses_to_overwrite(tmp_path):
    state = pipeline_to_ldm(make_unet(), make_vae(), make_text_encoder())
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_ldm_checkpoint(full, state, dtype=None, metadata={"format": "pt"})
    save_ldm_checkpoint(half, state)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.safetensors", "half.safetensors"]  # no temp files left
    assert half.stat().st_size < 0.52 * full.stat().st_size
    loaded = load_file(half)
    assert set(loaded) == set(state)
    key = "model.diffusion_model.out.2.weight"
    assert loaded[key].dtype == torch.float16 and torch.equal(loaded[key], state[key].half())
    assert loaded["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    assert torch.equal(load_file(full)[key], state[key])

    before = full.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_ldm_checkpoint(full, state)
    assert full.read_bytes() == before
    save_ldm_checkpoint(full, state, overwrite=True)
    assert full.stat().st_size == half.stat().st_size


def test_diffusers_from_single_file_loads_the_export_offline(tmp_path):
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    configs = Path(__file__).resolve().parents[1] / "configs" / "tokenizer"
    unet, vae, text_encoder = make_unet(), make_vae(), make_text_encoder()
    tokenizer = CLIPTokenizer(vocab_file=str(configs / "vocab.json"), merges_file=str(configs / "merges.txt"))
    scheduler = PNDMScheduler(**SCHEDULER, skip_prk_steps=True, steps_offset=1)
    reference = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                                        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    reference.save_pretrained(tmp_path / "config")  # the component configs from_single_file reads
    for weights in (tmp_path / "config").rglob("*.safetensors"):
        weights.unlink()
    checkpoint = tmp_path / "tiny.safetensors"
    save_ldm_checkpoint(checkpoint, pipeline_to_ldm(unet, vae, text_encoder), dtype=None)
    (tmp_path / "tiny.yaml").write_text(ldm_yaml(unet.config, vae.config, None, SCHEDULER, vae.config.scaling_factor))

    loaded = StableDiffusionPipeline.from_single_file(
        str(checkpoint), config=str(tmp_path / "config"), original_config=str(tmp_path / "tiny.yaml"),
        local_files_only=True, safety_checker=None,
    )
    for name in ("unet", "vae", "text_encoder"):
        assert_same_state(getattr(reference, name).state_dict(), getattr(loaded, name).state_dict())
