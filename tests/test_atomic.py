"""Atomic small-file writes (``modules.atomic``): several writers on one data folder (Serve
replicas, two Easel processes) never break each other's write, and a reader never sees half a file."""

from __future__ import annotations

import threading

from modules.atomic import write_text_atomic


def test_concurrent_writers_never_collide(tmp_path):
    target = tmp_path / "config.json"
    errors: list[BaseException] = []
    texts = [f'{{"writer": {i}, "pad": "{"x" * 5000}"}}' for i in range(8)]

    def writer(text: str) -> None:
        try:
            for _ in range(40):
                write_text_atomic(target, text)
        except BaseException as err:  # a shared temporary name made the rename fail
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(text,)) for text in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in texts  # one writer's whole text, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind
