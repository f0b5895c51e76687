"""Infotext: writing, parsing (round trips, A1111 samples, garbage) and mapping to request fields."""

import random

import pytest

from modules.infotext import build_infotext, infotext_to_fields, parse_infotext

# The layout A1111 writes (cf. the example in its parse_generation_parameters docstring), with the
# harder parts: a multi-line prompt with weights, a multi-line negative prompt, a quoted value.
A1111_SAMPLE = (
    "masterpiece, best quality, girl with an artist's beret, (red:1.2) scarf, ((eyeshadow)),\n"
    "[blurry background], <lora:detail_tweaker:0.5>\n"
    "Negative prompt: ugly, (((deformed))), [blurry], bad anatomy,\n"
    "poorly drawn hands\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 965400086, Size: 512x768, "
    'Model hash: 45dee52b, Model: v1-5-pruned-emaonly, Lora hashes: "a: 1234, b: 5678", '
    "Clip skip: 2, Version: v1.10.1"
)


def test_parse_a1111_sample():
    parsed = parse_infotext(A1111_SAMPLE)
    assert parsed["Prompt"] == (
        "masterpiece, best quality, girl with an artist's beret, (red:1.2) scarf, ((eyeshadow)),\n"
        "[blurry background], <lora:detail_tweaker:0.5>"
    )
    assert parsed["Negative prompt"] == "ugly, (((deformed))), [blurry], bad anatomy,\npoorly drawn hands"
    assert parsed["Steps"] == "20"
    assert parsed["Sampler"] == "DPM++ 2M Karras"
    assert parsed["CFG scale"] == "7"
    assert parsed["Seed"] == "965400086"
    assert parsed["Size-1"] == "512" and parsed["Size-2"] == "768"
    assert "Size" not in parsed
    assert parsed["Model hash"] == "45dee52b"
    assert parsed["Lora hashes"] == "a: 1234, b: 5678"
    assert parsed["Clip skip"] == "2"
    assert parsed["Version"] == "v1.10.1"


def test_build_writes_a1111_layout():
    text = build_infotext(
        "a cat,\n(red:1.2) hat",
        "blurry",
        {
            "Steps": 20,
            "Sampler": "Euler a",
            "Schedule type": "Karras",
            "CFG scale": 7.0,
            "Seed": 42,
            "Size": "512x512",
            "Denoising strength": 0.75,
            "Variation seed": None,
            "Lora hashes": "a: 1234, b: 5678",
            "Version": "easel-0.1",
        },
    )
    assert text == (
        "a cat,\n(red:1.2) hat\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x512, "
        'Denoising strength: 0.75, Lora hashes: "a: 1234, b: 5678", Version: easel-0.1'
    )


def test_build_omits_empty_negative_prompt():
    text = build_infotext("a cat", "", {"Steps": 20, "Seed": 1, "CFG scale": 7.5})
    assert text == "a cat\nSteps: 20, Seed: 1, CFG scale: 7.5"


def test_round_trip_of_parsed_sample():
    parsed = parse_infotext(A1111_SAMPLE)
    params = {k: v for k, v in parsed.items() if k not in ("Prompt", "Negative prompt", "Size-1", "Size-2")}
    params["Size"] = f"{parsed['Size-1']}x{parsed['Size-2']}"
    rebuilt = build_infotext(parsed["Prompt"], parsed["Negative prompt"], params)
    assert parse_infotext(rebuilt) == parsed


@pytest.mark.parametrize(
    "value",
    ['has "quotes" inside', "colon: here", "comma, here", "line\nbreak", " padded ", "back\\slash, x"],
)
def test_awkward_values_round_trip(value):
    text = build_infotext("p", "n", {"Steps": 5, "Odd value": value, "Seed": 3})
    parsed = parse_infotext(text)
    assert parsed["Odd value"] == value
    assert parsed["Steps"] == "5" and parsed["Seed"] == "3"
    assert len(text.split("\n")) == 3  # the parameters stay on one line


def test_build_rejects_unreadable_key():
    with pytest.raises(ValueError, match="Bad: key"):
        build_infotext("p", "", {"Bad: key": 1})


def test_size_split_applies_to_any_wxh_value():
    parsed = parse_infotext("p\nSteps: 1, Seed resize from: 640x480, Hires resize: 1024x768, Seed: 2")
    assert (parsed["Seed resize from-1"], parsed["Seed resize from-2"]) == ("640", "480")
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == ("1024", "768")


def test_last_line_with_too_few_params_belongs_to_prompt():
    parsed = parse_infotext("a portrait\nstyle: oil, mood: calm")
    assert parsed["Prompt"] == "a portrait\nstyle: oil, mood: calm"
    assert set(parsed) == {"Prompt", "Negative prompt"}


def test_windows_line_endings():
    parsed = parse_infotext(A1111_SAMPLE.replace("\n", "\r\n"))
    assert parsed == parse_infotext(A1111_SAMPLE)
    assert "\r" not in parsed["Prompt"]


def test_empty_and_prompt_only_text():
    assert parse_infotext("") == {"Prompt": "", "Negative prompt": ""}
    assert parse_infotext("just a prompt") == {"Prompt": "just a prompt", "Negative prompt": ""}


def test_no_prompt_only_negative_and_params():
    parsed = parse_infotext("Negative prompt: bad\nSteps: 3, Seed: 4, CFG scale: 5")
    assert parsed["Prompt"] == "" and parsed["Negative prompt"] == "bad" and parsed["Steps"] == "3"


def test_garbage_never_raises():
    rng = random.Random(1234)
    alphabet = 'abcXYZ019 ,:"\\\n\r\t-/x()[]<>{}\u00e9\u4e2d\x00'
    samples = ['"', '""', ":", ",,,", 'a: "', 'ab: "\\', "Negative prompt:", "\n\n\n", "x" * 5000]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200))) for _ in range(500)]
    for text in samples:
        parsed = parse_infotext(text)
        assert isinstance(parsed["Prompt"], str) and isinstance(parsed["Negative prompt"], str)
        fields = infotext_to_fields(parsed)
        assert isinstance(fields["_unparsed"], list)


def test_fields_mapping_with_types():
    fields = infotext_to_fields(parse_infotext(A1111_SAMPLE))
    assert fields["prompt"].startswith("masterpiece, best quality")
    assert fields["negative_prompt"].endswith("poorly drawn hands")
    assert fields["steps"] == 20 and isinstance(fields["steps"], int)
    assert fields["sampler_name"] == "DPM++ 2M Karras"  # legacy name left for the sampler registry
    assert fields["cfg_scale"] == 7.0 and isinstance(fields["cfg_scale"], float)
    assert fields["seed"] == 965400086
    assert (fields["width"], fields["height"]) == (512, 768)
    assert fields["clip_skip"] == 2
    assert fields["sd_model_checkpoint"] == "v1-5-pruned-emaonly"
    assert fields["sd_model_hash"] == "45dee52b"
    assert fields["enable_hr"] is False
    assert fields["_unparsed"] == []
    assert "scheduler" not in fields and "subseed" not in fields


def test_fields_hires_variation_and_inpaint():
    text = (
        "p\nSteps: 30, Sampler: Euler, Schedule type: Karras, CFG scale: 6.5, Seed: 7, Size: 512x512, "
        "Variation seed: 99, Variation seed strength: 0.3, Seed resize from: 640x480, "
        "Denoising strength: 0.55, Hires upscale: 1.5, Hires steps: 10, Hires upscaler: Latent, "
        "Hires resize: 1024x1024, Mask blur: 4, Masked content: latent noise"
    )
    fields = infotext_to_fields(parse_infotext(text))
    assert fields["scheduler"] == "Karras"
    assert fields["cfg_scale"] == 6.5
    assert (fields["subseed"], fields["subseed_strength"]) == (99, 0.3)
    assert (fields["seed_resize_from_w"], fields["seed_resize_from_h"]) == (640, 480)
    assert fields["denoising_strength"] == 0.55
    assert fields["enable_hr"] is True
    assert fields["hr_scale"] == 1.5 and fields["hr_second_pass_steps"] == 10
    assert fields["hr_upscaler"] == "Latent"
    assert (fields["hr_resize_x"], fields["hr_resize_y"]) == (1024, 1024)
    assert fields["mask_blur"] == 4
    assert fields["inpainting_fill"] == 2


def test_enable_hr_from_resize_only():
    fields = infotext_to_fields(parse_infotext("p\nSteps: 1, Seed: 1, Hires resize: 800x600"))
    assert fields["enable_hr"] is True


def test_unparseable_numbers_are_listed_not_raised():
    text = "p\nSteps: twenty, CFG scale: high, Seed: 12, Size: 512 by 512, Clip skip: 2.5"
    fields = infotext_to_fields(parse_infotext(text))
    assert fields["seed"] == 12
    assert "steps" not in fields and "cfg_scale" not in fields and "clip_skip" not in fields
    assert "width" not in fields
    assert sorted(fields["_unparsed"]) == ["CFG scale", "Clip skip", "Size", "Steps"]


def test_integral_float_text_is_accepted_for_int_fields():
    fields = infotext_to_fields({"Steps": "20.0", "Seed": "-1"})
    assert fields["steps"] == 20 and fields["seed"] == -1


def test_tiling_and_noise_multiplier_read_back():
    text = "a tile\nSteps: 4, Seed: 1, Size: 64x64, Tiling: True, Noise multiplier: 0.8"
    fields = infotext_to_fields(parse_infotext(text))
    assert fields["tiling"] is True and fields["initial_noise_multiplier"] == 0.8 and fields["_unparsed"] == []
    odd = infotext_to_fields(parse_infotext("x\nSteps: 4, Seed: 1, Size: 64x64, Tiling: maybe"))
    assert "tiling" not in odd and odd["_unparsed"] == ["Tiling"]
