"""A1111's scheduled prompts: prompt editing, alternation and composable ``AND``, as plain text.

This is the text side only (no torch); ``processing.conditioning`` encodes what it returns.

1. ``split_and``: ``"a cat AND a dog :1.2"`` → ``[("a cat", 1.0), (" a dog", 1.2)]``, A1111's
   ``get_multicond_prompt_list`` rule: split at every whole word ``AND``; a trailing ``:number``
   is the part's weight (anything else after a colon is text, weight 1).
2. ``prompt_schedule``: one part's text at every step, as ``[(end_at_step, text), ...]``, A1111's
   ``get_learned_conditioning_prompt_schedules`` with its grammar:

   - ``[from:to:when]`` is ``from`` up to step ``when``, then ``to``; ``[to:when]`` adds ``to``
     after ``when``; ``[from::when]`` removes ``from`` after it. ``when`` with a ``.`` is a
     fraction of the steps (``0.25``), without one a step number (``5``); it is truncated to a
     whole step and capped at the step count. Edits nest.
   - ``[a|b|c]`` alternates per step (``a`` at step 1, ``b`` at 2, ...); an empty option is "".
   - ``(...)``, ``(...:w)`` and ``[...]`` are kept in the text for the weighting parser.
   - Unbalanced brackets at the top level are kept as literal text; text the grammar cannot
     parse at all (``|`` outside brackets, say) is used as written, unscheduled: never an error.

   In the hires fix's second pass A1111 counts on from the first pass: a fraction ``1.5`` is half
   way through the second pass, a step number is counted from the first pass's start
   (``hires_steps``).

A step here is one of A1111's denoiser calls: ``entry_at`` picks the text for call ``n`` (from 0)
as A1111's ``reconstruct_cond_batch`` does (the first entry whose end is at or after ``n``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
_WHITESPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)")
_STRAY = re.compile(r"[\[\]():]+")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """The ``AND`` parts of a positive prompt with their weights (A1111's composable diffusion)."""
    parts = []
    for sub in _AND.split(prompt):
        match = _WEIGHT.search(sub)
        text, weight = match.groups() if match is not None else (sub, None)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


# --------------------------------------------------------------------------- the grammar
# A parse is a tree of nodes; each node renders to text at a given step.


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Seq:
    items: tuple


@dataclass(frozen=True)
class _Edit:  # [before:after:when]
    before: _Seq | None
    after: _Seq
    when: str  # the number as written


@dataclass(frozen=True)
class _Alternate:  # [a|b|c]
    options: tuple


class _NoParse(Exception):
    """The text does not fit the grammar here (the caller tries another reading)."""


class _Parser:
    """Recursive descent over A1111's grammar, trying its readings in turn at each bracket:

    start:     (prompt | stray brackets)*
    prompt:    (emphasized | scheduled | alternate | plain | whitespace)*
    emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled: "[" [prompt ":"] prompt ":" [ws] NUMBER [ws] "]"
    alternate: "[" prompt ("|" [prompt])+ "]"
    """

    def __init__(self, text: str) -> None:
        self.text = text

    def start(self) -> _Seq:
        items: list = []
        pos = 0
        while pos < len(self.text):
            seq, end = self.prompt(pos)
            if end > pos:
                items.append(seq)
                pos = end
                continue
            stray = _STRAY.match(self.text, pos)
            if stray is None:
                raise _NoParse(pos)
            items.append(_Text(stray.group(0)[:1]))  # one at a time: a bracket may open a construct after it
            pos += 1
        return _Seq(tuple(items))

    def prompt(self, pos: int) -> tuple[_Seq, int]:
        """The longest run of prompt items from ``pos`` (possibly empty)."""
        items: list = []
        while pos < len(self.text):
            item = self.item(pos)
            if item is None:
                break
            node, pos = item
            items.append(node)
        return _Seq(tuple(items)), pos

    def item(self, pos: int):
        text = self.text
        for pattern in (_PLAIN, _WHITESPACE):
            match = pattern.match(text, pos)
            if match:
                return _Text(match.group(0)), match.end()
        if text[pos] == "(":
            return self.emphasized_round(pos)
        if text[pos] == "[":
            for reading in (self.scheduled, self.alternate, self.emphasized_square):
                try:
                    return reading(pos)
                except _NoParse:
                    continue
        return None

    def expect(self, pos: int, char: str) -> int:
        if pos < len(self.text) and self.text[pos] == char:
            return pos + 1
        raise _NoParse(pos)

    def emphasized_round(self, pos: int):
        inner, end = self.prompt(pos + 1)
        if end < len(self.text) and self.text[end] == ")":
            return _Seq((_Text("("), inner, _Text(")"))), end + 1
        if end < len(self.text) and self.text[end] == ":":
            weight, close = self.prompt(end + 1)
            if close < len(self.text) and self.text[close] == ")":
                return _Seq((_Text("("), inner, _Text(":"), weight, _Text(")"))), close + 1
        return None

    def emphasized_square(self, pos: int):
        inner, end = self.prompt(pos + 1)
        return _Seq((_Text("["), inner, _Text("]"))), self.expect(end, "]")

    def scheduled(self, pos: int):
        first, end = self.prompt(pos + 1)
        end = self.expect(end, ":")
        when = self.number(end)
        if when is not None:  # [after:when]
            return _Edit(None, first, when[0]), when[1]
        second, end = self.prompt(end)
        end = self.expect(end, ":")
        when = self.number(end)
        if when is None:
            raise _NoParse(end)
        return _Edit(first, second, when[0]), when[1]

    def number(self, pos: int) -> tuple[str, int] | None:
        """``[ws] NUMBER [ws] "]"`` from ``pos``: (the number as written, the end), or None."""
        ws = _WHITESPACE.match(self.text, pos)
        pos = ws.end() if ws else pos
        number = _NUMBER.match(self.text, pos)
        if number is None:
            return None
        end = number.end()
        ws = _WHITESPACE.match(self.text, end)
        end = ws.end() if ws else end
        if end < len(self.text) and self.text[end] == "]":
            return number.group(0), end + 1
        return None

    def alternate(self, pos: int):
        options = []
        option, end = self.prompt(pos + 1)
        options.append(option)
        if end >= len(self.text) or self.text[end] != "|":
            raise _NoParse(end)
        while end < len(self.text) and self.text[end] == "|":
            option, end = self.prompt(end + 1)
            options.append(option)
        return _Alternate(tuple(options)), self.expect(end, "]")


def _edit_step(when: str, steps: int, base_steps: int | None) -> int:
    """A ``when`` as a step: A1111's rule (fraction with a ``.``, else a step; truncated; capped)."""
    value = float(when)
    if "." in when:
        value = (value - (1.0 if base_steps is not None else 0.0)) * steps
    else:
        value = value - (base_steps or 0)
    return min(steps, int(value))


def _collect_steps(node, steps: int, base_steps: int | None, out: set[int]) -> None:
    if isinstance(node, _Seq):
        for item in node.items:
            _collect_steps(item, steps, base_steps, out)
    elif isinstance(node, _Edit):
        when = _edit_step(node.when, steps, base_steps)
        if when >= 1:
            out.add(when)
        if node.before is not None:
            _collect_steps(node.before, steps, base_steps, out)
        _collect_steps(node.after, steps, base_steps, out)
    elif isinstance(node, _Alternate):
        out.update(range(1, steps + 1))
        for option in node.options:
            _collect_steps(option, steps, base_steps, out)


def _render(node, step: int, steps: int, base_steps: int | None) -> str:
    if isinstance(node, _Text):
        return node.text
    if isinstance(node, _Seq):
        return "".join(_render(item, step, steps, base_steps) for item in node.items)
    if isinstance(node, _Edit):
        if step <= _edit_step(node.when, steps, base_steps):
            return _render(node.before, step, steps, base_steps) if node.before is not None else ""
        return _render(node.after, step, steps, base_steps)
    options = node.options
    return _render(options[(step - 1) % len(options)], step, steps, base_steps)


def prompt_schedule(prompt: str, steps: int, base_steps: int | None = None) -> list[tuple[int, str]]:
    """``[(end_at_step, text), ...]`` for one prompt over ``steps`` steps (see the module docstring).

    ``base_steps``: the first pass's steps when this is the hires fix's second pass of ``steps``.
    """
    try:
        tree = _Parser(prompt).start()
    except _NoParse:
        return [(steps, prompt)]
    ends: set[int] = {steps}
    _collect_steps(tree, steps, base_steps, ends)
    return [(end, _render(tree, end, steps, base_steps)) for end in sorted(ends)]


def is_static(prompt: str) -> bool:
    """Whether the text is the same at every step (no edit, no alternation that parses)."""
    try:
        tree = _Parser(prompt).start()
    except _NoParse:
        return True
    ends: set[int] = set()
    _collect_steps(tree, 2, None, ends)
    return not ends and not _has_edit(tree)


def _has_edit(node) -> bool:
    if isinstance(node, (_Edit, _Alternate)):
        return True
    return isinstance(node, _Seq) and any(_has_edit(item) for item in node.items)


def entry_at(schedule: list[tuple[int, object]], step: int) -> int:
    """The index of the entry in force at denoiser call ``step`` (from 0), A1111's rule."""
    for index, (end, _) in enumerate(schedule):
        if step <= end:
            return index
    return 0
