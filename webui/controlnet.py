"""The ControlNet tab: the units open on top, with a txt2img generation under them.

It is the txt2img tab built a second time with the prefix "controlnet" and ``controlnet_first``:
the same prompt row, settings, hires fix, X/Y plot, output panel and request building, so nothing
is written twice. The units widget itself (webui/controlnet_units.py) is the one txt2img, img2img
and inpaint show in their "ControlNet" accordion. Its jobs are txt2img jobs and save where
txt2img saves.
"""

from __future__ import annotations

from webui import txt2img
from webui.tab import GenerationTab

PREFIX = "controlnet"


def create_ui(services) -> GenerationTab:
    """Build the tab (call inside a ``gr.Tab``); elem ids start with ``controlnet_``."""
    return txt2img.create_ui(services, prefix=PREFIX, controlnet_first=True)


def bind_events(tab: GenerationTab, services) -> None:
    """Generate with the units, Preview, New canvas, model refresh and the txt2img buttons."""
    txt2img.bind_events(tab, services)
