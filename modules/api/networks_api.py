"""A1111's listings of LoRA files and textual-inversion embeddings (``/sdapi/v1/loras``, ``/embeddings``)."""

from __future__ import annotations

from typing import Any

from modules import embeddings
from modules.checkpoints import CheckpointError
from modules.services import Services


def lora_listing(services: Services) -> list[dict[str, Any]]:
    """``[{"name", "alias", "path", "metadata"}]`` for every file of the LoRA folder (as last scanned)."""
    return [{"name": f.name, "alias": f.alias, "path": str(f.path), "metadata": f.metadata}
            for f in services.networks.loras.list()]


def embeddings_listing(services: Services) -> dict[str, dict[str, Any]]:
    """``{"loaded": {name: {...}}, "skipped": {...}}`` against the selected checkpoint's text encoder."""
    try:
        width = embeddings.checkpoint_text_width(services.checkpoints.get(services.selected_checkpoint))
    except CheckpointError:
        width = -1
    return embeddings.listing(services.networks.embeddings.scan(), width)
