"""The X/Y plot script's plan: one job per cell, varying two request fields, shown as a labelled grid.

The web UI's accordion (``webui/xyplot.py``) and the API's "x/y/z plot" script both plan with it.

Exactly the comparison Stable Diffusion courses show: the same prompt, columns = sampler,
rows = CFG scale. Values are comma-separated (double quotes keep a comma inside a value). A
random seed is fixed once for the whole grid, so the cells differ only in what the axes vary.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modules import samplers
from modules.batches import Batch, Shown
from modules.images import labelled_grid
from modules.schemas import MAX_SEED, GenerationRequest, GenerationResult, RequestError, parse_request


def _text(value: str) -> str:
    return value


def _int(value: str) -> int:
    return int(float(value))


AXES: dict[str, tuple[str | None, Callable[[str], Any]]] = {
    # label: (request field, converter); "Prompt S/R" is handled apart
    "Nothing": (None, _text),
    "Sampler": ("sampler_name", _text),
    "Schedule type": ("scheduler", _text),
    "CFG Scale": ("cfg_scale", float),
    "Steps": ("steps", _int),
    "Seed": ("seed", _int),
    "Checkpoint": ("sd_model_checkpoint", _text),
    "Denoising": ("denoising_strength", float),
    "Token merging ratio": ("token_merging_ratio", float),
    "Prompt S/R": ("prompt", _text),
}


class XYPlotError(RequestError):
    """An axis has values that cannot be used; the message names the axis and the value."""


def split_values(text: str) -> list[str]:
    """``'a, "b, c", d'`` -> ``['a', 'b, c', 'd']`` (empty entries dropped)."""
    row = next(csv.reader([text or ""], skipinitialspace=True), [])
    return [v.strip() for v in row if v.strip()]


@dataclass
class Axis:
    label: str
    values: list[str]

    def updates(self, base: GenerationRequest, services) -> list[dict[str, Any]]:
        """One ``{field: value}`` update per value, checked now (not when the job runs)."""
        if self.label not in AXES:
            raise XYPlotError(f"X/Y plot: unknown axis {self.label!r}; choose one of {', '.join(AXES)}")
        name, convert = AXES[self.label]
        if name is None:
            return [{}]
        if not self.values:
            raise XYPlotError(f"X/Y plot: axis {self.label!r} has no values; enter them comma-separated")
        if self.label == "Prompt S/R":
            search = self.values[0]
            if search not in base.prompt and search not in base.negative_prompt:
                raise XYPlotError(f"X/Y plot: Prompt S/R: the first value {search!r} is not in the prompt")
            return [{"prompt": base.prompt.replace(search, v), "negative_prompt": base.negative_prompt.replace(search, v)}
                    for v in self.values]
        out = []
        for value in self.values:
            try:
                converted = convert(value)
                if name == "sampler_name":
                    samplers.get_sampler(converted)
                elif name == "scheduler":
                    labels = [item["label"] for item in samplers.scheduler_list()]
                    if converted not in labels:
                        raise ValueError(f"not a schedule type; choose one of {', '.join(labels)}")
                elif name == "sd_model_checkpoint":
                    services.checkpoints.get(converted)
            except ValueError as err:
                raise XYPlotError(f"X/Y plot: {self.label} value {value!r} cannot be used: {err}") from None
            out.append({name: converted})
        return out

    def labels(self) -> list[str]:
        if AXES.get(self.label, (None,))[0] is None:
            return []
        return [f"{self.label}: {v}" for v in self.values]


def fixed_seeds(base: GenerationRequest, rng: random.Random | None = None) -> dict[str, int]:
    """A random seed (-1) chosen once, so every cell uses the same one."""
    rng = rng or random.Random()
    return {name: (getattr(base, name) if getattr(base, name) >= 0 else rng.randint(0, MAX_SEED))
            for name in ("seed", "subseed")}


def plan_batch(kind: str, base: GenerationRequest, script: dict[str, Any], services) -> Batch:
    """The grid's jobs, row by row (Y outer, X inner), and how to show them."""
    x = Axis(script.get("xy_x_type") or "Nothing", split_values(script.get("xy_x_values", "")))
    y = Axis(script.get("xy_y_type") or "Nothing", split_values(script.get("xy_y_values", "")))
    data = {**base.model_dump(), **fixed_seeds(base)}
    requests = []
    for y_update in y.updates(base, services):
        for x_update in x.updates(base, services):
            requests.append((kind, parse_request(type(base), {**data, **y_update, **x_update})))
    rows, cols = y.labels(), x.labels()
    return Batch(requests, lambda results: show_grid(results, rows, cols))


def show_grid(results: list[GenerationResult], rows: list[str], cols: list[str]) -> Shown:
    """The labelled grid of each cell's first image, followed by every image of every cell."""
    firsts = [r.images[0] for r in results if r.images]
    shown = Shown([], [], [])
    if len(firsts) == len(results):
        shown.images.append(labelled_grid(firsts, rows, cols))
        shown.infotexts.append(results[0].infotexts[0])
        shown.seeds.append(results[0].seeds[0])
    for r in results:
        shown.images.extend(r.images)
        shown.infotexts.extend(r.infotexts)
        shown.seeds.extend(r.seeds)
    return shown
