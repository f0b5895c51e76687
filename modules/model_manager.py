"""The cache of loaded models and the memory algorithm that feeds the device.

The manager is generic: it knows nothing about diffusers. It is handed a
function that loads a model by key, one that measures it, one that moves it
between "cpu" and the compute device, and a memory probe. The composition root
wires these to checkpoints, ``devices.module_bytes`` and
``devices.apply_memory_mode``; tests wire them to fakes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from modules.devices import MemoryProbe

logger = logging.getLogger(__name__)

CPU = "cpu"


@dataclass(frozen=True)
class CacheSettings:
    """Limits of the model cache.

    max_models: models kept in RAM (A1111's ``sd_checkpoints_limit``), at least 1.
    max_ram_bytes: byte limit of the cache; None means only the probe limits it.
    reserve_bytes: kept free on the compute device for inference itself.
    """

    max_models: int = 2
    max_ram_bytes: int | None = None
    reserve_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {self.max_models}")
        if self.max_ram_bytes is not None and self.max_ram_bytes <= 0:
            raise ValueError(f"max_ram_bytes must be positive or None, got {self.max_ram_bytes}")
        if self.reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be 0 or more, got {self.reserve_bytes}")


@dataclass(frozen=True)
class CacheEntryInfo:
    """A read-only view of one cached model."""

    key: str
    size_bytes: int
    device: str
    locked: bool
    last_used: float


@dataclass
class _Entry:
    """One cached model and its bookkeeping (guarded by the manager's lock)."""

    key: str
    model: Any
    size_bytes: int
    device: str
    locks: int
    last_used: float
    shared: int = 0  # sharing groups (``share_device``) it is in: locked, yet offloadable for their other models


class ModelInUseError(RuntimeError):
    """Raised when asked to unload a model that a running job is using."""


class ModelManager:
    """Keeps loaded models in RAM and on the compute device, most recently used first.

    Policy (after ComfyUI's model_management and InvokeAI's model cache):

    1. Order. Entries are kept in most-recently-used order. ``use`` and
       ``ensure_loaded`` mark a model most recent; eviction and offloading
       always take the least recently used candidate first.
    2. Locks. A model is locked (reference counted) while inside ``use``.
       Locked models are never evicted from RAM nor offloaded from the device.
    3. RAM. Before loading a new model, unlocked models are evicted until the
       cache holds fewer than ``max_models``, its bytes plus the new model's
       estimate fit ``max_ram_bytes``, and the probe reports enough free RAM
       for the estimate (plus ``reserve_bytes`` when the compute device is the
       CPU). The size of a model is only known once it is loaded, so without
       ``estimate_size`` the estimate is 0 and the byte limits are enforced
       again right after loading (evicting other unlocked models).
    4. Device. Loaded models start on "cpu". When the compute device is not
       the CPU, ``use`` offloads (moves to "cpu") the least recently used
       unlocked models on the device until the probe reports room for the
       model plus ``reserve_bytes``, then moves the model there. A model
       already on the device is not moved again, so switching back to a cached
       model costs no reload. When the CPU is the compute device models stay
       on "cpu" and the reserve is kept by evicting from RAM instead.
    4b. Sharing. A job that switches models (the refiner) holds both locked and
       calls ``share_device(a, b)``: inside it, ``to_device(key)`` moves one of
       them to the device, offloading the other first when room is short
       (locked models of a group may be offloaded for each other, never evicted
       from RAM); on leaving, the first key is on the device again.
    5. Shortfall. If memory is still short once nothing unlocked is left to
       free, the manager proceeds anyway and logs a warning: the pipeline's
       own offload mode (medvram/lowvram) handles partial loading.
    6. No deadlock. If a limit cannot be met because the other models are
       locked, the limit is exceeded for a while; it is enforced again when a
       lock is released. Limits never evict the most recently used model, so
       a model larger than ``max_ram_bytes`` still stays until the next one.
    7. Errors. A failing ``load`` or ``move`` propagates. Nothing is inserted
       for a failed load and no lock is leaked; models evicted to make room
       before the load stay evicted.

    Thread-safe: one lock guards the cache and is held while loading or moving
    (not during the body of ``use``), so the job worker and the UI may both
    call in.
    """

    def __init__(
        self,
        load: Callable[[str], Any],
        size_of: Callable[[Any], int],
        move: Callable[[Any, str], None],
        probe: MemoryProbe,
        compute_device: str,
        settings: CacheSettings,
        clock: Callable[[], float] = time.monotonic,
        estimate_size: Callable[[str], int] | None = None,
        discard: Callable[[Any], None] | None = None,
    ) -> None:
        """Create an empty cache.

        load(key) returns a model in CPU RAM; size_of(model) gives its bytes;
        move(model, device) places it. estimate_size(key), optional, predicts
        the bytes of a model before loading (e.g. its file size). discard(model),
        optional, is called when a model leaves the cache (e.g. to empty the
        CUDA cache).
        """
        self._load = load
        self._size_of = size_of
        self._move = move
        self._probe = probe
        self._device = compute_device
        self._settings = settings
        self._clock = clock
        self._estimate_size = estimate_size
        self._discard = discard
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recent first
        self._lock = threading.RLock()

    @property
    def settings(self) -> CacheSettings:
        """The limits in force."""
        return self._settings

    @property
    def compute_device(self) -> str:
        """The device models are moved to by ``use``."""
        return self._device

    @contextmanager
    def use(self, key: str) -> Iterator[Any]:
        """Yield the model for ``key`` on the compute device, locked for the block."""
        with self._lock:
            entry = self._entries.get(key) or self._load_entry(key)
            self._touch(entry)
            entry.locks += 1
            try:
                self._place_on_device(entry)
            except BaseException:
                self._release(entry)
                raise
        try:
            yield entry.model
        finally:
            with self._lock:
                self._release(entry)

    @contextmanager
    def share_device(self, *keys: str) -> Iterator[None]:
        """Let the models ``keys`` (loaded, locked by the caller) take turns on the compute device
        inside the block (``to_device``): with one model's room, the one not in use is offloaded."""
        with self._lock:
            entries = [self._entries[key] for key in keys]
            for entry in entries:
                entry.shared += 1
        try:
            yield
        finally:
            with self._lock:
                for entry in entries:
                    entry.shared -= 1
                self._place_on_device(entries[0])

    def to_device(self, key: str) -> None:
        """Move the loaded model ``key`` to the compute device now (after ``share_device`` offloaded it)."""
        with self._lock:
            entry = self._entries[key]
            self._touch(entry)
            self._place_on_device(entry)

    def ensure_loaded(self, key: str) -> None:
        """Load ``key`` into the cache (RAM) without moving it to the device."""
        with self._lock:
            entry = self._entries.get(key) or self._load_entry(key)
            self._touch(entry)

    def is_loaded(self, key: str) -> bool:
        """Return True when ``key`` is in the cache."""
        with self._lock:
            return key in self._entries

    def loaded(self) -> list[CacheEntryInfo]:
        """Describe the cached models, most recently used first."""
        with self._lock:
            return [
                CacheEntryInfo(e.key, e.size_bytes, e.device, e.locks > 0, e.last_used)
                for e in reversed(self._entries.values())
            ]

    def unload(self, key: str) -> None:
        """Drop ``key`` from the cache; refused while a job is using it."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                raise KeyError(f"model {key!r} is not loaded; loaded: {list(self._entries) or 'none'}")
            if entry.locks > 0:
                raise ModelInUseError(f"model {key!r} is in use by a running job; unload it when the job ends")
            self._evict(entry)

    def clear(self) -> None:
        """Drop every model that is not in use; models in use stay (and are logged)."""
        with self._lock:
            for entry in list(self._entries.values()):
                if entry.locks == 0:
                    self._evict(entry)
            if self._entries:
                logger.info("clear kept models in use: %s", ", ".join(self._entries))

    def set_settings(self, settings: CacheSettings) -> None:
        """Replace the limits and evict at once what no longer fits."""
        with self._lock:
            self._settings = settings
            self._enforce_ram_limits()

    # -- internals (callers hold self._lock) -------------------------------------------------

    def _touch(self, entry: _Entry) -> None:
        """Mark ``entry`` most recently used."""
        entry.last_used = self._clock()
        self._entries.move_to_end(entry.key)

    def _release(self, entry: _Entry) -> None:
        """Drop one lock; enforce the limits that locks may have forced us to exceed."""
        entry.locks -= 1
        self._enforce_ram_limits()

    def _unlocked_lru(self, exclude: str | None = None) -> list[_Entry]:
        """Unlocked entries, least recently used first, without ``exclude``."""
        return [e for e in self._entries.values() if e.locks == 0 and e.key != exclude]

    def _cached_bytes(self) -> int:
        return sum(e.size_bytes for e in self._entries.values())

    def _ram_short(self, incoming: int, incoming_count: int) -> bool:
        """True while the cache plus an incoming model breaks a RAM limit."""
        settings = self._settings
        if len(self._entries) + incoming_count > settings.max_models:
            return True
        if settings.max_ram_bytes is not None and self._cached_bytes() + incoming > settings.max_ram_bytes:
            return True
        return False

    def _cpu_free_short(self, needed: int) -> bool:
        """True while the probe reports less free RAM than ``needed``."""
        return needed > 0 and self._probe.free_bytes(CPU) < needed

    def _load_entry(self, key: str) -> _Entry:
        """Make room in RAM, load ``key`` and insert it as most recent."""
        estimate = self._estimate_size(key) if self._estimate_size else 0
        reserve = self._settings.reserve_bytes if self._device == CPU else 0
        for victim in self._unlocked_lru():
            if not (self._ram_short(estimate, 1) or self._cpu_free_short(estimate + reserve)):
                break
            self._evict(victim)
        if self._ram_short(estimate, 1):
            logger.warning("cache limits exceeded to load %r: the other models are in use", key)

        started = time.perf_counter()
        model = self._load(key)
        entry = _Entry(key, model, int(self._size_of(model)), CPU, 0, self._clock())
        self._entries[key] = entry
        logger.info("loaded %r (%.1f MiB) in %.2f s", key, entry.size_bytes / 2**20, time.perf_counter() - started)
        self._enforce_ram_limits()
        return entry

    def _enforce_ram_limits(self) -> None:
        """Evict unlocked models, least recent first, until count and bytes fit.

        The most recently used model is kept even when it alone breaks a limit.
        """
        newest = next(reversed(self._entries), None)
        for victim in self._unlocked_lru(exclude=newest):
            if not self._ram_short(0, 0):
                return
            self._evict(victim)

    def _place_on_device(self, entry: _Entry) -> None:
        """Free room for ``entry`` plus the reserve, then move it to the compute device."""
        reserve = self._settings.reserve_bytes
        if self._device == CPU:
            for victim in self._unlocked_lru(exclude=entry.key):
                if not self._cpu_free_short(reserve):
                    break
                self._evict(victim)
            if self._cpu_free_short(reserve):
                logger.warning("free RAM is below the %d MiB reserve for inference", reserve // 2**20)
            return

        needed = reserve + (0 if entry.device == self._device else entry.size_bytes)
        on_device = [e for e in self._entries.values()  # least recent first: unlocked, or sharing with it
                     if e.key != entry.key and e.device == self._device and (e.locks == 0 or e.shared and entry.shared)]
        for victim in on_device:
            if self._probe.free_bytes(self._device) >= needed:
                break
            self._move(victim.model, CPU)
            victim.device = CPU
            logger.info("offloaded %r to cpu to make room for %r", victim.key, entry.key)
        free = self._probe.free_bytes(self._device)
        if free < needed:
            logger.warning(
                "only %d MiB free on %s for %r (needs %d MiB with the reserve); "
                "proceeding, the pipeline's offload mode must cover the shortfall",
                free // 2**20, self._device, entry.key, needed // 2**20,
            )
        if entry.device != self._device:
            self._move(entry.model, self._device)
            entry.device = self._device

    def _evict(self, entry: _Entry) -> None:
        """Remove an unlocked entry from the cache."""
        del self._entries[entry.key]
        if self._discard is not None:
            self._discard(entry.model)
        logger.info("evicted %r from the model cache", entry.key)
