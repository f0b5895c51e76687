"""What every generation tab shares: its named fields, output panel and the common events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from webui import controlnet_units, runner
from webui.hints import size_warning
from webui.tokens import counter_html
from webui.widgets import Fields, OutputPanel, SeedRow, infotext_updates, named_values, reuse_seed


@dataclass
class GenerationTab:
    """A built generation tab. ``fields`` maps request field names to components; ``image`` is
    the component that receives images sent from other tabs (None for txt2img); ``units`` is its
    ControlNet units widget (a ``webui.controlnet_units.UnitsUI``), if it has one."""

    name: str
    fields: Fields
    panel: OutputPanel
    seed: SeedRow
    read_params: gr.Button
    image: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    units: Any = None
    counters: dict[str, Any] = field(default_factory=dict)  # prompt field name -> its token counter
    size_warning: Any = None  # the line under the size sliders (webui.widgets.size_warning_line)
    send_keeps: tuple[str, ...] = ()  # fields that parameters sent from another tab leave as they are

    def field_values(self, values: dict[str, Any]) -> dict[str, Any]:
        """The request fields among a handler's ``{name: value}`` (which also holds its extra inputs)."""
        return {name: value for name, value in values.items() if name in self.fields}

    def infotext_outputs(self) -> list:
        """The components an infotext fills: the request fields and the ControlNet units' fields."""
        return [*self.fields.values(), *(self.units.infotext_outputs() if self.units else [])]

    def sent_updates(self, text: str) -> dict:
        """``infotext_updates`` for parameters sent from another tab: ``send_keeps`` left out."""
        kept = {self.fields[name] for name in self.send_keeps if name in self.fields}
        return {comp: value for comp, value in self.infotext_updates(text).items() if comp not in kept}

    def infotext_updates(self, text: str) -> dict:
        """``{component: value}`` for everything of the tab that the infotext sets."""
        updates = infotext_updates(self.fields, text)
        if self.units:
            updates.update(self.units.infotext_updates(text))
        return updates


def bind_common(tab: GenerationTab, services, make_batch: Callable[[dict[str, Any]], runner.Batch],
                extra_inputs: Fields | None = None) -> None:
    """Generate (streams the job), Interrupt/Skip, gallery select, seed buttons, read parameters.

    ``make_batch(values)`` gets ``{name: value}`` for ``tab.fields`` plus ``extra_inputs`` and
    returns the jobs to submit (a :class:`runner.Batch`); with ControlNet units, the values hold
    theirs too (``tab.units.build(values)`` makes them) and their own buttons are wired here.
    """
    named = {**tab.fields, **(extra_inputs or {}), **(tab.units.inputs() if tab.units else {})}

    def on_generate(data: dict):
        values = named_values(named, data)
        yield from runner.stream_jobs(services, tab.panel, lambda: make_batch(values))

    tab.panel.generate.click(on_generate, inputs=set(named.values()), outputs=tab.panel.job_outputs(),
                             concurrency_limit=None, show_progress="hidden")
    runner.bind_panel(services, tab.panel)
    tab.seed.random_button.click(lambda: -1, outputs=[tab.fields["seed"]], queue=False)
    tab.seed.reuse_button.click(reuse_seed, inputs=[tab.panel.seeds, tab.panel.selected],
                                outputs=[tab.fields["seed"]], queue=False)
    if tab.units:
        controlnet_units.bind_units(tab.units, services)

    def read_params(text: str, infotexts: list[str], selected: int):
        if not (text or "").strip():  # an empty prompt: restore the last generation shown here
            text = infotexts[min(max(selected or 0, 0), len(infotexts) - 1)] if infotexts else ""
            if not text:
                gr.Info("Nothing to restore yet: generate once, or paste an infotext into the prompt.")
        return tab.infotext_updates(text) or {tab.fields["prompt"]: gr.update()}

    tab.read_params.click(read_params, inputs=[tab.fields["prompt"], tab.panel.infotexts, tab.panel.selected],
                          outputs=tab.infotext_outputs(), show_progress="hidden")  # queued: its toast needs it
    bind_token_counters(tab)
    bind_size_warning(tab, services)


def bind_size_warning(tab: GenerationTab, services) -> None:
    """The size warning follows width and height (against the selected checkpoint's native size)."""
    if tab.size_warning is None:
        return
    inputs = [tab.fields["width"], tab.fields["height"]]
    for slider in inputs:
        slider.change(lambda w, h: size_warning(w, h, services.native_size()), inputs=inputs,
                      outputs=[tab.size_warning], queue=False, show_progress="hidden", trigger_mode="always_last")


def bind_token_counters(tab: GenerationTab) -> None:
    """Each prompt box's ``n/75`` follows its text (and the steps, which scheduled prompts depend on)."""
    steps = tab.fields.get("steps")
    for name, counter in tab.counters.items():
        box = tab.fields[name]
        inputs = [box, steps] if steps is not None else [box]
        for trigger in (box.change, *([steps.change] if steps is not None else [])):
            trigger(lambda text, n=20: counter_html(text, n), inputs=inputs, outputs=[counter], queue=False,
                    show_progress="hidden", trigger_mode="always_last")
