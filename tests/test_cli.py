"""The headless command line, run as a user would: a subprocess of app.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from modules.images import read_infotext

ROOT = Path(__file__).resolve().parent.parent


def app(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


def test_generate_writes_pngs_and_prints_their_paths(data_dir, tmp_path):
    out = tmp_path / "out"
    r = app("generate", "--data-dir", str(data_dir), "--prompt", "a red circle", "--steps", "2",
            "--sampler", "Euler a", "--cfg-scale", "7", "--seed", "42", "--width", "32", "--height", "32",
            "--batch-size", "2", "--checkpoint", "tiny-a", "--out", str(out))
    assert r.returncode == 0, r.stderr
    paths = [Path(p) for p in r.stdout.split()]
    assert [p.name for p in paths] == ["00000-42.png", "00001-43.png"]
    assert all(p.parent == out for p in paths)
    assert Image.open(paths[0]).size == (32, 32)
    text = read_infotext(paths[1])
    assert text.startswith("a red circle\n") and "Seed: 43," in text and "Model: tiny-a" in text


def test_generate_with_a_refiner(data_dir, tmp_path):
    r = app("generate", "--data-dir", str(data_dir), "--prompt", "a red circle", "--steps", "4", "--seed", "5",
            "--width", "32", "--height", "32", "--checkpoint", "tiny-a", "--refiner-checkpoint", "tiny-b",
            "--refiner-switch-at", "0.5", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    text = read_infotext(Path(r.stdout.split()[0]))
    assert "Model: tiny-a" in text and "Refiner: tiny-b" in text and "Refiner switch at: 0.5" in text


def test_generate_errors_are_one_line_and_exit_2(data_dir):
    for args, needle in (
        (["--width", "33"], "width: must be a multiple of 8"),
        (["--sampler", "Bogus"], "Euler a"),
        (["--checkpoint", "missing"], "not found; available"),
        (["--refiner-switch-at", "1.5"], "refiner_switch_at"),
    ):
        r = app("generate", "--data-dir", str(data_dir), "--steps", "1", *args)
        assert r.returncode == 2, r.stdout
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0], r.stderr
        assert "Traceback" not in r.stderr


def test_list_checkpoints_shows_a1111_titles(data_dir):
    r = app("generate", "--data-dir", str(data_dir), "--list-checkpoints")
    assert r.returncode == 0
    titles = r.stdout.splitlines()
    assert "tiny-folder" in titles
    assert any(t.startswith("tiny-a.safetensors [") and len(t.split("[")[1]) == 11 for t in titles)
