"""What a processing routine is handed: the model it runs on, settings, saver and job hooks."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from modules.config import Settings
from modules.controlnet.models import ControlNetInfo, LoadedControlNet
from modules.extra_networks import JobNetworks
from modules.hooks import HookRegistry
from modules.images import ImageSaver
from modules.jobs import CancelToken, ProgressSink
from modules.model_loading import LoadedModel


class ControlNetSource(Protocol):
    """Where ControlNet units find their models (``Services``)."""

    def controlnet_infos(self) -> list[ControlNetInfo]:
        """The installed ControlNets."""

    def use_controlnet(self, title: str, field: str = ...) -> AbstractContextManager[LoadedControlNet]:
        """The ControlNet ``title`` names, locked on the compute device for the block."""


class RefinerSource(Protocol):
    """Where a run finds its refiner checkpoint (``Services``)."""

    def use_refiner(self, name: str) -> AbstractContextManager[LoadedModel]:
        """The checkpoint ``name`` from the model cache, locked on the compute device for the block."""

    def refiner_title(self, name: str) -> str:
        """Its title (``name [hash]``) for the infotext."""

    def to_device(self, model: LoadedModel) -> None:
        """The job's model or the refiner on the compute device now (the other may be offloaded)."""


@dataclass
class RunContext:
    model: LoadedModel | None  # None for jobs that use no model (extras)
    settings: Settings
    saver: ImageSaver | None  # None: never save
    token: CancelToken = field(default_factory=CancelToken)
    progress: ProgressSink = field(default_factory=ProgressSink)
    version: str = "easel"
    controlnets: ControlNetSource | None = None  # None: no ControlNets
    networks: JobNetworks | None = None  # the job's LoRAs and embeddings; None: prompts used as written
    hooks: HookRegistry = field(default_factory=HookRegistry)  # extensions' hook points (Services.hooks)
    refiners: RefinerSource | None = None  # None: no refiner can be used
