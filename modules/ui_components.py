"""A1111's ``modules.ui_components`` for extensions' ``ui()``: plain Gradio layouts under A1111's names.

``InputAccordion(value, label=...)`` is used as ``with InputAccordion(False, label="X") as enabled:``;
``enabled`` is a checkbox (the script's arg) inside an accordion that holds the rest.
"""

from __future__ import annotations

from typing import Any

import gradio as gr


def FormRow(**kwargs: Any) -> gr.Row:  # noqa: N802 - A1111's class names
    return gr.Row(**kwargs)


def FormColumn(**kwargs: Any) -> gr.Column:  # noqa: N802
    return gr.Column(**kwargs)


def FormGroup(**kwargs: Any) -> gr.Group:  # noqa: N802
    return gr.Group(**kwargs)


def FormHTML(*args: Any, **kwargs: Any) -> gr.HTML:  # noqa: N802
    return gr.HTML(*args, **kwargs)


def ToolButton(value: str = "", **kwargs: Any) -> gr.Button:  # noqa: N802
    kwargs.pop("tooltip", None)
    return gr.Button(value, min_width=40, scale=0, **kwargs)


def ResizeHandleRow(**kwargs: Any) -> gr.Row:  # noqa: N802
    return gr.Row(**kwargs)


def DropdownMulti(**kwargs: Any) -> gr.Dropdown:  # noqa: N802
    return gr.Dropdown(multiselect=True, **kwargs)


class InputAccordion:
    """A checkbox (the value) and an accordion holding what the ``with`` block builds."""

    def __init__(self, value: bool, label: str = "", elem_id: str | None = None, **kwargs: Any) -> None:
        self.value, self.label, self.elem_id = bool(value), label, elem_id
        self.accordion = gr.Accordion(label, open=bool(value), elem_id=elem_id)
        self.checkbox: gr.Checkbox | None = None

    def __enter__(self) -> gr.Checkbox:
        self.accordion.__enter__()
        self.checkbox = gr.Checkbox(value=self.value, label=f"Enable {self.label}".strip(),
                                    elem_id=f"{self.elem_id}-checkbox" if self.elem_id else None)
        return self.checkbox

    def __exit__(self, *exc: Any) -> None:
        self.accordion.__exit__(*exc)
