"""Tests of the model cache with a fake memory probe and fake models (sizes are plain byte counts)."""

from __future__ import annotations

import logging
import threading

import pytest

from modules.model_manager import (
    CacheSettings,
    ComponentKey,
    DeviceMemoryError,
    ModelInUseError,
    ModelManager,
    ModelRecipe,
)


class FakeModel:
    """A component that only has a size, a least on-device size, and the bytes it has on the device."""

    def __init__(self, key: str, size: int, min_bytes: int | None = None) -> None:
        self.key = key
        self.size = size
        self.min_bytes = size if min_bytes is None else min_bytes
        self.device_bytes = 0

    @property
    def device(self) -> str:
        return "cpu" if self.device_bytes == 0 else "cuda" if self.device_bytes == self.size else "partial"


class FakeMemory:
    """Fake probe: free = total - bytes of the live components placed on that device (all of them on the CPU)."""

    def __init__(self, cuda: int = 1000, cpu: int = 10_000) -> None:
        self.totals = {"cuda": cuda, "cpu": cpu}
        self.live: list[FakeModel] = []
        self.events: list[tuple[str, str]] = []

    def free_bytes(self, device: str) -> int:
        if device == "cpu":
            return self.totals[device] - sum(m.size for m in self.live if m.device == "cpu")
        return self.totals[device] - sum(m.device_bytes for m in self.live)

    def total_bytes(self, device: str) -> int:
        return self.totals[device]

    def move(self, model: FakeModel, device: str, max_bytes: int | None = None) -> int:
        self.events.append(("move", f"{model.key}->{device}" + (f"[{max_bytes}]" if max_bytes is not None else "")))
        model.device_bytes = 0 if device == "cpu" else model.size if max_bytes is None else min(max_bytes, model.size)
        return model.device_bytes

    def discard(self, models: list[FakeModel]) -> None:
        self.events.append(("discard", *(model.key for model in models)))
        for model in models:
            self.live.remove(model)


class FakeLoader:
    """Recipes of fake models: a model key is made of the components ``parts[key]`` names (by default one
    component of the same name); loads FakeModels of fixed sizes, records calls, fails for chosen keys."""

    def __init__(self, memory: FakeMemory, sizes: dict[str, int], failing: tuple[str, ...] = (),
                 parts: dict[str, dict[str, str]] | None = None, min_bytes: dict[str, int] | None = None,
                 estimate: bool = False) -> None:
        self.memory = memory
        self.sizes = sizes
        self.failing = failing
        self.parts = parts or {}
        self.min_bytes = min_bytes or {}
        self.estimate = estimate
        self.calls: list[str] = []

    def load(self, name: str) -> FakeModel:
        self.calls.append(name)
        self.memory.events.append(("load", name))
        if name in self.failing:
            raise OSError(f"corrupt checkpoint {name}")
        model = FakeModel(name, self.sizes[name], self.min_bytes.get(name))
        self.memory.live.append(model)
        return model

    def __call__(self, key: str) -> ModelRecipe:
        names = self.parts.get(key, {"model": key})
        by_part = {part: ComponentKey(part, name) for part, name in names.items()}

        def assemble(loaded: dict) -> FakeModel | dict:
            return loaded["model"] if list(loaded) == ["model"] else loaded

        return ModelRecipe(by_part, lambda part: self.load(names[part]), assemble,
                           (lambda part: self.sizes[names[part]]) if self.estimate else None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def make_manager(
    sizes: dict[str, int],
    *,
    device: str = "cuda",
    memory: FakeMemory | None = None,
    failing: tuple[str, ...] = (),
    estimate: bool = False,
    parts: dict[str, dict[str, str]] | None = None,
    min_bytes: dict[str, int] | None = None,
    **settings,
) -> tuple[ModelManager, FakeMemory, FakeLoader]:
    memory = memory or FakeMemory()
    loader = FakeLoader(memory, sizes, failing, parts, min_bytes, estimate)
    settings.setdefault("reserve_bytes", 0)
    manager = ModelManager(
        recipe=loader,
        size_of=lambda m: m.size,
        move=memory.move,
        probe=memory,
        compute_device=device,
        settings=CacheSettings(**settings),
        clock=FakeClock(),
        discard=memory.discard,
        min_device_bytes=lambda m: m.min_bytes,
    )
    return manager, memory, loader


def use_all(manager: ModelManager, *keys: str) -> None:
    for key in keys:
        with manager.use(key):
            pass


def keys(manager: ModelManager) -> list[str]:
    return [info.key for info in manager.loaded()]


def test_use_yields_the_model_on_the_compute_device():
    manager, _, _ = make_manager({"a": 10})
    with manager.use("a") as model:
        assert model.key == "a"
        assert model.device == "cuda"
        info = manager.loaded()[0]
        assert (info.key, info.size_bytes, info.device, info.locked) == ("a", 10, "cuda", True)
    assert manager.loaded()[0].locked is False


def test_cached_use_does_not_load_or_move_again():
    manager, memory, loader = make_manager({"a": 10, "b": 10})
    use_all(manager, "a", "b")
    events_before = list(memory.events)
    with manager.use("a") as model:
        assert model.device == "cuda"
    assert loader.calls == ["a", "b"]
    assert memory.events == events_before


def test_eviction_is_least_recently_used():
    manager, memory, _ = make_manager({"a": 10, "b": 10, "c": 10}, max_models=2)
    use_all(manager, "a", "b", "a", "c")
    assert keys(manager) == ["c", "a"]
    assert ("discard", "b") in memory.events
    assert ("discard", "a") not in memory.events


def test_max_models_is_respected():
    sizes = {k: 10 for k in "abcdef"}
    manager, memory, _ = make_manager(sizes, max_models=3)
    for key in sizes:
        use_all(manager, key)
        assert len(manager.loaded()) <= 3
    assert keys(manager) == ["f", "e", "d"]
    assert [m.key for m in memory.live] == ["d", "e", "f"]


def test_max_ram_bytes_is_respected_after_load():
    manager, _, _ = make_manager({"a": 60, "b": 50, "c": 30}, max_models=5, max_ram_bytes=100)
    use_all(manager, "a", "b")
    assert keys(manager) == ["b"]
    use_all(manager, "c")
    assert keys(manager) == ["c", "b"]


def test_size_estimate_evicts_before_loading():
    manager, memory, _ = make_manager({"a": 60, "b": 50}, max_models=5, max_ram_bytes=100, estimate=True)
    use_all(manager, "a", "b")
    assert memory.events.index(("discard", "a")) < memory.events.index(("load", "b"))


def test_locked_models_are_never_evicted_nor_offloaded(caplog):
    memory = FakeMemory(cuda=130)
    manager, _, loader = make_manager({"a": 60, "b": 60}, memory=memory, max_models=1, reserve_bytes=10)
    with caplog.at_level(logging.WARNING), manager.use("a") as a:
        with manager.use("b") as b:
            # Over max_models: exceeded for a while rather than deadlock.
            assert keys(manager) == ["b", "a"]
            assert a.device == "cuda" and b.device == "cuda"
            assert a in memory.live
        assert keys(manager) == ["b", "a"]  # "a" is still locked
        with pytest.raises(ModelInUseError, match="in use"):
            manager.unload("a")
    assert "limits exceeded" in caplog.text
    assert keys(manager) == ["b"]  # limit enforced once "a" is released
    assert loader.calls == ["a", "b"]


def test_offload_to_cpu_before_loading_onto_a_full_gpu_keeps_the_reserve():
    memory = FakeMemory(cuda=200)
    manager, _, _ = make_manager({k: 50 for k in "abcd"}, memory=memory, max_models=4, reserve_bytes=20)
    use_all(manager, "a", "b", "c")
    assert memory.free_bytes("cuda") == 50
    with manager.use("d") as d:
        assert d.device == "cuda"
        assert memory.free_bytes("cuda") >= 20
    devices = {info.key: info.device for info in manager.loaded()}
    assert devices == {"a": "cpu", "b": "cuda", "c": "cuda", "d": "cuda"}  # only the LRU one left
    assert memory.events.index(("move", "a->cpu")) < memory.events.index(("move", "d->cuda"))


def test_reserve_is_kept_even_for_a_model_already_on_the_device():
    memory = FakeMemory(cuda=100)
    manager, _, _ = make_manager({"a": 40, "b": 40}, memory=memory, reserve_bytes=0)
    use_all(manager, "a", "b")
    manager.set_settings(CacheSettings(reserve_bytes=50))
    use_all(manager, "b")
    devices = {info.key: info.device for info in manager.loaded()}
    assert devices == {"a": "cpu", "b": "cuda"}


def test_failing_load_leaves_the_cache_as_it_was():
    manager, memory, _ = make_manager({"a": 10, "b": 10}, failing=("bad",), max_models=3)
    use_all(manager, "a", "b")
    before = manager.loaded()
    with pytest.raises(OSError, match="corrupt checkpoint bad"):
        with manager.use("bad"):
            pytest.fail("the block must not run when loading fails")
    assert manager.loaded() == before
    assert not manager.is_loaded("bad")
    with pytest.raises(OSError):
        manager.ensure_loaded("bad")
    assert manager.loaded() == before


def test_failing_move_releases_the_lock():
    memory = FakeMemory()

    def broken_move(model: FakeModel, device: str, max_bytes: int | None) -> int:
        raise RuntimeError("CUDA out of memory")

    manager = ModelManager(
        recipe=FakeLoader(memory, {"a": 10}),
        size_of=lambda m: m.size,
        move=broken_move,
        probe=memory,
        compute_device="cuda",
        settings=CacheSettings(reserve_bytes=0),
    )
    with pytest.raises(RuntimeError, match="out of memory"):
        with manager.use("a"):
            pass
    info = manager.loaded()[0]
    assert (info.key, info.locked, info.device) == ("a", False, "cpu")
    manager.unload("a")
    assert manager.loaded() == [] and manager.components() == []


def test_set_settings_evicts_at_once():
    manager, _, _ = make_manager({k: 30 for k in "abc"}, max_models=3)
    use_all(manager, "a", "b", "c")
    manager.set_settings(CacheSettings(max_models=3, max_ram_bytes=70, reserve_bytes=0))
    assert keys(manager) == ["c", "b"]
    manager.set_settings(CacheSettings(max_models=1, reserve_bytes=0))
    assert keys(manager) == ["c"]


def test_cpu_compute_keeps_models_on_cpu_and_frees_ram_for_the_reserve():
    memory = FakeMemory(cpu=100)
    manager, _, _ = make_manager({"a": 40, "b": 40}, device="cpu", memory=memory, max_models=3, reserve_bytes=30)
    use_all(manager, "a")
    with manager.use("b") as b:
        assert b.device == "cpu"
        assert memory.free_bytes("cpu") >= 30
    assert keys(manager) == ["b"]
    assert not any(kind == "move" for kind, _ in memory.events)


def test_ensure_loaded_loads_into_ram_only():
    manager, _, loader = make_manager({"a": 10})
    manager.ensure_loaded("a")
    manager.ensure_loaded("a")
    assert loader.calls == ["a"]
    assert manager.is_loaded("a")
    assert manager.loaded()[0].device == "cpu"


def test_loaded_lists_most_recent_first_with_clock_times():
    manager, _, _ = make_manager({k: 10 for k in "abc"}, max_models=3)
    use_all(manager, "a", "b", "c", "a")
    infos = manager.loaded()
    assert [i.key for i in infos] == ["a", "c", "b"]
    assert infos[0].last_used > infos[1].last_used > infos[2].last_used


def test_unload_and_clear():
    manager, memory, _ = make_manager({k: 10 for k in "abc"}, max_models=3)
    use_all(manager, "a", "b", "c")
    manager.unload("b")
    assert keys(manager) == ["c", "a"]
    with pytest.raises(KeyError, match="not loaded"):
        manager.unload("b")
    with manager.use("a"):
        manager.clear()
        assert keys(manager) == ["a"]
    manager.clear()
    assert manager.loaded() == [] and memory.live == []


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_models"):
        CacheSettings(max_models=0)
    with pytest.raises(ValueError, match="reserve_bytes"):
        CacheSettings(reserve_bytes=-1)


def test_two_threads_using_different_keys():
    memory = FakeMemory(cuda=1000)
    manager, _, loader = make_manager({"a": 100, "b": 100}, memory=memory, max_models=2, reserve_bytes=10)
    errors: list[BaseException] = []

    def worker(key: str) -> None:
        try:
            for _ in range(200):
                with manager.use(key) as model:
                    assert model.key == key and model.device == "cuda"
                manager.loaded()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert sorted(loader.calls) == ["a", "b"]
    assert all(not info.locked for info in manager.loaded())


def test_two_models_of_one_job_share_one_models_room():
    """The refiner's case: both locked; inside ``share_device`` they take turns on the device, the one
    not in use offloaded (never evicted); a third locked model (a ControlNet) is not touched; on leaving,
    the first is on the device again."""
    memory = FakeMemory(cuda=130)  # room for one of the two beside the ControlNet
    manager, _, loader = make_manager({"base": 60, "refiner": 60, "cn": 20}, memory=memory, max_models=3)
    with manager.use("base") as base, manager.use("cn") as cn:
        manager.ensure_loaded("refiner")
        with manager.share_device("base", "refiner"), manager.use("refiner") as refiner:
            assert (base.device, refiner.device) == ("cpu", "cuda")
            manager.to_device("base")
            assert (base.device, refiner.device, cn.device) == ("cuda", "cpu", "cuda")
            manager.to_device("refiner")
            assert (base.device, refiner.device, cn.device) == ("cpu", "cuda", "cuda")
        assert (base.device, refiner.device) == ("cuda", "cpu") and loader.calls == ["base", "cn", "refiner"]
    assert set(keys(manager)) == {"base", "cn", "refiner"}


def test_without_sharing_locked_models_stay_on_the_device():
    memory = FakeMemory(cuda=100)
    manager, _, _ = make_manager({"base": 60, "refiner": 60}, memory=memory, max_models=2)
    with manager.use("base") as base:
        with pytest.raises(DeviceMemoryError, match="'refiner' does not fit on cuda"):
            with manager.use("refiner"):
                pytest.fail("the block must not run without room")
        assert base.device == "cuda"
    assert not any(info.locked for info in manager.loaded())


# -- components: typed keys, sharing, loads outside the lock, the device budget ---------------------

FINE_TUNES = {  # two fine-tunes of one base: their own UNets, the same VAE and text encoder
    "ft1": {"unet": "unet1", "vae": "vae", "text_encoder": "te"},
    "ft2": {"unet": "unet2", "vae": "vae", "text_encoder": "te"},
}
FT_SIZES = {"unet1": 50, "unet2": 50, "vae": 10, "te": 20}


def test_component_keys_are_typed_values():
    key = ComponentKey("vae", "ab" * 32)
    assert key == ComponentKey("vae", "ab" * 32) and hash(key) == hash(ComponentKey("vae", "ab" * 32))
    assert key != ComponentKey("unet", "ab" * 32)
    with pytest.raises(AttributeError):
        key.kind = "unet"  # frozen
    assert str(key) == "vae:abababababab"


def test_switching_fine_tunes_loads_only_the_other_unet():
    manager, memory, loader = make_manager(FT_SIZES, parts=FINE_TUNES, max_models=2)
    with manager.use("ft1") as first:
        assert set(first) == {"unet", "vae", "text_encoder"}
    with manager.use("ft2") as second:
        assert second["vae"] is first["vae"] and second["text_encoder"] is first["text_encoder"]
        assert second["unet"] is not first["unet"]
    assert loader.calls == ["unet1", "vae", "te", "unet2"]  # the switch loaded only the UNet
    infos = {info.key: info for info in manager.components()}
    assert infos[ComponentKey("vae", "vae")].models == ("ft1", "ft2")
    assert sum(info.size_bytes for info in manager.components()) == 130  # shared ones counted once
    assert [(i.key, i.size_bytes) for i in manager.loaded()] == [("ft2", 80), ("ft1", 80)]


def test_shared_components_survive_the_eviction_of_one_model():
    manager, memory, loader = make_manager(FT_SIZES, parts=FINE_TUNES, max_models=1)
    use_all(manager, "ft1", "ft2")
    assert keys(manager) == ["ft2"] and loader.calls == ["unet1", "vae", "te", "unet2"]
    assert ("discard", "unet1") in memory.events and ("discard", "vae") not in memory.events
    use_all(manager, "ft1")
    assert loader.calls[-1] == "unet1" and ("discard", "unet2") in memory.events


def test_an_evicted_models_components_are_discarded_together():
    """One discard call per eviction (it collects garbage: 0.3 s each in the app), not one per component."""
    manager, memory, _ = make_manager(FT_SIZES, parts=FINE_TUNES, max_models=2)
    use_all(manager, "ft1")
    manager.clear()
    discards = [event for event in memory.events if event[0] == "discard"]
    assert len(discards) == 1 and sorted(discards[0][1:]) == ["te", "unet1", "vae"]
    assert memory.live == [] and manager.components() == []


def test_byte_limit_counts_shared_components_once():
    manager, _, _ = make_manager(FT_SIZES, parts=FINE_TUNES, max_models=5, max_ram_bytes=130)
    use_all(manager, "ft1", "ft2")
    assert keys(manager) == ["ft2", "ft1"]  # 130 bytes: both fit
    manager.set_settings(CacheSettings(max_models=5, max_ram_bytes=129, reserve_bytes=0))
    assert keys(manager) == ["ft2"] and sum(i.size_bytes for i in manager.components()) == 80


class GatedLoader(FakeLoader):
    """Loads that wait at a barrier: they only finish when ``parties`` loads run at the same time."""

    def __init__(self, memory: FakeMemory, sizes: dict[str, int], parties: int) -> None:
        super().__init__(memory, sizes)
        self.barrier = threading.Barrier(parties, timeout=5)
        self.lock = threading.Lock()

    def load(self, name: str) -> FakeModel:
        self.barrier.wait()
        with self.lock:
            return super().load(name)


def run_threads(target, args_list) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrapped(*args):
        try:
            target(*args)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=args) for args in args_list]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    return errors


def test_two_different_loads_run_in_parallel():
    memory = FakeMemory()
    loader = GatedLoader(memory, {"a": 10, "b": 10}, parties=2)  # a serialised load would break the barrier
    manager = ModelManager(loader, lambda m: m.size, memory.move, memory, "cuda", CacheSettings(reserve_bytes=0))
    assert run_threads(manager.ensure_loaded, [("a",), ("b",)]) == []
    assert sorted(loader.calls) == ["a", "b"]


def test_the_same_key_is_loaded_once_by_concurrent_callers():
    memory = FakeMemory()
    loader = FakeLoader(memory, {"a": 10})
    started, finish = threading.Event(), threading.Event()
    plain_load = loader.load

    def slow_load(name: str) -> FakeModel:
        started.set()
        assert finish.wait(5)
        return plain_load(name)

    loader.load = slow_load
    manager = ModelManager(loader, lambda m: m.size, memory.move, memory, "cuda", CacheSettings(reserve_bytes=0))
    results: list[FakeModel] = []

    def use_a() -> None:
        with manager.use("a") as model:
            results.append(model)

    first = threading.Thread(target=use_a)
    first.start()
    assert started.wait(5)
    second = threading.Thread(target=use_a)
    second.start()  # waits on the first one's in-flight load
    finish.set()
    first.join(10)
    second.join(10)
    assert loader.calls == ["a"] and len(results) == 2 and results[0] is results[1]


def test_a_failed_load_fails_its_waiters_and_can_be_retried():
    manager, _, loader = make_manager({"bad": 10}, failing=("bad",))
    errors = run_threads(manager.ensure_loaded, [("bad",), ("bad",)])
    assert len(errors) == 2 and all(isinstance(e, OSError) for e in errors)
    loader.failing = ()
    manager.ensure_loaded("bad")
    assert manager.is_loaded("bad")


def test_short_budget_offloads_unused_components_lru_first():
    memory = FakeMemory(cuda=100)
    sizes = {"unet1": 50, "unet2": 50, "unet3": 50, "vae": 10, "te": 20}
    parts = {**FINE_TUNES, "ft3": {"unet": "unet3", "vae": "vae", "text_encoder": "te"}}
    manager, _, _ = make_manager(sizes, memory=memory, parts=parts, max_models=3)
    use_all(manager, "ft1")
    with manager.use("ft2") as model:  # 30 shared + 50 + 50 > 100: unet1 goes to the CPU
        assert model["unet"].device == "cuda" and model["vae"].device == "cuda"
    placed = {info.key.digest: info.device_bytes for info in manager.components()}
    assert placed == {"unet1": 0, "unet2": 50, "vae": 10, "te": 20}
    assert memory.events.index(("move", "unet1->cpu")) < memory.events.index(("move", "unet2->cuda"))


def test_short_budget_loads_the_unet_partly_then_errors_only_when_impossible():
    memory = FakeMemory(cuda=70)
    manager, _, _ = make_manager(FT_SIZES, memory=memory, parts=FINE_TUNES, min_bytes={"unet1": 15, "unet2": 45},
                                 reserve_bytes=5)
    with manager.use("ft1") as model:  # 70 - 5 reserve - 30 (vae, te) = 35 bytes for a 50-byte UNet
        assert (model["unet"].device_bytes, model["vae"].device, model["text_encoder"].device) == (35, "cuda", "cuda")
        assert manager.loaded()[0].device == "partial"
    assert ("move", "unet1->cuda[35]") in memory.events
    with pytest.raises(DeviceMemoryError, match=r"'ft2' does not fit on cuda: unet:unet2 needs at least"):
        with manager.use("ft2"):  # unet1 offloaded first; 35 bytes are still below unet2's 45
            pytest.fail("the block must not run")
    assert not any(info.locked for info in manager.components())


def test_locked_components_are_never_offloaded_for_another_model():
    memory = FakeMemory(cuda=100)
    sizes = {"unet1": 60, "cn": 30, "unet2": 60}
    parts = {"ft1": {"unet": "unet1"}, "cn": {"controlnet": "cn"}, "ft2": {"unet": "unet2"}}
    manager, _, _ = make_manager(sizes, memory=memory, parts=parts, min_bytes={"unet2": 5}, max_models=3)
    with manager.use("ft1") as first:
        with manager.use("ft2") as second:  # unet1 is locked by the running job: unet2 gets the 40 left
            assert first["unet"].device == "cuda" and second["unet"].device_bytes == 40
        with manager.use("cn") as cn:
            assert cn["controlnet"].device == "cuda" and first["unet"].device == "cuda"
            assert second["unet"].device == "cpu"  # unlocked: offloaded for the ControlNet


def test_medvram_offloads_after_the_job_and_lowvram_keeps_the_least():
    memory = FakeMemory(cuda=1000)
    manager, _, _ = make_manager(FT_SIZES, memory=memory, parts=FINE_TUNES, min_bytes={"unet1": 15},
                                 memory_mode="medvram")
    with manager.use("ft1") as model:
        assert model["unet"].device == "cuda"
    assert model["unet"].device == "cpu" and model["vae"].device == "cpu"
    manager.set_settings(CacheSettings(reserve_bytes=0, memory_mode="lowvram"))
    with manager.use("ft1") as model:
        assert (model["unet"].device_bytes, model["vae"].device) == (15, "cuda")
    assert memory.free_bytes("cuda") == 1000
    with pytest.raises(ValueError, match="memory_mode"):
        CacheSettings(memory_mode="highvram")


def test_a_partly_placed_unet_is_not_moved_again_without_more_room():
    memory = FakeMemory(cuda=70)
    manager, _, _ = make_manager(FT_SIZES, memory=memory, parts=FINE_TUNES, min_bytes={"unet1": 15})
    use_all(manager, "ft1")
    moves = [e for e in memory.events if e[0] == "move"]
    use_all(manager, "ft1", "ft1")
    assert [e for e in memory.events if e[0] == "move"] == moves  # no re-placement per job
    memory.totals["cuda"] = 200  # room appeared (another process freed memory): now it goes wholly
    with manager.use("ft1") as model:
        assert model["unet"].device == "cuda"


def test_one_loaded_record_per_model_whatever_its_components(caplog):
    """The Serve replica counts checkpoint loads by the cache's "loaded ..." records."""
    manager, _, _ = make_manager(FT_SIZES, parts=FINE_TUNES)
    with caplog.at_level(logging.INFO, logger="modules.model_manager"):
        use_all(manager, "ft1", "ft2", "ft1")
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert len(loaded) == 2 and loaded[0].startswith("loaded 'ft1'") and "3 components" in loaded[0]
