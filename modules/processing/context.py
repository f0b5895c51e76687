"""What a processing routine is handed: the model it runs on, settings, saver and job hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modules.config import Settings
from modules.jobs import CancelToken, ProgressSink
from modules.model_loading import LoadedModel


@dataclass
class RunContext:
    model: LoadedModel | None  # None for jobs that use no model (extras)
    settings: Settings
    saver: Any  # modules.images.ImageSaver, or None to never save
    token: CancelToken = field(default_factory=CancelToken)
    progress: ProgressSink = field(default_factory=ProgressSink)
    version: str = "easel"
    # where ControlNet units find their models: controlnet_infos() and use_controlnet(title), a
    # context manager yielding the model locked on the device (Services; None: no ControlNets)
    controlnets: Any = None
    # the job's LoRAs and embeddings (modules.extra_networks.JobNetworks; None: prompts used as written)
    networks: Any = None
