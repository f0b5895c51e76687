"""The prompt boxes' token counter, A1111's ``12/75``: the tokens of the longest text the prompt
encodes to, out of the chunks of 75 they fill.

It counts as the sampling core will: extra-network tags (``<lora:...>``) are taken out, each
``AND`` part and each text of the prompt's schedule (``[from:to:when]``, ``[a|b]``) is counted
on its own and the longest wins, weights and ``BREAK`` are parsed, and chunks are cut with
A1111's comma backtrack. The tokenizer is the CLIP tokenizer Easel ships and builds every
pipeline with (``modules.model_loading.make_tokenizer``), so the count is the loaded model's.
A textual-inversion name counts as the words it is spelled with, not as its vectors.
"""

from __future__ import annotations

import html
from functools import cache
from typing import Any

from modules.prompt_schedule import prompt_schedule, split_and
from modules.prompts import CHUNK_TOKENS, parse_extra_networks, tokenize_weighted


@cache
def shipped_tokenizer() -> Any:
    from modules.model_loading import make_tokenizer

    return make_tokenizer()


def count_tokens(text: str, steps: int = 20, tokenizer: Any = None) -> tuple[int, int]:
    """(tokens, chunks) of the longest text ``text`` encodes to over ``steps`` steps; an empty
    prompt is (0, 1)."""
    tokenizer = tokenizer or shipped_tokenizer()
    plain, _tags = parse_extra_networks(text or "")
    best = (0, 1)
    for part, _weight in split_and(plain):
        for _end, scheduled in prompt_schedule(part, max(int(steps or 1), 1)):
            chunks = tokenize_weighted(tokenizer, scheduled)
            best = max(best, (sum(len(chunk) for chunk in chunks), len(chunks)))
    return best


def counter_html(text: str, steps: int = 20) -> str:
    """The counter shown over a prompt box: ``12/75``, or ``80/150`` with the chunk count in its title."""
    tokens, chunks = count_tokens(text, steps)
    title = f"{tokens} tokens in {chunks} chunk(s) of {CHUNK_TOKENS}"
    over = " easel-token-counter-multi" if chunks > 1 else ""
    return (f"<span class='easel-token-counter{over}' title='{html.escape(title)}'"
            f" data-tokens='{tokens}' data-chunks='{chunks}'>{tokens}/{chunks * CHUNK_TOKENS}</span>")
