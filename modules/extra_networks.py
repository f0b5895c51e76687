"""Extra networks for one job: ``<lora:name:w>`` tags and textual-inversion embeddings (A1111's).

``ExtraNetworks`` holds the LoRA and embedding libraries (one per ``Services``). The worker runs
each job inside ``ExtraNetworks.for_job(model)``; its ``JobNetworks`` is the job's
``RunContext.networks``. When the job encodes its prompts (``processing.conditioning.encode``):

1. the ``<lora:...>`` tags of the prompt and of the negative prompt are taken out of the text;
2. on the first call those LoRAs are loaded into the model with their weights (the same LoRA
   named twice: the weights add up, as in A1111); a later call of the same job (hires prompt)
   must name the same LoRAs;
3. the embeddings of the ``embeddings`` folder that fit the text encoder are handed to the
   encoder; naming one that does not fit, or an unreadable file, is a RequestError.

When the job ends, however it ends, every LoRA layer is taken out of the model again: the worker
holds the model's lock all along, so no other job ever sees them. The infotext gets A1111's
``Lora hashes`` and ``TI hashes`` for the networks the job used; its prompt keeps the tags.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from modules import prompts
from modules.embeddings import Embedding, EmbeddingLibrary
from modules.lora import LoraError, LoraLibrary, LoraUse, apply_loras, parse_lora_args, remove_loras
from modules.schemas import RequestError

SUPPORTED_KINDS = ("lora",)


@dataclass
class ExtraNetworks:
    """The LoRA files and the embeddings the jobs can use."""

    loras: LoraLibrary
    embeddings: EmbeddingLibrary

    @contextmanager
    def for_job(self, model: Any) -> Iterator[JobNetworks]:
        """The job's networks on ``model``; every LoRA is taken out of it when the job ends."""
        job = JobNetworks(self, model)
        try:
            yield job
        finally:
            job.close()


def _hash_list(pairs: list[tuple[str, str]]) -> str:
    """A1111's ``name: hash, name2: hash2`` (``:`` and ``,`` dropped from names so it reads back)."""
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {short}" for name, short in pairs)


class JobNetworks:
    """The extra networks of one job on one model (``RunContext.networks``)."""

    def __init__(self, library: ExtraNetworks, model: Any) -> None:
        self._library = library
        self._model = model
        self._loras: list[LoraUse] | None = None  # None until the first prompt is prepared
        self._adapters: list[str] = []
        self._embeddings_used: dict[str, Embedding] = {}

    # -- called by conditioning.encode -------------------------------------------------------
    def prepare(self, prompt: str, negative: str) -> tuple[str, str, dict[str, torch.Tensor] | None]:
        """(prompt, negative) without their ``<lora:...>`` tags, with the LoRAs applied, and the
        embeddings (name -> vectors) the text encoder can use."""
        prompt, tags = prompts.parse_extra_networks(prompt)
        negative, negative_tags = prompts.parse_extra_networks(negative)
        uses = self._lora_uses(tags + negative_tags)
        if self._loras is None:
            self._apply(uses)
        elif _signature(uses) != _signature(self._loras):
            raise RequestError(
                "prompt: every prompt of one job (the hires prompt too) must name the same LoRAs with the same "
                f"weights; first {_describe(self._loras)}, then {_describe(uses)}"
            )
        return prompt, negative, self._embeddings_for(prompt, negative)

    def on_model(self, model: Any) -> JobNetworks:
        """The same library for another model of the job (the refiner): its embeddings only, for
        prompts whose ``<lora:...>`` tags are already out."""
        return JobNetworks(self._library, model)

    # -- the infotext ------------------------------------------------------------------
    def infotext_params(self) -> dict[str, str]:
        """A1111's ``Lora hashes`` and ``TI hashes`` for the networks this job used."""
        params: dict[str, str] = {}
        if self._loras:
            seen: dict[str, str] = {}
            for use in self._loras:
                seen.setdefault(use.lora.name, self._library.loras.short_hash(use.lora))
            params["Lora hashes"] = _hash_list(list(seen.items()))
        if self._embeddings_used:
            params["TI hashes"] = _hash_list(
                [(name, self._library.embeddings.short_hash(e)) for name, e in self._embeddings_used.items()])
        return params

    def close(self) -> None:
        """Take the job's LoRAs out of the model."""
        if self._adapters:
            self._adapters = []
            remove_loras(self._model.pipe)

    # -- steps -------------------------------------------------------------------------
    def _lora_uses(self, tags: list[prompts.ExtraNetworkTag]) -> list[LoraUse]:
        """The tags as LoRA uses, each LoRA once (weights of repeated tags added up)."""
        merged: dict[str, LoraUse] = {}
        for tag in tags:
            if tag.kind not in SUPPORTED_KINDS:
                raise RequestError(
                    f"prompt: {tag.text}: extra networks of kind {tag.kind!r} are not supported; "
                    f"supported: {', '.join(SUPPORTED_KINDS)}"
                )
            try:
                name, te, unet = parse_lora_args(tag.items, tag.text)
                lora = self._library.loras.find(name)
            except LoraError as err:
                raise RequestError(f"prompt: {err}") from None
            if lora.name in merged:
                before = merged[lora.name]
                te, unet = te + before.te_weight, unet + before.unet_weight
            merged[lora.name] = LoraUse(lora, te, unet)
        return list(merged.values())

    def _apply(self, uses: list[LoraUse]) -> None:
        self._loras = uses
        if not uses:
            return
        try:
            self._adapters = apply_loras(self._model.pipe, uses, self._model.arch, self._model.info.model_name)
        except LoraError as err:
            raise RequestError(f"prompt: {err}") from None

    def _embeddings_for(self, prompt: str, negative: str) -> dict[str, torch.Tensor] | None:
        """The embeddings that fit this model's text encoder; RequestError if the prompts name one
        that does not fit or cannot be read."""
        scan = self._library.embeddings.scan()
        if not scan.embeddings and not scan.broken:
            return None
        pipe = self._model.pipe
        if self._model.is_sdxl:  # clip_l and clip_g side by side, as wide as the encoders together
            vectors = {name: sdxl_vectors(pipe, e) for name, e in scan.embeddings.items()}
            width = sum(encoder.get_input_embeddings().embedding_dim for encoder in _sdxl_text_encoders(pipe))
        else:
            vectors = {name: e.single() for name, e in scan.embeddings.items()}
            width = pipe.text_encoder.get_input_embeddings().embedding_dim
        usable = {name: rows for name, rows in vectors.items() if rows is not None and rows.shape[1] == width}
        others = [name for name in [*scan.embeddings, *scan.broken] if name not in usable]
        tokenizer = pipe.tokenizer if getattr(pipe, "tokenizer", None) is not None else pipe.tokenizer_2
        for text in (prompt, negative):
            for name in prompts.embeddings_in_text(tokenizer, text, others):
                raise RequestError(f"prompt: {self._unusable(name, scan.embeddings.get(name), scan.broken.get(name), width)}")
            for name in prompts.embeddings_in_text(tokenizer, text, list(usable)):
                self._embeddings_used.setdefault(name, scan.embeddings[name])
        return usable

    def _unusable(self, name: str, embedding: Embedding | None, error: str | None, width: int) -> str:
        """Why the embedding ``name`` cannot be used on this model."""
        if embedding is None:
            return f"embedding {name!r} cannot be used: {error}"
        if self._model.is_sdxl and not embedding.is_sdxl:
            return (f"embedding {name!r} is a one-encoder ({embedding.shape}-wide) embedding; the SDXL model"
                    f" {self._model.info.model_name!r} takes clip_l + clip_g pairs ({width} wide together)")
        return (
            f"embedding {name!r} has {embedding.shape}-wide vectors; the model {self._model.info.model_name!r} "
            f"takes {width}-wide ones (an embedding works only on the model family it was trained for)"
        )


def _sdxl_text_encoders(pipe: Any) -> list[Any]:
    return [e for e in (getattr(pipe, "text_encoder", None), pipe.text_encoder_2) if e is not None]


def sdxl_vectors(pipe: Any, embedding: Embedding) -> torch.Tensor | None:
    """An SDXL embedding's vectors for ``pipe``'s encoders, side by side: [n, clip_l + clip_g] for SDXL
    base, [n, clip_g] for a refiner (bigG alone); None for a one-encoder embedding."""
    if not embedding.is_sdxl:
        return None
    if getattr(pipe, "text_encoder", None) is None:
        return embedding.tensors["clip_g"]
    return torch.cat([embedding.tensors["clip_l"], embedding.tensors["clip_g"]], dim=1)


def _signature(uses: list[LoraUse]) -> list[tuple[str, float, float]]:
    return sorted((u.lora.name, u.te_weight, u.unet_weight) for u in uses)


def _describe(uses: list[LoraUse]) -> str:
    return ", ".join(f"{u.lora.name} ({u.te_weight:g}/{u.unet_weight:g})" for u in uses) or "none"


def build_extra_networks(settings: Any, hashes: Any) -> ExtraNetworks:
    """The libraries for ``settings.lora_dir`` and ``settings.embeddings_dir``; ``hashes`` is the
    app's sha256 cache (kohya's LoRA hashes get a cache file of their own)."""
    from modules.checkpoints import HashCache
    from modules.lora import addnet_sha256

    addnet = HashCache(settings.cache_dir / "hashes-addnet.json", digest=addnet_sha256)
    return ExtraNetworks(
        LoraLibrary(settings.path(settings.lora_dir), hashes, addnet, label=settings.lora_dir),
        EmbeddingLibrary(settings.path(settings.embeddings_dir), hashes),
    )
