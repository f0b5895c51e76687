"""Typed requests and results, with AUTOMATIC1111's field names and meanings.

Every client (CLI, web UI, HTTP API) builds one of these from named fields and hands it to the
job queue; the processing routines take it and return a ``GenerationResult``. Unknown fields are
ignored (as A1111's API does); wrongly typed or out-of-range fields fail validation with the
field named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_SEED = 2**32 - 1


class RequestError(ValueError):
    """A request cannot be run as given; the message says which field and what would be right."""


def describe_validation_error(err: ValidationError) -> str:
    """One line naming each bad field, e.g. ``width: must be a multiple of 8 (got 100)``."""
    parts = []
    for e in err.errors():
        where = ".".join(str(x) for x in e["loc"]) or "request"
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


class GenerationRequest(BaseModel):
    """Fields shared by every generation mode (A1111's StableDiffusionProcessing)."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 = random")
    subseed: int = Field(-1, ge=-1, le=MAX_SEED, description="variation seed, -1 = random")
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_h: int = Field(-1, ge=-1)
    seed_resize_from_w: int = Field(-1, ge=-1)
    sampler_name: str | None = Field(None, description="None: the default sampler from the settings")
    sampler_index: str | None = Field(None, description="old name of sampler_name, still accepted")
    scheduler: str | None = Field(None, description="schedule type: Automatic, Uniform, Karras, ...")
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=100, description="batch count")
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0)
    width: int | None = Field(None, ge=8, le=8192, description="None: the model's native size")
    height: int | None = Field(None, ge=8, le=8192, description="None: the model's native size")
    clip_skip: int = Field(1, ge=1, le=12)
    sd_model_checkpoint: str | None = Field(None, description="run on this checkpoint (queued switch)")
    save_images: bool = True
    send_images: bool = True
    override_settings: dict[str, Any] = Field(default_factory=dict)
    override_settings_restore_afterwards: bool = True

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int | None) -> int | None:
        if v is not None and v % 8:
            raise ValueError(f"must be a multiple of 8 (got {v}; nearest: {max(8, round(v / 8) * 8)})")
        return v

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _sane_length(cls, v: str) -> str:
        if len(v) > 20_000:
            raise ValueError(f"is {len(v)} characters long; at most 20000 are accepted")
        return v

    def effective_sampler(self, default: str) -> str:
        return self.sampler_name or self.sampler_index or default


class Txt2ImgRequest(GenerationRequest):
    """A1111's txt2img: the shared fields (hires fix comes with the edit-modes work)."""

    mode: str = Field("txt2img", frozen=True)


def parse_request(cls: type[BaseModel], data: dict[str, Any]) -> Any:
    """Validate ``data`` into ``cls``; a bad field raises RequestError naming it."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise RequestError(describe_validation_error(err)) from None


@dataclass
class GenerationResult:
    """What a generation returns: images, their infotexts and seeds, and where they were saved."""

    images: list[Any]
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    model_name: str
    model_hash: str | None
    width: int
    height: int
    sampler_name: str
    scheduler: str
    paths: list[Path] = field(default_factory=list)
    skipped: int = 0

    def info(self) -> dict[str, Any]:
        """The ``info`` object of A1111's API response (serialised to JSON by the API)."""
        return {
            "prompt": self.prompts[0] if self.prompts else "",
            "all_prompts": self.prompts,
            "negative_prompt": self.negative_prompts[0] if self.negative_prompts else "",
            "all_negative_prompts": self.negative_prompts,
            "seed": self.seeds[0] if self.seeds else -1,
            "all_seeds": self.seeds,
            "subseed": self.subseeds[0] if self.subseeds else -1,
            "all_subseeds": self.subseeds,
            "width": self.width,
            "height": self.height,
            "sampler_name": self.sampler_name,
            "scheduler": self.scheduler,
            "sd_model_name": self.model_name,
            "sd_model_hash": self.model_hash,
            "infotexts": self.infotexts,
        }
