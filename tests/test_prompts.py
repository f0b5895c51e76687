"""Tests for modules.prompts: A1111 prompt parsing, chunking and weighted CLIP encoding."""

import random

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from modules.prompts import (
    BREAK_MARKER,
    PromptLimits,
    PromptTooLong,
    encode_prompt,
    encode_prompt_pair,
    parse_prompt_attention,
    split_breaks,
    tokenize_weighted,
)

TOKENIZER_DIR = "/work/main/configs/tokenizer"
R = 1.1  # round bracket factor
S = 1 / 1.1  # square bracket factor
B = BREAK_MARKER

PARSE_CASES = [
    ("plain", "a cat on a mat", [("a cat on a mat", 1.0)]),
    ("empty", "", [("", 1.0)]),
    ("whitespace only", "   ", [("   ", 1.0)]),
    ("round", "an (important) word", [("an ", 1.0), ("important", R), (" word", 1.0)]),
    ("double round", "((word))", [("word", R * R)]),
    ("triple round", "(((sky)))", [("sky", R * R * R)]),
    ("square", "[word]", [("word", S)]),
    ("double square", "[[word]]", [("word", S * S)]),
    ("explicit weight", "(word:1.3)", [("word", 1.3)]),
    ("decimal weight", "(word:0.25)", [("word", 0.25)]),
    ("leading dot weight", "(word:.5)", [("word", 0.5)]),
    ("plus weight", "(word:+2)", [("word", 2.0)]),
    ("negative weight", "(x:-1)", [("x", -1.0)]),
    ("zero weight", "a (x:0)", [("a ", 1.0), ("x", 0.0)]),
    ("weight nested in round", "((house:1.3))", [("house", 1.3 * R)]),
    ("weight inside square", "[(a:2)]", [("a", 2.0 * S)]),
    ("round and square cancel", "([a])", [("a", R * S)]),
    ("equal neighbours merge", "(unnecessary)(parens)", [("unnecessaryparens", R)]),
    (
        "a1111 doctest",
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.3 * R * R),
            (" ", R),
            ("on", 1.0),
            (" a ", R),
            ("hill", 0.5 * R),
            (", sun, ", R),
            ("sky", R * R * R * R),
            (".", R),
        ],
    ),
    ("escaped brackets", r"\(literal\]", [("(literal]", 1.0)]),
    ("escaped all", r"\(\)\[\]\\", [("()[]\\", 1.0)]),
    ("escape inside weight", r"(a\(b:1.5)", [("a(b", 1.5)]),
    ("lone backslash dropped", "a\\b", [("ab", 1.0)]),
    ("trailing backslash dropped", "a\\", [("a", 1.0)]),
    ("break", "a BREAK b", [("a", 1.0), B, ("b", 1.0)]),
    ("break at start", "BREAK b", [B, ("b", 1.0)]),
    ("two breaks", "a BREAK BREAK b", [("a", 1.0), B, B, ("b", 1.0)]),
    ("break inside brackets stays a break", "(a BREAK b)", [("a", R), B, ("b", R)]),
    ("lowercase break is text", "a break b", [("a break b", 1.0)]),
    ("break inside word is text", "BREAKfast aBREAK", [("BREAKfast aBREAK", 1.0)]),
    ("unbalanced round", "((a", [("a", R * R)]),
    ("unbalanced after text", "x (unbalanced", [("x ", 1.0), ("unbalanced", R)]),
    ("unbalanced square", "[a", [("a", S)]),
    ("stray close round", "a) b", [("a) b", 1.0)]),
    ("stray close square", "a] b", [("a] b", 1.0)]),
    ("weight without open bracket", "a:1.2) b", [("a:1.2) b", 1.0)]),
    ("non-numeric weight", "(word:abc)", [("word:abc", R)]),
    ("two colons", "(a:b:1.2)", [("a:b", 1.2)]),
    ("space before number", "(a: 1.2)", [("a: 1.2", R)]),
    ("malformed number", "(a:1.2.3)", [("a:1.2.3", R)]),
    ("dot only number", "(a:.)", [("a:.", R)]),
    ("weight with no text", "(:1.2)", [("", 1.0)]),
    ("empty brackets", "()[]", [("", 1.0)]),
    ("colon only", ":", [(":", 1.0)]),
    ("unicode", "(café:1.2) 日本 ✨", [("café", 1.2), (" 日本 ✨", 1.0)]),
    ("very long", "word, " * 2000, [("word, " * 2000, 1.0)]),
    ("deep nesting", "(" * 50 + "a" + ")" * 50, [("a", R**50)]),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_parse_prompt_attention(text, expected):
    result = parse_prompt_attention(text)
    assert [t for t, _ in result] == [t for t, _ in expected]
    assert [w for _, w in result] == pytest.approx([w for _, w in expected], rel=1e-9, abs=1e-12)


def test_parse_fuzz_never_raises_and_keeps_only_input_characters():
    rng = random.Random(1234)
    alphabet = "()[]:\\ab1.-+ BREAK"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        parsed = parse_prompt_attention(text)
        assert parsed, text
        joined = "".join(t for t, w in parsed if (t, w) != BREAK_MARKER)
        assert set(joined) <= set(text), (text, parsed)
        assert all(isinstance(w, float) for _, w in parsed)


def test_split_breaks():
    parsed = parse_prompt_attention("a BREAK (b) BREAK")
    assert split_breaks(parsed) == [[("a", 1.0)], [("b", pytest.approx(R))], []]


# --------------------------------------------------------------------------- encoding


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer(f"{TOKENIZER_DIR}/vocab.json", f"{TOKENIZER_DIR}/merges.txt", model_max_length=77)


@pytest.fixture(scope="module")
def text_encoder():
    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    encoder = CLIPTextModel(config).eval()
    with torch.no_grad():  # freshly initialised LayerNorm outputs have mean ~0, which makes
        encoder.final_layer_norm.bias.add_(0.5)  # A1111's mean restoration ill-conditioned
    return encoder


def _ids(tokenizer, text):
    return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))


def test_tokenize_weighted_weights_and_chunks(tokenizer):
    chunks = tokenize_weighted(tokenizer, "a (red:1.5) cat")
    assert len(chunks) == 1
    assert [t for t, _ in chunks[0]] == _ids(tokenizer, "a red cat")
    assert [w for _, w in chunks[0]] == [1.0, 1.5, 1.0]


def test_tokenize_weighted_empty_and_break(tokenizer):
    assert tokenize_weighted(tokenizer, "") == [[]]
    assert len(tokenize_weighted(tokenizer, "a BREAK b")) == 2
    assert len(tokenize_weighted(tokenizer, "a BREAK")) == 1  # trailing BREAK adds nothing
    assert tokenize_weighted(tokenizer, "BREAK b")[0] == []  # leading BREAK gives an empty chunk
    assert len(tokenize_weighted(tokenizer, "cat " * 75 + "BREAK b")) == 2  # full chunk, no extra


def test_tokenize_weighted_comma_backtrack(tokenizer):
    cat, comma, dog = _ids(tokenizer, "cat , dog")
    chunks = tokenize_weighted(tokenizer, "cat " * 70 + ", " + "dog " * 10)
    assert [len(c) for c in chunks] == [71, 10]
    assert chunks[0][-1][0] == comma and {t for t, _ in chunks[1]} == {dog}
    far = tokenize_weighted(tokenizer, "cat " * 50 + ", " + "dog " * 30)  # comma 25 tokens back
    assert [len(c) for c in far] == [75, 6]
    off = tokenize_weighted(tokenizer, "cat " * 70 + ", " + "dog " * 10, comma_backtrack=0)
    assert [len(c) for c in off] == [75, 6]


def test_short_prompt_equals_plain_encoder(tokenizer, text_encoder):
    z = encode_prompt(tokenizer, text_encoder, "a red cat")
    assert z.shape == (1, 77, 32)
    ids = tokenizer("a red cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = text_encoder(ids).last_hidden_state
    torch.testing.assert_close(z, expected)


def test_long_prompt_two_chunks(tokenizer, text_encoder):
    text = "cat " * 100
    assert sum(len(c) for c in tokenize_weighted(tokenizer, text)) == 100
    z = encode_prompt(tokenizer, text_encoder, text)
    assert z.shape == (1, 154, 32)
    second = encode_prompt(tokenizer, text_encoder, "cat " * 25)
    torch.testing.assert_close(z[:, 77:], second)  # chunks are encoded independently


def test_break_makes_two_chunks(tokenizer, text_encoder):
    z = encode_prompt(tokenizer, text_encoder, "a red cat BREAK blue sky")
    assert z.shape == (1, 154, 32)
    torch.testing.assert_close(z[:, :77], encode_prompt(tokenizer, text_encoder, "a red cat"))
    torch.testing.assert_close(z[:, 77:], encode_prompt(tokenizer, text_encoder, "blue sky"))


def test_pair_padding_equalises_shapes(tokenizer, text_encoder):
    positive, negative = encode_prompt_pair(tokenizer, text_encoder, "cat " * 100, "blurry")
    assert positive.shape == negative.shape == (1, 154, 32)
    torch.testing.assert_close(negative[:, :77], encode_prompt(tokenizer, text_encoder, "blurry"))
    torch.testing.assert_close(negative[:, 77:], encode_prompt(tokenizer, text_encoder, ""))
    short_pos, long_neg = encode_prompt_pair(tokenizer, text_encoder, "", "a BREAK b BREAK c")
    assert short_pos.shape == long_neg.shape == (1, 231, 32)


def test_weight_scales_token_relative_to_others(tokenizer, text_encoder):
    plain = encode_prompt(tokenizer, text_encoder, "a red cat")[0]
    weighted = encode_prompt(tokenizer, text_encoder, "a (red:1.5) cat")[0]
    red = 2  # BOS, a, red
    mean_factor = plain.mean() / (plain.mean() + 0.5 * plain[red].sum() / plain.numel())
    assert 0.5 < mean_factor < 1.0
    others = [i for i in range(77) if i != red]
    torch.testing.assert_close(weighted[others], plain[others] * mean_factor)
    torch.testing.assert_close(weighted[red], plain[red] * 1.5 * mean_factor)
    torch.testing.assert_close(weighted.mean(), plain.mean())  # mean restored
    assert not torch.allclose(weighted, plain)


def test_clip_skip_two_uses_penultimate_layer(tokenizer, text_encoder):
    z1 = encode_prompt(tokenizer, text_encoder, "a red cat", clip_skip=1)
    z2 = encode_prompt(tokenizer, text_encoder, "a red cat", clip_skip=2)
    assert z2.shape == z1.shape and not torch.allclose(z1, z2)
    ids = tokenizer("a red cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        expected = text_encoder.final_layer_norm(hidden)
    torch.testing.assert_close(z2, expected)


@pytest.mark.parametrize("clip_skip", [0, 3, -1])
def test_clip_skip_out_of_range(tokenizer, text_encoder, clip_skip):
    with pytest.raises(ValueError, match="clip_skip must be an integer in 1..2"):
        encode_prompt(tokenizer, text_encoder, "cat", clip_skip=clip_skip)


def test_prompt_too_long(tokenizer, text_encoder):
    with pytest.raises(PromptTooLong, match="151 tokens in 3 chunks") as info:
        encode_prompt(tokenizer, text_encoder, "cat " * 151, limits=PromptLimits(max_chunks=2))
    assert isinstance(info.value, ValueError) and info.value.token_count == 151
    with pytest.raises(PromptTooLong):
        encode_prompt(tokenizer, text_encoder, "cat " * 1501)  # default: 20 chunks = 1500 tokens
    with pytest.raises(PromptTooLong):
        encode_prompt_pair(tokenizer, text_encoder, "cat", "a BREAK b BREAK c", limits=PromptLimits(max_chunks=2))
    assert encode_prompt(tokenizer, text_encoder, "cat " * 150, limits=PromptLimits(max_chunks=2)).shape[1] == 154


def test_prompt_limits_validation():
    with pytest.raises(ValueError, match="max_chunks must be at least 1"):
        PromptLimits(max_chunks=0)


def test_dtype_is_respected(tokenizer, text_encoder):
    encoder = CLIPTextModel(text_encoder.config).eval()
    encoder.load_state_dict(text_encoder.state_dict())
    encoder.to(torch.bfloat16)
    z = encode_prompt(tokenizer, encoder, "a (red:1.2) cat", device="cpu")
    assert z.dtype == torch.bfloat16 and z.device.type == "cpu"
    reference = encode_prompt(tokenizer, text_encoder, "a (red:1.2) cat")
    torch.testing.assert_close(z.float(), reference, atol=0.1, rtol=0.05)


def test_weighting_a_chunk_whose_mean_is_exactly_zero_gives_no_nan():
    from modules.prompts import _apply_weights

    z = torch.tensor([[[1.0, -1.0], [2.0, -2.0]]])  # mean exactly 0
    for weights in (torch.ones(1, 2), torch.tensor([[1.0, 1.5]])):
        out = _apply_weights(z, weights)
        assert not torch.isnan(out).any()
    assert torch.equal(_apply_weights(z, torch.ones(1, 2)), z)
