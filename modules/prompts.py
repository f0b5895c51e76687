"""A1111 prompt syntax → CLIP text embeddings for SD 1.x-style text encoders.

Two layers, usable separately:

1. Parsing (pure Python): ``parse_prompt_attention`` turns ``"a (red:1.3) [cat] BREAK sky"``
   into ``[("a ", 1.0), ("red", 1.3), (" ", 1.0), ("cat", 1/1.1), ("BREAK", -1.0), ("sky", 1.0)]``.
   It never raises: malformed brackets degrade the way AUTOMATIC1111's parser degrades.
2. Encoding (torch): ``tokenize_weighted`` cuts the parsed prompt into chunks of at most 75
   weighted tokens; ``encode_prompt`` runs every chunk as ``[BOS] + tokens + EOS padding``
   (77 ids) through the text encoder, applies the weights with A1111's "Original" emphasis
   (multiply, then restore the chunk's mean) and concatenates the chunks along the sequence axis.

Two further pieces of A1111's syntax live here too:

3. Extra networks: ``parse_extra_networks`` takes ``<lora:name:0.8>`` tags out of a prompt and
   returns them (what they mean is ``modules.extra_networks``' job).
4. Textual-inversion embeddings: ``encode_prompt_pair(..., embeddings={name: vectors})`` finds each
   embedding's name in the token stream (A1111's rule: the name's own token ids, inside one
   weighted piece) and puts its vectors in place of that many token embeddings, so weighting such
   as ``(my-style:1.2)`` applies to them like to any word. An embedding never straddles a chunk.

Deliberate differences from A1111 (which we otherwise follow, to reproduce its images):
- ``BREAK`` inside brackets still breaks (A1111 multiplies its marker weight and then treats it as
  text); break markers are never weighted or merged.
- A weight that looks numeric but is not (``(a:1.2.3)``, ``(a:.)``) is kept as literal text with the
  bracket's 1.1 (A1111 raises ``ValueError`` from ``float``).
- Empty text pieces are dropped from the parse (they carry no tokens).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_MARKER: tuple[str, float] = ("BREAK", -1.0)
CHUNK_TOKENS = 75  # prompt tokens per chunk; +BOS +EOS = 77 ids
COMMA_BACKTRACK = 20  # A1111 default of "comma_padding_backtrack"
COMMA_TOKEN = ",</w>"

_SPECIAL_CHARS = "\\()[]:"
_ESCAPABLE = "\\()[]"
_BREAK_RE = re.compile(r"\s*\bBREAK\b\s*")
_WEIGHT_RE = re.compile(r":([+-]?[.\d]+)\)")


# --------------------------------------------------------------------------- parsing


def is_break(part: tuple[str, float]) -> bool:
    """True if ``part`` is the BREAK marker produced by ``parse_prompt_attention``."""
    return part[0] == BREAK_MARKER[0] and part[1] == BREAK_MARKER[1]


def _append_text(pieces: list[list[Any]], text: str) -> None:
    """Append plain text, splitting it at every standalone uppercase ``BREAK`` word."""
    for index, part in enumerate(_BREAK_RE.split(text)):
        if index > 0:
            pieces.append([BREAK_MARKER[0], BREAK_MARKER[1], True])
        if part:
            pieces.append([part, 1.0, False])


def _multiply_from(pieces: list[list[Any]], start: int, factor: float) -> None:
    """Multiply the weight of every text piece from index ``start`` on (markers stay as they are)."""
    for piece in pieces[start:]:
        if not piece[2]:
            piece[1] *= factor


def _parse_weight(text: str, position: int) -> tuple[float, int] | None:
    """Read ``:<number>)`` at ``position``; return (weight, end index) or None if it is not one."""
    match = _WEIGHT_RE.match(text, position)
    if match is None:
        return None
    try:
        return float(match.group(1)), match.end()
    except ValueError:  # e.g. "1.2.3" or "." match the character class but are no number
        return None


def _merge_equal_weights(pieces: list[list[Any]]) -> list[tuple[str, float]]:
    """Join neighbouring text pieces with identical weights; break markers are never joined."""
    merged: list[list[Any]] = []
    for piece in pieces:
        previous = merged[-1] if merged else None
        if previous and not piece[2] and not previous[2] and previous[1] == piece[1]:
            previous[0] += piece[0]
        else:
            merged.append(list(piece))
    return [(text, weight) for text, weight, _ in merged]


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split an A1111 prompt into (text, weight) pieces; never raises.

    ``(x)`` ×1.1, ``((x))`` ×1.21, ``[x]`` ÷1.1, ``(x:1.3)`` ×1.3 (nested factors multiply),
    ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters (a lone backslash is dropped,
    as in A1111), and a standalone ``BREAK`` becomes ``BREAK_MARKER`` ("BREAK", -1.0).
    Unclosed brackets apply their factor to the rest of the prompt; a stray ``)`` or ``]``
    is literal text; ``(x:abc)`` is the literal text ``x:abc`` at 1.1. Neighbouring pieces with
    equal weights are merged and an empty prompt gives ``[("", 1.0)]``.
    """
    pieces: list[list[Any]] = []  # [text, weight, is_break]
    round_open: list[int] = []  # index into pieces where each open "(" starts
    square_open: list[int] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == "\\":
            escaped = text[position + 1 : position + 2]
            if escaped and escaped in _ESCAPABLE:
                pieces.append([escaped, 1.0, False])
                position += 2
            else:
                position += 1  # A1111 drops a backslash that escapes nothing
        elif char == "(":
            round_open.append(len(pieces))
            position += 1
        elif char == "[":
            square_open.append(len(pieces))
            position += 1
        elif char == ":":
            weight = _parse_weight(text, position)
            if weight is not None and round_open:
                _multiply_from(pieces, round_open.pop(), weight[0])
                position = weight[1]
            elif weight is not None:  # ":1.2)" with no open "(" is plain text, ")" included
                _append_text(pieces, text[position : weight[1]])
                position = weight[1]
            else:
                _append_text(pieces, ":")
                position += 1
        elif char == ")" and round_open:
            _multiply_from(pieces, round_open.pop(), ROUND_MULTIPLIER)
            position += 1
        elif char == "]" and square_open:
            _multiply_from(pieces, square_open.pop(), SQUARE_MULTIPLIER)
            position += 1
        elif char in ")]":
            _append_text(pieces, char)
            position += 1
        else:
            end = position
            while end < len(text) and text[end] not in _SPECIAL_CHARS:
                end += 1
            _append_text(pieces, text[position:end])
            position = end

    for start in round_open:
        _multiply_from(pieces, start, ROUND_MULTIPLIER)
    for start in square_open:
        _multiply_from(pieces, start, SQUARE_MULTIPLIER)

    merged = _merge_equal_weights(pieces)
    return merged if merged else [("", 1.0)]


def split_breaks(parsed: list[tuple[str, float]]) -> list[list[tuple[str, float]]]:
    """Split parsed pieces at BREAK markers: ``n`` markers give ``n + 1`` (possibly empty) segments."""
    segments: list[list[tuple[str, float]]] = [[]]
    for part in parsed:
        if is_break(part):
            segments.append([])
        else:
            segments[-1].append(part)
    return segments


# --------------------------------------------------------------------------- extra networks

_EXTRA_NETWORK_RE = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ExtraNetworkTag:
    """One ``<kind:arg:arg...>`` tag of a prompt, e.g. ``<lora:name:0.8>`` (kind "lora")."""

    kind: str
    items: tuple[str, ...]  # the ":"-separated arguments, stripped ("name", "0.8")
    text: str  # the tag as written


def parse_extra_networks(text: str) -> tuple[str, list[ExtraNetworkTag]]:
    """Remove A1111's extra-network tags (``<kind:args>``) from a prompt; return the text without
    them and the tags in order. The text around a tag is kept as it was (A1111 does the same)."""
    tags: list[ExtraNetworkTag] = []

    def take(match: re.Match) -> str:
        items = tuple(item.strip() for item in match.group(2).split(":"))
        tags.append(ExtraNetworkTag(match.group(1), items, match.group(0)))
        return ""

    return _EXTRA_NETWORK_RE.sub(take, text), tags


# --------------------------------------------------------------------------- embeddings


@dataclass(frozen=True, eq=False)
class TokenVector:
    """Vector ``index`` of ``count`` of a textual-inversion embedding, in a token's place."""

    name: str
    index: int
    count: int
    vector: torch.Tensor  # [hidden]


Token = int | TokenVector


class EmbeddingTable:
    """Textual-inversion embeddings, found in token streams by their names' token ids (A1111's rule).

    ``vectors`` maps a name to a tensor [n_vectors, hidden]. A name matches where its own token
    ids appear in a row (the tokenizer lower-cases, so ``My-Style`` matches ``my-style``); where two
    names could match at one place, the longer wins.
    """

    def __init__(self, tokenizer: Any, vectors: Mapping[str, torch.Tensor]) -> None:
        self.vectors = dict(vectors)
        self._by_first: dict[int, list[tuple[tuple[int, ...], str]]] = {}
        for name in self.vectors:
            ids = tuple(_token_ids(tokenizer, name))
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, name))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda c: -len(c[0]))

    def match(self, ids: list[int], position: int) -> tuple[str, int] | None:
        """(name, number of ids it covers) of the embedding starting at ``position``, if one does."""
        for candidate, name in self._by_first.get(ids[position], ()):
            if tuple(ids[position : position + len(candidate)]) == candidate:
                return name, len(candidate)
        return None

    def substitute(self, ids: list[int]) -> list[Token]:
        """``ids`` with every embedding name replaced by that embedding's vectors."""
        out: list[Token] = []
        position = 0
        while position < len(ids):
            found = self.match(ids, position)
            if found is None:
                out.append(ids[position])
                position += 1
                continue
            name, length = found
            rows = self.vectors[name]
            out.extend(TokenVector(name, i, rows.shape[0], rows[i]) for i in range(rows.shape[0]))
            position += length
        return out

    def names_in(self, ids: list[int]) -> list[str]:
        """The embedding names found in ``ids``, in order of first appearance."""
        names: list[str] = []
        for token in self.substitute(ids):
            if isinstance(token, TokenVector) and token.name not in names:
                names.append(token.name)
        return names


def embeddings_in_text(tokenizer: Any, text: str, names: list[str]) -> list[str]:
    """Which of ``names`` a prompt mentions (by the same token rule the encoder uses), in order."""
    if not names:
        return []
    table = EmbeddingTable(tokenizer, {name: torch.zeros(1, 1) for name in names})
    found: list[str] = []
    for piece, _ in parse_prompt_attention(text):
        for name in table.names_in(_token_ids(tokenizer, piece)):
            if name not in found:
                found.append(name)
    return found


# --------------------------------------------------------------------------- tokenizing


@dataclass(frozen=True)
class PromptLimits:
    """Bounds on prompt length; ``max_chunks`` chunks of 75 tokens each (default 1500 tokens)."""

    max_chunks: int = 20
    comma_backtrack: int = COMMA_BACKTRACK

    def __post_init__(self) -> None:
        if self.max_chunks < 1:
            raise ValueError(f"PromptLimits.max_chunks must be at least 1, got {self.max_chunks}")
        if not 0 <= self.comma_backtrack < CHUNK_TOKENS:
            raise ValueError(
                f"PromptLimits.comma_backtrack must be in 0..{CHUNK_TOKENS - 1}, got {self.comma_backtrack}"
            )


class PromptTooLong(ValueError):
    """The prompt needs more 75-token chunks than ``PromptLimits.max_chunks`` allows."""

    def __init__(self, token_count: int, chunk_count: int, limits: PromptLimits) -> None:
        self.token_count = token_count
        self.chunk_count = chunk_count
        self.max_chunks = limits.max_chunks
        super().__init__(
            f"prompt is too long: {token_count} tokens in {chunk_count} chunks of {CHUNK_TOKENS}; "
            f"at most {limits.max_chunks} chunks ({limits.max_chunks * CHUNK_TOKENS} tokens) are allowed"
        )


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without BOS/EOS and without truncation."""
    if not text:
        return []
    return list(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)))


def _split_into_chunks(
    pairs: list[tuple[Token, float]], comma_id: int | None, comma_backtrack: int
) -> list[list[tuple[Token, float]]]:
    """Cut one BREAK-free run of tokens into chunks of ≤75; always returns at least one chunk.

    When a chunk is full and the last comma is within ``comma_backtrack`` tokens of its end,
    the tokens after that comma move to the next chunk (A1111's comma padding backtrack). An
    embedding's vectors that would not fit in the current chunk start the next one (A1111 too).
    """
    chunks: list[list[tuple[Token, float]]] = []
    current: list[tuple[Token, float]] = []
    last_comma = -1
    for pair in pairs:
        token = pair[0]
        if (
            isinstance(token, TokenVector)
            and token.index == 0
            and token.count <= CHUNK_TOKENS
            and len(current) + token.count > CHUNK_TOKENS
        ):
            chunks.append(current)
            current = []
            last_comma = -1
        if token == comma_id:
            last_comma = len(current)
        elif (
            len(current) == CHUNK_TOKENS
            and last_comma != -1
            and CHUNK_TOKENS - last_comma <= comma_backtrack
        ):
            chunks.append(current[: last_comma + 1])
            current = current[last_comma + 1 :]
            last_comma = -1
        if len(current) == CHUNK_TOKENS:
            chunks.append(current)
            current = []
            last_comma = -1
        current.append(pair)
    if current or not chunks:
        chunks.append(current)
    return chunks


def _comma_id(tokenizer: Any) -> int | None:
    """The id of CLIP's comma token, or None when the vocabulary has none (a lookup, not
    ``get_vocab()``, which copies the whole 49k-entry vocabulary: 15 ms a call)."""
    token_id = tokenizer.convert_tokens_to_ids(COMMA_TOKEN)
    return None if token_id is None or token_id == tokenizer.unk_token_id else token_id


def tokenize_weighted(
    tokenizer: Any, text: str, comma_backtrack: int = COMMA_BACKTRACK, embeddings: EmbeddingTable | None = None
) -> list[list[tuple[Token, float]]]:
    """Parse ``text`` and return chunks of ≤75 (token, weight) pairs, without BOS/EOS.

    A token is an id, or a ``TokenVector`` where ``embeddings`` names an embedding. Every BREAK
    ends the current chunk (even an empty one, as A1111 does); a trailing BREAK adds nothing. An
    empty prompt gives one empty chunk.
    """
    comma_id = _comma_id(tokenizer)
    segments = split_breaks(parse_prompt_attention(text))
    chunks: list[list[tuple[Token, float]]] = []

    def tokens_of(piece: str) -> list[Token]:
        ids = _token_ids(tokenizer, piece)
        return embeddings.substitute(ids) if embeddings is not None else list(ids)

    for index, segment in enumerate(segments):
        pairs = [(token, weight) for piece, weight in segment for token in tokens_of(piece)]
        is_last = index == len(segments) - 1
        if is_last and not pairs and chunks:
            break
        chunks.extend(_split_into_chunks(pairs, comma_id, comma_backtrack))
    return chunks


def _check_length(chunks: list[list[tuple[Token, float]]], limits: PromptLimits) -> None:
    """Raise PromptTooLong if ``chunks`` exceed ``limits``."""
    if len(chunks) > limits.max_chunks:
        token_count = sum(len(chunk) for chunk in chunks)
        raise PromptTooLong(token_count, len(chunks), limits)


# --------------------------------------------------------------------------- encoding


def _final_layer_norm(text_encoder: Any) -> torch.nn.Module:
    """The text transformer's final LayerNorm (``CLIPTextModel`` or a model wrapping ``text_model``)."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def _check_clip_skip(text_encoder: Any, clip_skip: int) -> None:
    """Raise ValueError unless 1 <= clip_skip <= number of transformer layers."""
    layers = text_encoder.config.num_hidden_layers
    if not isinstance(clip_skip, int) or not 1 <= clip_skip <= layers:
        raise ValueError(f"clip_skip must be an integer in 1..{layers} for this text encoder, got {clip_skip!r}")


def _chunk_tensors(
    tokenizer: Any, chunks: list[list[tuple[Token, float]]]
) -> tuple[torch.Tensor, torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
    """Token ids [n, 77] (``BOS + tokens + EOS + pad``), float32 weights [n, 77] (1.0 on BOS/pad) and the
    embedding vectors by (chunk, position). An embedding's positions hold the BOS id as a
    placeholder: never the EOS id, which marks where CLIP's pooled output is taken."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, weights = [], []
    vectors: dict[tuple[int, int], torch.Tensor] = {}
    for row, chunk in enumerate(chunks):
        padding = CHUNK_TOKENS + 1 - len(chunk)
        tokens = []
        for column, (token, _) in enumerate(chunk, start=1):
            if isinstance(token, TokenVector):
                vectors[(row, column)] = token.vector
                token = tokenizer.bos_token_id
            tokens.append(token)
        # BOS, the tokens, EOS, then padding (A1111: the pad id only differs from EOS for OpenCLIP's
        # tokenizer, SDXL's second, where the EOS must stay: CLIP's pooled output is taken there)
        ids.append([tokenizer.bos_token_id] + tokens + [tokenizer.eos_token_id] + [pad_id] * (padding - 1))
        weights.append([1.0] + [weight for _, weight in chunk] + [1.0] * padding)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(weights, dtype=torch.float32), vectors


@contextmanager
def _vectors_in_place(text_encoder: Any, vectors: dict[tuple[int, int], torch.Tensor]) -> Iterator[None]:
    """While encoding, the token-embedding layer's output holds ``vectors`` at their (chunk, position).

    A forward hook on ``get_input_embeddings()``, registered for this one call and removed after:
    the model itself is never changed (A1111 swaps the layer's forward for the same purpose).
    """
    if not vectors:
        yield
        return
    rows = torch.tensor([row for row, _ in vectors])
    columns = torch.tensor([column for _, column in vectors])
    stacked = torch.stack(list(vectors.values()))

    def put_vectors(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[rows.to(output.device), columns.to(output.device)] = stacked.to(output.device, output.dtype)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(put_vectors)
    try:
        yield
    finally:
        handle.remove()


def _apply_weights(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111 "Original" emphasis per chunk: ``z *= weights`` then rescale to the chunk's original mean."""
    z32 = z.float()
    original_mean = z32.mean(dim=(1, 2), keepdim=True)
    weighted = z32 * weights.to(z32.device)[:, :, None]
    new_mean = weighted.mean(dim=(1, 2), keepdim=True)
    # a mean of exactly 0 (a LayerNorm without bias can give one) would divide 0 by 0: leave unscaled
    zero = new_mean == 0
    ratio = torch.where(zero, torch.ones_like(new_mean), original_mean / torch.where(zero, torch.ones_like(new_mean), new_mean))
    return (weighted * ratio).to(z.dtype)


def _encode_chunks(
    tokenizer: Any,
    text_encoder: Any,
    chunks: list[list[tuple[Token, float]]],
    clip_skip: int,
    device: torch.device | str | None,
) -> torch.Tensor:
    """Run every chunk through the text encoder and return weighted embeddings [1, 77*n, hidden]."""
    ids, weights, vectors = _chunk_tensors(tokenizer, chunks)
    target = torch.device(device) if device is not None else text_encoder.device
    with torch.no_grad(), _vectors_in_place(text_encoder, vectors):
        output = text_encoder(input_ids=ids.to(target), output_hidden_states=clip_skip > 1)
        if clip_skip > 1:
            z = _final_layer_norm(text_encoder)(output.hidden_states[-clip_skip])
        else:
            z = output.last_hidden_state
        z = _apply_weights(z, weights)
    return z.reshape(1, -1, z.shape[-1])


def encode_prompt(
    tokenizer: Any,
    text_encoder: Any,
    text: str,
    clip_skip: int = 1,
    limits: PromptLimits = PromptLimits(),
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Encode an A1111 prompt to embeddings of shape [1, 77 * n_chunks, hidden].

    ``clip_skip`` 1 uses the last layer; ``k`` > 1 uses the k-th hidden state from the end with the
    final LayerNorm applied. ``device`` is where the token ids go (default: the encoder's device);
    the result has the encoder's dtype. Raises PromptTooLong past ``limits.max_chunks``.
    """
    _check_clip_skip(text_encoder, clip_skip)
    chunks = tokenize_weighted(tokenizer, text, limits.comma_backtrack)
    _check_length(chunks, limits)
    return _encode_chunks(tokenizer, text_encoder, chunks, clip_skip, device)


def _embedding_table(
    tokenizer: Any, text_encoder: Any, embeddings: Mapping[str, torch.Tensor] | None
) -> EmbeddingTable | None:
    """An EmbeddingTable for ``embeddings``, after checking their width against the encoder's."""
    if not embeddings:
        return None
    width = text_encoder.get_input_embeddings().embedding_dim
    for name, rows in embeddings.items():
        if rows.ndim != 2 or rows.shape[1] != width:
            raise ValueError(
                f"embedding {name!r} has vectors of shape {tuple(rows.shape)}; this text encoder takes [n, {width}]"
            )
    return EmbeddingTable(tokenizer, embeddings)


def encode_prompt_set(
    tokenizer: Any,
    text_encoder: Any,
    texts: Sequence[str],
    clip_skip: int = 1,
    limits: PromptLimits = PromptLimits(),
    device: torch.device | str | None = None,
    embeddings: Mapping[str, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Encode several prompts, each padded with empty chunks to the longest one's chunk count.

    Equal shapes let classifier-free guidance (and composable ``AND`` parts, and scheduled
    prompts) go through the UNet in one batch, as in A1111. Each text is encoded on its own, so
    a text encodes the same whatever else is in the set. ``embeddings`` (name -> [n_vectors,
    hidden]) are textual-inversion embeddings to use where their names appear; their width must
    be the text encoder's (ValueError otherwise). PromptTooLong names the first text too long.
    """
    _check_clip_skip(text_encoder, clip_skip)
    table = _embedding_table(tokenizer, text_encoder, embeddings)
    chunked = [tokenize_weighted(tokenizer, text, limits.comma_backtrack, table) for text in texts]
    for chunks in chunked:
        _check_length(chunks, limits)
    count = max((len(chunks) for chunks in chunked), default=0)
    padded = [chunks + [[] for _ in range(count - len(chunks))] for chunks in chunked]
    return [_encode_chunks(tokenizer, text_encoder, chunks, clip_skip, device) for chunks in padded]


def encode_prompt_pair(
    tokenizer: Any,
    text_encoder: Any,
    prompt: str,
    negative: str,
    clip_skip: int = 1,
    limits: PromptLimits = PromptLimits(),
    device: torch.device | str | None = None,
    embeddings: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode prompt and negative prompt, padded to equal length (``encode_prompt_set`` of the two)."""
    cond, uncond = encode_prompt_set(tokenizer, text_encoder, [prompt, negative], clip_skip, limits, device, embeddings)
    return cond, uncond


def _encode_chunks_sdxl(
    tokenizer: Any,
    text_encoder: Any,
    chunks: list[list[tuple[Token, float]]],
    clip_skip: int,
    device: torch.device | str | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One SDXL encoder over every chunk: the weighted penultimate hidden states (``clip_skip`` k > 1:
    the (k+1)-th from the end; no final LayerNorm, as SDXL's conditioner and diffusers take them),
    [1, 77*n, hidden], and the projected pooled output of the first chunk (None for an encoder without
    a projection)."""
    ids, weights, vectors = _chunk_tensors(tokenizer, chunks)
    target = torch.device(device) if device is not None else text_encoder.device
    with torch.no_grad(), _vectors_in_place(text_encoder, vectors):
        output = text_encoder(input_ids=ids.to(target), output_hidden_states=True)
        z = _apply_weights(output.hidden_states[-(clip_skip + 1)], weights)
    pooled = getattr(output, "text_embeds", None)
    return z.reshape(1, -1, z.shape[-1]), (pooled[:1] if pooled is not None else None)


def encode_prompt_set_sdxl(
    encoders: Sequence[tuple[Any, Any]],
    texts: Sequence[str],
    clip_skip: int = 1,
    limits: PromptLimits = PromptLimits(),
    device: torch.device | str | None = None,
    embeddings: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """SDXL's A1111 encoding of several prompts: (embeddings, pooled) per text.

    ``encoders`` are (tokenizer, text encoder) pairs: SDXL base's two (CLIP ViT-L, OpenCLIP bigG),
    or the refiner's one (bigG). Every 75-token chunk (BREAK as in SD) goes through each encoder; each
    encoder's hidden states are weighted with A1111's rule (multiply, restore the chunk's mean) and
    the encoders' results are concatenated on the feature axis, as SDXL's conditioner does. The
    pooled embedding is the last encoder's, of the first chunk (A1111's), unweighted. Texts are padded
    with empty chunks to the longest, as ``encode_prompt_set`` does. ``embeddings``: per encoder, the
    textual-inversion vectors by name (``clip_l``, ``clip_g``), or None.
    """
    per_encoder = []
    tables = embeddings or [None] * len(encoders)
    for (tokenizer, text_encoder), vectors in zip(encoders, tables, strict=True):
        _check_clip_skip(text_encoder, clip_skip)
        table = _embedding_table(tokenizer, text_encoder, vectors)
        chunked = [tokenize_weighted(tokenizer, text, limits.comma_backtrack, table) for text in texts]
        for chunks in chunked:
            _check_length(chunks, limits)
        per_encoder.append(chunked)
    count = max((len(chunks) for chunked in per_encoder for chunks in chunked), default=0)
    out = []
    for i in range(len(texts)):
        parts, pooled = [], None
        for (tokenizer, text_encoder), chunked in zip(encoders, per_encoder, strict=True):
            chunks = chunked[i] + [[] for _ in range(count - len(chunked[i]))]
            z, pooled = _encode_chunks_sdxl(tokenizer, text_encoder, chunks, clip_skip, device)
            parts.append(z)
        out.append((torch.cat(parts, dim=-1), pooled))
    return out
