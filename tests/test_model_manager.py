"""Tests of the model cache with a fake memory probe and fake models (sizes are plain byte counts)."""

from __future__ import annotations

import logging
import threading

import pytest

from modules.model_manager import CacheSettings, ModelInUseError, ModelManager


class FakeModel:
    """A model that only has a size and a device."""

    def __init__(self, key: str, size: int) -> None:
        self.key = key
        self.size = size
        self.device = "cpu"


class FakeMemory:
    """Fake probe: free = total - sizes of the live models placed on that device."""

    def __init__(self, cuda: int = 1000, cpu: int = 10_000) -> None:
        self.totals = {"cuda": cuda, "cpu": cpu}
        self.live: list[FakeModel] = []
        self.events: list[tuple[str, str]] = []

    def free_bytes(self, device: str) -> int:
        return self.totals[device] - sum(m.size for m in self.live if m.device == device)

    def total_bytes(self, device: str) -> int:
        return self.totals[device]

    def move(self, model: FakeModel, device: str) -> None:
        self.events.append(("move", f"{model.key}->{device}"))
        model.device = device

    def discard(self, model: FakeModel) -> None:
        self.events.append(("discard", model.key))
        self.live.remove(model)


class FakeLoader:
    """Loads FakeModels of fixed sizes, records calls, fails for chosen keys."""

    def __init__(self, memory: FakeMemory, sizes: dict[str, int], failing: tuple[str, ...] = ()) -> None:
        self.memory = memory
        self.sizes = sizes
        self.failing = failing
        self.calls: list[str] = []

    def __call__(self, key: str) -> FakeModel:
        self.calls.append(key)
        self.memory.events.append(("load", key))
        if key in self.failing:
            raise OSError(f"corrupt checkpoint {key}")
        model = FakeModel(key, self.sizes[key])
        self.memory.live.append(model)
        return model


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
    **settings: int | None,
) -> tuple[ModelManager, FakeMemory, FakeLoader]:
    memory = memory or FakeMemory()
    loader = FakeLoader(memory, sizes, failing)
    settings.setdefault("reserve_bytes", 0)
    manager = ModelManager(
        load=loader,
        size_of=lambda m: m.size,
        move=memory.move,
        probe=memory,
        compute_device=device,
        settings=CacheSettings(**settings),
        clock=FakeClock(),
        estimate_size=(lambda key: sizes[key]) if estimate else None,
        discard=memory.discard,
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
    memory = FakeMemory(cuda=100)
    manager, _, loader = make_manager({"a": 60, "b": 60}, memory=memory, max_models=1, reserve_bytes=10)
    with caplog.at_level(logging.WARNING), manager.use("a") as a:
        with manager.use("b") as b:
            # Over max_models and over the GPU: proceed rather than deadlock.
            assert keys(manager) == ["b", "a"]
            assert a.device == "cuda" and b.device == "cuda"
            assert a in memory.live
        assert keys(manager) == ["b", "a"]  # "a" is still locked
        with pytest.raises(ModelInUseError, match="in use"):
            manager.unload("a")
    assert "proceeding" in caplog.text
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

    def broken_move(model: FakeModel, device: str) -> None:
        raise RuntimeError("CUDA out of memory")

    manager = ModelManager(
        load=FakeLoader(memory, {"a": 10}),
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
    assert manager.loaded() == []


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
    with manager.use("base") as base, manager.use("refiner") as refiner:
        assert (base.device, refiner.device) == ("cuda", "cuda")
        manager.to_device("base")
        assert refiner.device == "cuda"
