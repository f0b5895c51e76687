"""The extra-networks cards (A1111's card browser): every checkpoint, LoRA, textual-inversion
embedding and ControlNet model, as typed items with a name, a preview picture and a description.
The web UI renders them (``webui/extra_networks.py``); nothing here knows about Gradio.

Beside a model file ``NAME.ext`` (or a diffusers folder ``NAME``) the card reads:

1. ``NAME.preview.png``: its picture (A1111's name); :func:`set_preview` writes it, only inside the
   models folder the model was found in;
2. ``NAME.txt`` or ``NAME.description.txt``: its description; else the ``modelspec.description``
   or ``description`` of a .safetensors file's metadata; else one line of what is known (size,
   vectors).

:func:`folders_stamp` is a cheap signature of the model folders (names, sizes and times of the
model, preview and description files) that changes when a training job, the installer or the
user adds, replaces or removes one: the UI polls it to refresh its lists by itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from modules.lora import read_metadata

KINDS = ("checkpoint", "lora", "embedding", "controlnet")
KIND_LABELS = {"checkpoint": "Checkpoints", "lora": "LoRA", "embedding": "Textual Inversion",
               "controlnet": "ControlNet"}
PREVIEW_SUFFIX = ".preview.png"
DESCRIPTION_SUFFIXES = (".txt", ".description.txt")
MAX_DESCRIPTION_CHARS = 500
MAX_PREVIEW_BYTES = 20 << 20  # a preview file larger than this is not read
PREVIEW_SIDE = 512  # "set as preview" keeps at most this many pixels on the long side
STAMPED_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".png", ".txt", ".json", ".yaml")


class CardError(ValueError):
    """A card cannot be found or its preview cannot be written; the message says which and why."""


@dataclass(frozen=True)
class NetworkCard:
    """One model as a card. ``name`` identifies it within its kind (checkpoint: the registry name,
    ``sub/model.safetensors``; LoRA and embedding: what a prompt names; ControlNet: its title);
    ``label`` is what the card shows; ``root`` is the models folder it was found in."""

    kind: str
    name: str
    label: str
    path: Path
    root: Path
    description: str

    @property
    def preview_path(self) -> Path:
        """``NAME.preview.png`` beside the file (for a folder: beside the folder)."""
        stem = self.path.name if self.path.is_dir() else self.path.stem
        return self.path.with_name(stem + PREVIEW_SUFFIX)

    def matches(self, query: str) -> bool:
        """Whether every word of ``query`` is in the card's label, name or description (any case)."""
        text = f"{self.label} {self.name} {self.description} {KIND_LABELS[self.kind]}".lower()
        return all(word in text for word in (query or "").lower().split())


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (links followed) lies inside ``root``."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def _root_of(path: Path, roots: list[Path]) -> Path | None:
    """The first of ``roots`` that holds ``path``."""
    return next((root for root in roots if _inside(path, root)), None)


def read_description(path: Path, metadata: dict[str, Any] | None = None, fallback: str = "") -> str:
    """``NAME.txt`` / ``NAME.description.txt`` beside ``path``, else the metadata's description,
    else ``fallback``; one paragraph of at most ``MAX_DESCRIPTION_CHARS``."""
    stem = path.name if path.is_dir() else path.stem
    text = ""
    for suffix in DESCRIPTION_SUFFIXES:
        candidate = path.with_name(stem + suffix)
        if candidate.is_file() and _inside(candidate, path.parent):
            try:
                text = candidate.read_text(encoding="utf-8", errors="replace")[:MAX_DESCRIPTION_CHARS * 2]
            except OSError:
                continue
            break
    if not text.strip() and metadata:
        for key in ("modelspec.description", "description"):
            if isinstance(metadata.get(key), str):
                text = metadata[key]
                break
    text = " ".join(text.split()) or fallback
    return text if len(text) <= MAX_DESCRIPTION_CHARS else text[:MAX_DESCRIPTION_CHARS - 1] + "…"


def _size_text(path: Path) -> str:
    try:
        size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return ""
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def checkpoint_cards(services) -> list[NetworkCard]:
    roots = list(services.settings.checkpoint_dirs)
    cards = []
    for info in services.checkpoints.list():
        root = _root_of(info.path, roots)
        if root is None:
            continue
        metadata = read_metadata(info.path) if info.kind == "single" else {}
        fallback = f"{'diffusers folder' if info.kind == 'diffusers' else 'checkpoint'}, {_size_text(info.path)}"
        cards.append(NetworkCard("checkpoint", info.name, info.model_name, info.path, root,
                                 read_description(info.path, metadata, fallback)))
    return cards


def lora_cards(services) -> list[NetworkCard]:
    library = services.networks.loras
    cards = []
    for lora in library.list():
        fallback = f"LoRA, {_size_text(lora.path)}" + (f", trained as {lora.alias}" if lora.alias != lora.name else "")
        cards.append(NetworkCard("lora", lora.name, lora.name, lora.path, library.folder,
                                 read_description(lora.path, lora.metadata, fallback)))
    return cards


def embedding_cards(services) -> list[NetworkCard]:
    library = services.networks.embeddings
    scan = library.scan()
    cards = []
    for name, embedding in scan.embeddings.items():
        step = f", step {embedding.step}" if embedding.step is not None else ""
        fallback = f"embedding, {embedding.vectors} vector(s) of {embedding.shape}{step}"
        cards.append(NetworkCard("embedding", name, name, embedding.path, library.folder,
                                 read_description(embedding.path, read_metadata(embedding.path), fallback)))
    for name, error in scan.broken.items():
        path = next((p for p in library.folder.rglob(f"{name}.*") if p.is_file()), library.folder / name)
        cards.append(NetworkCard("embedding", name, name, path, library.folder, f"unreadable: {error}"))
    return sorted(cards, key=lambda card: card.name.lower())


def controlnet_cards(services) -> list[NetworkCard]:
    root = services.controlnet_dir
    return [NetworkCard("controlnet", info.name, info.stem, info.path, root,
                        read_description(info.path, read_metadata(info.path) if info.kind == "single" else {},
                                         f"ControlNet, {_size_text(info.path)}"))
            for info in services.controlnet_infos()]


def list_cards(services, kinds: tuple[str, ...] = KINDS) -> list[NetworkCard]:
    """The cards of ``kinds``, kind by kind in ``KINDS`` order, each kind sorted as its list is."""
    makers = {"checkpoint": checkpoint_cards, "lora": lora_cards, "embedding": embedding_cards,
              "controlnet": controlnet_cards}
    return [card for kind in KINDS if kind in kinds for card in makers[kind](services)]


def find_card(services, kind: Any, name: Any) -> NetworkCard:
    """The card ``kind``/``name`` names (as a browser sends them: untrusted); CardError if none does."""
    if kind not in KINDS or not isinstance(name, str):
        raise CardError(f"card: kind must be one of {', '.join(KINDS)} and name a text; got {kind!r}, {name!r}")
    for card in list_cards(services, (kind,)):
        if card.name == name:
            return card
    raise CardError(f"card: no {KIND_LABELS[kind]} model named {name!r} (the list may be out of date: refresh)")


def preview_file(card: NetworkCard) -> Path | None:
    """The card's preview file when it exists, is small enough and lies inside the card's models folder."""
    path = card.preview_path
    try:
        if not path.is_file() or path.stat().st_size > MAX_PREVIEW_BYTES or not _inside(path, card.root):
            return None
    except OSError:
        return None
    return path


def set_preview(card: NetworkCard, image: Image.Image) -> Path:
    """Write ``image`` (at most ``PREVIEW_SIDE`` on its long side) as the card's ``NAME.preview.png``;
    CardError when that place is not inside the card's models folder."""
    path = card.preview_path
    if not _inside(path.parent, card.root) or (path.exists() and not _inside(path, card.root)):
        raise CardError(f"card: the preview of {card.name!r} would be written outside {card.root}")
    picture = image.convert("RGB")
    picture.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    temporary = path.with_name(f".{path.name}.tmp")  # renamed over the old file (or link): never written through
    picture.save(temporary, format="PNG")
    temporary.replace(path)
    return path


def folders_stamp(services) -> str:
    """A short hash of the model folders' model, preview and description files (name, size, time)."""
    settings = services.settings
    folders = [*settings.checkpoint_dirs, services.networks.loras.folder, services.networks.embeddings.folder,
               services.controlnet_dir]
    digest = hashlib.sha1()
    for folder in folders:
        digest.update(str(folder).encode())
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in STAMPED_SUFFIXES:
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            digest.update(f"{path.relative_to(folder).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
