"""The X/Y plot script's accordion; the planning (axes, cells, the labelled grid) is ``modules.xyplot``."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.xyplot import AXES, XYPlotError, plan_batch

__all__ = ["AXES", "XYPlotError", "create_ui", "plan_batch"]


def create_ui(prefix: str, services, axes: tuple[str, ...] = tuple(AXES)) -> dict[str, Any]:
    """The script accordion; its components keyed by script field name (``xy_*``)."""
    with gr.Accordion("Script: X/Y plot", open=False, elem_id=f"{prefix}_xyplot"):
        enabled = gr.Checkbox(label="Enable X/Y plot", value=False, elem_id=f"{prefix}_xy_enabled")
        with gr.Row():
            x_type = gr.Dropdown(list(axes), value="Sampler", label="X type", elem_id=f"{prefix}_xy_x_type")
            x_values = gr.Textbox(label="X values", placeholder="Euler a, DPM++ 2M", elem_id=f"{prefix}_xy_x_values")
        with gr.Row():
            y_type = gr.Dropdown(list(axes), value="CFG Scale", label="Y type", elem_id=f"{prefix}_xy_y_type")
            y_values = gr.Textbox(label="Y values", placeholder="5, 7, 9", elem_id=f"{prefix}_xy_y_values")
    return {"xy_enabled": enabled, "xy_x_type": x_type, "xy_x_values": x_values,
            "xy_y_type": y_type, "xy_y_values": y_values}
