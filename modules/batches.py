"""A group of generation jobs submitted together (one Generate press, one X/Y grid), and how their
results are shown: the web UI's gallery and the API's answer read the same ``Shown``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modules.schemas import GenerationResult


@dataclass
class Shown:
    """What the gallery shows after a run: images with one infotext and one seed each."""

    images: list[Any]
    infotexts: list[str]
    seeds: list[int]


def shown_from_results(results: list[GenerationResult]) -> Shown:
    """All images of all results, in order."""
    shown = Shown([], [], [])
    for result in results:
        shown.images.extend(result.images)
        shown.infotexts.extend(result.infotexts)
        shown.seeds.extend(result.seeds)
    return shown


@dataclass
class Batch:
    """The jobs one Generate press submits, and how their results are shown."""

    requests: list[tuple[str, Any]]  # (job kind, typed request)
    show: Callable[[list[GenerationResult]], Shown] = shown_from_results
