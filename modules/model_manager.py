"""The cache of loaded model components and the memory algorithm that feeds the device.

The manager is generic: it knows nothing about diffusers. A *model* (what ``use`` yields: a
checkpoint's pipeline, a ControlNet) is assembled from *components* (UNet, text encoders, VAE,
ControlNet), each cached once under a typed ``ComponentKey`` (its kind and a hash of its weights),
so two checkpoints that share a VAE or a text encoder share one entry in memory. The manager is
handed a ``recipe`` function that says, for a model key, which components it needs, how to load
each and how to assemble them; and functions that measure a component, move it between "cpu"
and the compute device (wholly or partly) and a memory probe. The composition root wires these
to ``modules.model_parts`` and ``modules.devices``; tests wire them to fakes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from modules.devices import MEMORY_MODES, MemoryProbe

logger = logging.getLogger(__name__)

CPU = "cpu"


@dataclass(frozen=True)
class ComponentKey:
    """What identifies a cached component: its kind ("unet", "vae", "text_encoder", "controlnet", ...)
    and a hex digest of its weights and config (equal digests: the same tensors, shared)."""

    kind: str
    digest: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.digest[:12]}"


@dataclass(frozen=True)
class ModelRecipe:
    """How to build the model of one key from components.

    parts: component name (e.g. "unet") -> its key. load(name) loads that component into CPU RAM
    (called outside the cache lock, only for parts not cached). assemble(parts) builds the model
    from the loaded components (cheap: no tensors are copied). estimate(name), optional, predicts
    a component's bytes before it is loaded.
    """

    parts: dict[str, ComponentKey]
    load: Callable[[str], Any]
    assemble: Callable[[dict[str, Any]], Any]
    estimate: Callable[[str], int] | None = None


@dataclass(frozen=True)
class CacheSettings:
    """Limits of the model cache.

    max_models: models kept in RAM (A1111's ``sd_checkpoints_limit``), at least 1.
    max_ram_bytes: byte limit of the cache (components shared by models count once); None means
    only the probe limits it.
    reserve_bytes: kept free on the compute device for inference itself.
    memory_mode: "normal" keeps components on the device between jobs; "medvram" moves a model's
    components back to the CPU when its job ends; "lowvram" also runs splittable components (the
    UNet) layer by layer from the CPU, keeping the least on the device.
    """

    max_models: int = 2
    max_ram_bytes: int | None = None
    reserve_bytes: int = 1 << 30
    memory_mode: str = "normal"

    def __post_init__(self) -> None:
        if self.max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {self.max_models}")
        if self.max_ram_bytes is not None and self.max_ram_bytes <= 0:
            raise ValueError(f"max_ram_bytes must be positive or None, got {self.max_ram_bytes}")
        if self.reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be 0 or more, got {self.reserve_bytes}")
        if self.memory_mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {', '.join(MEMORY_MODES)}, got {self.memory_mode!r}")


@dataclass(frozen=True)
class CacheEntryInfo:
    """A read-only view of one cached model. device: the compute device when all its components
    are wholly there, "cpu" when none is, "partial" otherwise."""

    key: str
    size_bytes: int
    device: str
    locked: bool
    last_used: float


@dataclass(frozen=True)
class ComponentInfo:
    """A read-only view of one cached component: bytes in RAM, bytes on the device, the models using it."""

    key: ComponentKey
    size_bytes: int
    device_bytes: int
    locked: bool
    models: tuple[str, ...]


class ModelInUseError(RuntimeError):
    """Raised when asked to unload a model that a running job is using."""


class DeviceMemoryError(RuntimeError):
    """The model cannot run on the device even with its UNet loaded partially; the message says how short."""


@dataclass
class _Component:
    """One cached component (guarded by the manager's lock)."""

    key: ComponentKey
    value: Any
    size_bytes: int
    min_device_bytes: int  # the least it can run with on the device (its largest block when splittable)
    last_used: float
    locks: int = 0
    device_bytes: int = 0  # on the compute device: 0 (cpu), size_bytes (wholly) or between (partly)
    budget: int = 0  # the byte budget of its partial placement (0: not partly placed)


@dataclass
class _Model:
    """One assembled model: which components it is made of (guarded by the manager's lock)."""

    key: str
    parts: dict[str, ComponentKey]
    value: Any
    last_used: float
    locks: int = 0
    shared: int = 0  # sharing groups (``share_device``) it is in: locked, yet offloadable for their other models
    components: list[_Component] = field(default_factory=list)


class ModelManager:
    """Keeps model components in RAM and on the compute device, most recently used first.

    Policy (after ComfyUI's ``model_management.load_models_gpu`` and InvokeAI's model cache):

    1. Entries. Components are cached by ``ComponentKey``; a model is an assembly of components
       and holds no tensors of its own. Components shared by two models are one entry, counted
       once in every byte total. A component leaves the cache when no cached model uses it.
    2. Order. ``use`` and ``ensure_loaded`` mark a model and its components most recent; eviction
       and offloading take the least recently used candidate first.
    3. Locks. A model and its components are locked (reference counted) while inside ``use``;
       locked ones are never evicted from RAM nor offloaded from the device.
    4. Loading. Loads run outside the cache lock, so two different components load in parallel;
       a component asked for while it is loading is loaded once (the second caller waits on the
       first one's future). A failed load inserts nothing and leaks no lock.
    5. RAM. Before loading a component, unlocked models are evicted (least recent first) until
       the cache holds fewer than ``max_models``, its bytes plus the component's estimate fit
       ``max_ram_bytes`` and the probe reports enough free RAM (plus ``reserve_bytes`` when the
       compute device is the CPU). Limits are enforced again after each load and each release.
       Limits never evict the most recently used model nor locked ones (no deadlock: a limit is
       exceeded for a while instead, and a warning logged).
    6. Device. When the compute device is not the CPU, ``use`` needs the model's components on
       it plus ``reserve_bytes`` free. It first offloads (moves to "cpu") whole unlocked
       components of other models, least recent first; then places the missing components
       smallest first, each wholly if it fits, and the one that does not fit partly (``move``
       with a byte budget: as many blocks as fit stay on the device, the rest runs from the CPU,
       as ComfyUI's lowvram does). Only when even a partial load cannot fit (the budget is below
       the component's ``min_device_bytes``) is a ``DeviceMemoryError`` raised, in one line.
       A component wholly on the device is not moved again, so a cached swap costs no reload.
       On the CPU as compute device components stay on "cpu" and the reserve is kept by
       evicting from RAM instead.
    7. Modes. ``memory_mode`` "medvram" moves a model's components back to the CPU when its last
       ``use`` ends; "lowvram" also loads splittable components with their minimum budget.
    8. Sharing. A job that switches models (the refiner) holds both locked and calls
       ``share_device(a, b)``: inside it, ``to_device(key)`` moves one model's components to the
       device, offloading the other's (but not the components both use) when room is short; on
       leaving, the first model is on the device again.
    """

    def __init__(
        self,
        recipe: Callable[[str], ModelRecipe],
        size_of: Callable[[Any], int],
        move: Callable[[Any, str, int | None], int],
        probe: MemoryProbe,
        compute_device: str,
        settings: CacheSettings,
        clock: Callable[[], float] = time.monotonic,
        discard: Callable[[list[Any]], None] | None = None,
        min_device_bytes: Callable[[Any], int] | None = None,
    ) -> None:
        """Create an empty cache.

        recipe(key) describes a model (see ``ModelRecipe``); size_of(component) gives its bytes;
        move(component, device, max_bytes) places it: wholly when max_bytes is None, else at most
        max_bytes of it on the device (the rest runs from the CPU), returning the bytes it put on
        the device. min_device_bytes(component), optional (default: its whole size), is the least
        a partial placement needs. discard(components), optional, is called once with the components
        that left the cache together (e.g. to collect garbage and empty the CUDA cache once, not per
        component: a full garbage collection costs 0.3 s in the app's process).
        """
        self._recipe = recipe
        self._size_of = size_of
        self._move = move
        self._min_device_bytes = min_device_bytes
        self._probe = probe
        self._device = compute_device
        self._settings = settings
        self._clock = clock
        self._discard = discard
        self._models: OrderedDict[str, _Model] = OrderedDict()  # least recent first
        self._components: dict[ComponentKey, _Component] = {}
        self._loading: dict[ComponentKey, Future] = {}
        self._lock = threading.RLock()

    @property
    def settings(self) -> CacheSettings:
        """The limits in force."""
        return self._settings

    @property
    def compute_device(self) -> str:
        """The device models are moved to by ``use``."""
        return self._device

    # -- public API ------------------------------------------------------------------------------

    @contextmanager
    def use(self, key: str) -> Iterator[Any]:
        """Yield the model for ``key`` with its components on the compute device, locked for the block."""
        model = self._acquire_model(key)
        try:
            with self._lock:
                self._place_on_device(model)
        except BaseException:
            with self._lock:
                self._release(model)
            raise
        try:
            yield model.value
        finally:
            with self._lock:
                self._release(model)

    @contextmanager
    def share_device(self, *keys: str) -> Iterator[None]:
        """Let the models ``keys`` (loaded, locked by the caller) take turns on the compute device
        inside the block (``to_device``): with one model's room, the one not in use is offloaded."""
        with self._lock:
            models = [self._models[key] for key in keys]
            for model in models:
                model.shared += 1
        try:
            yield
        finally:
            with self._lock:
                for model in models:
                    model.shared -= 1
                self._place_on_device(models[0])

    def to_device(self, key: str) -> None:
        """Move the loaded model ``key`` to the compute device now (after ``share_device`` offloaded it)."""
        with self._lock:
            model = self._models[key]
            self._touch(model)
            self._place_on_device(model)

    def ensure_loaded(self, key: str) -> None:
        """Load ``key`` into the cache (RAM) without moving it to the device."""
        model = self._acquire_model(key)
        with self._lock:
            self._release(model)

    def is_loaded(self, key: str) -> bool:
        """Return True when the model ``key`` is in the cache."""
        with self._lock:
            return key in self._models

    def loaded(self) -> list[CacheEntryInfo]:
        """Describe the cached models, most recently used first."""
        with self._lock:
            return [CacheEntryInfo(m.key, sum(c.size_bytes for c in m.components), self._model_device(m),
                                   m.locks > 0, m.last_used) for m in reversed(self._models.values())]

    def components(self) -> list[ComponentInfo]:
        """Describe the cached components, most recently used first."""
        with self._lock:
            users: dict[ComponentKey, list[str]] = {}
            for model in self._models.values():
                for ckey in model.parts.values():
                    users.setdefault(ckey, []).append(model.key)
            ordered = sorted(self._components.values(), key=lambda c: c.last_used, reverse=True)
            return [ComponentInfo(c.key, c.size_bytes, c.device_bytes, c.locks > 0, tuple(users.get(c.key, ())))
                    for c in ordered]

    def unload(self, key: str) -> None:
        """Drop the model ``key`` (and its components no other model uses); refused while a job uses it."""
        with self._lock:
            model = self._models.get(key)
            if model is None:
                raise KeyError(f"model {key!r} is not loaded; loaded: {list(self._models) or 'none'}")
            if model.locks > 0:
                raise ModelInUseError(f"model {key!r} is in use by a running job; unload it when the job ends")
            self._evict(model)

    def clear(self) -> None:
        """Drop every model that is not in use; models in use stay (and are logged)."""
        with self._lock:
            for model in list(self._models.values()):
                if model.locks == 0:
                    self._evict(model)
            if self._models:
                logger.info("clear kept models in use: %s", ", ".join(self._models))

    def set_settings(self, settings: CacheSettings) -> None:
        """Replace the limits and evict at once what no longer fits."""
        with self._lock:
            self._settings = settings
            self._enforce_ram_limits()

    # -- acquiring: components loaded outside the lock -------------------------------------------

    def _acquire_model(self, key: str) -> _Model:
        """The model ``key``, locked (with its components) and most recent; loads what is missing."""
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._lock_model(model)
                return model
        recipe = self._recipe(key)  # may read a file header or hash a new file: outside the lock
        with self._lock:  # cached parts first: locked, they survive the evictions that make room for the rest
            order = sorted(recipe.parts.items(), key=lambda item: item[1] not in self._components)
        acquired: dict[str, _Component] = {}
        try:
            for name, ckey in order:
                acquired[name] = self._acquire_component(ckey, name, recipe)
            value = recipe.assemble({name: c.value for name, c in acquired.items()})  # no tensors copied
            with self._lock:
                model = self._models.get(key)  # another thread may have assembled it meanwhile
                if model is None:
                    model = _Model(key, dict(recipe.parts), value, self._clock(),
                                   components=list({id(c): c for c in acquired.values()}.values()))
                    self._models[key] = model
                    logger.info("loaded %r (%.1f MiB in %d components)", key,  # one record per model (serve counts them)
                                sum(c.size_bytes for c in model.components) / 2**20, len(model.components))
                self._lock_model(model)
        finally:
            with self._lock:
                for component in acquired.values():
                    component.locks -= 1
                self._drop_orphans()
                self._enforce_ram_limits()
        return model

    def _acquire_component(self, ckey: ComponentKey, name: str, recipe: ModelRecipe) -> _Component:
        """The component ``ckey`` locked once for the caller: cached, loaded by another thread, or loaded here."""
        while True:
            with self._lock:
                component = self._components.get(ckey)
                if component is not None:
                    component.locks += 1
                    self._touch_component(component)
                    return component
                future = self._loading.get(ckey)
                owner = future is None
                if owner:
                    future = self._loading[ckey] = Future()
                    estimate = recipe.estimate(name) if recipe.estimate else 0
                    self._make_ram_room(estimate, ckey)
            if not owner:
                future.result()  # re-raises the loader's error; on success take it from the cache
                continue
            return self._load_component(ckey, name, recipe, future)

    def _load_component(self, ckey: ComponentKey, name: str, recipe: ModelRecipe, future: Future) -> _Component:
        """Load one component outside the lock, insert it locked once, and settle its future."""
        started = time.perf_counter()
        try:
            value = recipe.load(name)
            size = int(self._size_of(value))
            least = int(self._min_device_bytes(value)) if self._min_device_bytes else size
        except BaseException as err:
            with self._lock:
                del self._loading[ckey]
            future.set_exception(err)
            raise
        with self._lock:
            component = _Component(ckey, value, size, min(least, size), self._clock(), locks=1)
            self._components[ckey] = component
            del self._loading[ckey]
        future.set_result(None)
        logger.info("component %s read (%.1f MiB) in %.2f s", ckey, size / 2**20, time.perf_counter() - started)
        return component

    # -- internals (callers hold self._lock) -----------------------------------------------------

    def _lock_model(self, model: _Model) -> None:
        model.locks += 1
        for component in model.components:
            component.locks += 1
        self._touch(model)

    def _release(self, model: _Model) -> None:
        """Drop one lock; offload in medvram/lowvram; enforce the limits locks may have let us exceed."""
        model.locks -= 1
        for component in model.components:
            component.locks -= 1
        if model.locks == 0 and self._settings.memory_mode != "normal" and self._device != CPU:
            for component in model.components:
                if component.locks == 0 and component.device_bytes:
                    self._offload(component, f"{self._settings.memory_mode}: {model.key!r} finished")
        self._enforce_ram_limits()

    def _touch(self, model: _Model) -> None:
        """Mark ``model`` and its components most recently used."""
        model.last_used = self._clock()
        self._models.move_to_end(model.key)
        for component in model.components:
            component.last_used = model.last_used

    def _touch_component(self, component: _Component) -> None:
        component.last_used = self._clock()

    def _model_device(self, model: _Model) -> str:
        placed = [c.device_bytes for c in model.components]
        if self._device != CPU and all(c.device_bytes == c.size_bytes for c in model.components):
            return self._device
        return CPU if not any(placed) else "partial"

    def _cached_bytes(self) -> int:
        return sum(c.size_bytes for c in self._components.values())

    def _ram_short(self, incoming: int, incoming_models: int) -> bool:
        """True while the cache plus incoming bytes and models break a RAM limit."""
        settings = self._settings
        if len(self._models) + incoming_models > settings.max_models:
            return True
        return settings.max_ram_bytes is not None and self._cached_bytes() + incoming > settings.max_ram_bytes

    def _cpu_free_short(self, needed: int) -> bool:
        """True while the probe reports less free RAM than ``needed``."""
        return needed > 0 and self._probe.free_bytes(CPU) < needed

    def _make_ram_room(self, estimate: int, ckey: ComponentKey) -> None:
        """Evict unlocked models, least recent first, until a new component of ``estimate`` bytes fits."""
        reserve = self._settings.reserve_bytes if self._device == CPU else 0
        for victim in [m for m in self._models.values() if m.locks == 0]:
            if not (self._ram_short(estimate, 1) or self._cpu_free_short(estimate + reserve)):
                break
            self._evict(victim)
        if self._ram_short(estimate, 1):
            logger.warning("cache limits exceeded to load %s: the other models are in use", ckey)

    def _enforce_ram_limits(self) -> None:
        """Evict unlocked models, least recent first, until count and bytes fit (never the newest)."""
        newest = next(reversed(self._models), None)
        for victim in [m for m in self._models.values() if m.locks == 0 and m.key != newest]:
            if not self._ram_short(0, 0):
                return
            self._evict(victim)

    def _evict(self, model: _Model) -> None:
        """Remove an unlocked model, and the components no other model uses, from the cache."""
        del self._models[model.key]
        logger.info("evicted %r from the model cache", model.key)
        self._drop_orphans()

    def _drop_orphans(self) -> None:
        """Drop unlocked components that no cached model uses (nor a load in progress)."""
        used = {ckey for model in self._models.values() for ckey in model.parts.values()}
        dropped = [self._components.pop(ckey).value for ckey, component in list(self._components.items())
                   if ckey not in used and component.locks == 0]
        if dropped and self._discard is not None:
            self._discard(dropped)

    def _offload(self, component: _Component, why: str) -> None:
        self._move(component.value, CPU, None)
        component.device_bytes = component.budget = 0
        logger.info("offloaded %s to cpu (%s)", component.key, why)

    def _room(self) -> int:
        """Bytes that may still go to the device, the reserve kept."""
        return self._probe.free_bytes(self._device) - self._settings.reserve_bytes

    def _place_on_device(self, model: _Model) -> None:
        """Offload what the model does not need, then place its components wholly or partly (policy 6)."""
        if self._device == CPU:
            self._keep_cpu_reserve(model)
            return
        lowvram = self._settings.memory_mode == "lowvram"
        needed = {id(c) for c in model.components}
        missing = sum(c.size_bytes - c.device_bytes for c in model.components)
        sharing = [m for m in self._models.values() if m.shared and model.shared and m is not model]
        shared_ids = {id(c) for m in sharing for c in m.components}  # the other models of its sharing group
        victims = sorted((c for c in self._components.values()
                          if c.device_bytes and id(c) not in needed and (c.locks == 0 or id(c) in shared_ids)),
                         key=lambda c: c.last_used)
        for victim in victims:
            if self._room() >= missing:
                break
            self._offload(victim, f"room for {model.key!r}")
        for component in sorted(model.components, key=lambda c: c.size_bytes):
            self._place_component(component, model.key, lowvram)

    def _place_component(self, component: _Component, model_key: str, lowvram: bool) -> None:
        """Put one component wholly on the device if it fits, else as much of it as fits."""
        splittable = component.min_device_bytes < component.size_bytes
        if component.device_bytes == component.size_bytes and not (lowvram and splittable):
            return
        room = self._room()
        if not (lowvram and splittable) and component.size_bytes - component.device_bytes <= room:
            self._move(component.value, self._device, None)
            component.device_bytes, component.budget = component.size_bytes, 0
            return
        budget = component.min_device_bytes if lowvram else component.device_bytes + max(room, 0)
        if component.device_bytes and budget <= max(component.budget, component.device_bytes):
            return  # already placed with as much room: moving it again would gain nothing
        if budget < component.min_device_bytes or not splittable:
            raise DeviceMemoryError(
                f"{model_key!r} does not fit on {self._device}: {component.key} needs at least "
                f"{component.min_device_bytes / 2**20:.0f} MiB there and only {max(budget, 0) / 2**20:.0f} MiB are free "
                f"beyond the {self._settings.reserve_bytes / 2**20:.0f} MiB reserve, with every unused model offloaded"
            )
        component.device_bytes = int(self._move(component.value, self._device, budget))
        component.budget = budget
        logger.info("loaded %s partly: %.0f of %.0f MiB on %s", component.key, component.device_bytes / 2**20,
                    component.size_bytes / 2**20, self._device)

    def _keep_cpu_reserve(self, model: _Model) -> None:
        """CPU compute: evict other unlocked models while free RAM is below the reserve."""
        reserve = self._settings.reserve_bytes
        for victim in [m for m in self._models.values() if m.locks == 0 and m is not model]:
            if not self._cpu_free_short(reserve):
                break
            self._evict(victim)
        if self._cpu_free_short(reserve):
            logger.warning("free RAM is below the %d MiB reserve for inference", reserve // 2**20)
