"""A request's prompts → the conditioning the sampling core reads at every denoiser call.

1. ``<lora:...>`` tags come out of the text and the job's embeddings are found (``ctx.networks``);
2. the positive prompt is split at ``AND`` into weighted parts; each part and the negative prompt
   are scheduled over the pass's sampling steps (``modules.prompt_schedule``: ``[from:to:when]``,
   ``[a|b]``), as A1111 does;
3. every distinct text is encoded once: SD 1.x / 2.x with A1111's weighting (``modules.prompts``),
   all padded with empty chunks to the longest; SDXL the same way on both of its encoders
   (``prompts.encode_prompt_set_sdxl``: each chunk through both, concatenated, pooled from the second);
4. the result is a ``sampling.Conditioning``: each part's schedule with its weight, and the
   negative prompt's schedule.

A plain prompt (no edits, no ``AND``) encodes exactly as before: one positive and one negative text.
"""

from __future__ import annotations

import torch

from modules import prompt_schedule, prompts
from modules.processing import sampling
from modules.processing.context import RunContext
from modules.schemas import RequestError


def encode(
    ctx: RunContext, prompt: str, negative: str, clip_skip: int, steps: int, base_steps: int | None = None
) -> sampling.Conditioning:
    """The conditioning of ``prompt`` / ``negative`` over a pass of ``steps`` sampling steps.

    ``base_steps``: the first pass's steps, when this is the hires fix's second pass (A1111 counts
    edit steps on from the first pass there).
    """
    embeddings = None
    if ctx.networks is not None:  # <lora:...> tags out of the text, those LoRAs on (modules/extra_networks.py)
        prompt, negative, embeddings = ctx.networks.prepare(prompt, negative)
    parts = [(prompt_schedule.prompt_schedule(text, steps, base_steps), weight)
             for text, weight in prompt_schedule.split_and(prompt)]
    negative_schedule = prompt_schedule.prompt_schedule(negative, steps, base_steps)
    positives = list(dict.fromkeys(text for schedule, _ in parts for _, text in schedule))
    negatives = list(dict.fromkeys(text for _, text in negative_schedule))
    if ctx.model.is_sdxl:
        encoded = _encode_sdxl(ctx, positives, negatives, clip_skip, embeddings)
    else:
        encoded = _encode_sd(ctx, positives, negatives, clip_skip, embeddings)

    def scheduled(schedule: list[tuple[int, str]], negative: bool) -> sampling.PromptSchedule:
        return sampling.PromptSchedule(tuple((end, encoded[(text, negative)]) for end, text in schedule))

    return sampling.Conditioning(
        tuple((scheduled(schedule, False), weight) for schedule, weight in parts),
        scheduled(negative_schedule, True),
    )


def _encode_sd(
    ctx: RunContext, positives: list[str], negatives: list[str], clip_skip: int, embeddings
) -> dict[tuple[str, bool], sampling.TextEmbedding]:
    """A1111-weighted embeddings of every text, padded to the same length (a text used both ways is encoded once)."""
    pipe = ctx.model.pipe
    texts = list(dict.fromkeys([*positives, *negatives]))
    try:
        tensors = prompts.encode_prompt_set(pipe.tokenizer, pipe.text_encoder, texts, clip_skip=clip_skip,
                                            device=pipe._execution_device, embeddings=embeddings)
    except prompts.PromptTooLong as err:
        raise RequestError(f"prompt: {err}") from None
    by_text = {text: sampling.TextEmbedding(tensor) for text, tensor in zip(texts, tensors, strict=True)}
    return {**{(t, False): by_text[t] for t in positives}, **{(t, True): by_text[t] for t in negatives}}


def sdxl_encoders(pipe) -> list[tuple]:
    """The (tokenizer, text encoder) pairs of an SDXL pipeline: base's two, a refiner's one (the second)."""
    pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)),
             (pipe.tokenizer_2, pipe.text_encoder_2)]
    return [(tokenizer, encoder) for tokenizer, encoder in pairs if encoder is not None]


def split_sdxl_embeddings(encoders: list[tuple], embeddings: dict[str, torch.Tensor] | None) -> list | None:
    """Textual-inversion vectors [n, clip_l + clip_g] (``extra_networks.sdxl_vectors``) cut into each
    encoder's part, in the encoders' order."""
    if not embeddings:
        return None
    parts, start = [], 0
    for _, encoder in encoders:
        width = encoder.get_input_embeddings().embedding_dim
        parts.append({name: rows[:, start:start + width] for name, rows in embeddings.items()})
        start += width
    return parts


@torch.no_grad()
def encode_sdxl_texts(pipe, texts: list[str], clip_skip: int,
                      embeddings: dict[str, torch.Tensor] | None = None) -> dict[str, sampling.TextEmbedding]:
    """A1111-weighted SDXL embeddings (both encoders, or a refiner's one) and pooled ones, by text;
    ``embeddings``: textual inversion, each name's vectors for all the encoders side by side."""
    encoders = sdxl_encoders(pipe)
    try:
        encoded = prompts.encode_prompt_set_sdxl(encoders, texts, clip_skip=clip_skip, device=pipe._execution_device,
                                                 embeddings=split_sdxl_embeddings(encoders, embeddings))
    except prompts.PromptTooLong as err:
        raise RequestError(f"prompt: {err}") from None
    return {text: sampling.TextEmbedding(tokens, pooled) for text, (tokens, pooled) in zip(texts, encoded, strict=True)}


def _encode_sdxl(
    ctx: RunContext, positives: list[str], negatives: list[str], clip_skip: int, embeddings
) -> dict[tuple[str, bool], sampling.TextEmbedding]:
    """SDXL's two encoders with A1111's weighting and BREAK (``prompts.encode_prompt_set_sdxl``) and
    clip_l / clip_g embeddings, every text padded to the same length (a text used both ways is encoded once)."""
    texts = list(dict.fromkeys([*positives, *negatives]))
    by_text = encode_sdxl_texts(ctx.model.pipe, texts, clip_skip, embeddings)
    return {**{(t, False): by_text[t] for t in positives}, **{(t, True): by_text[t] for t in negatives}}
