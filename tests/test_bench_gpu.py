"""bench/gpu.sh runs its CPU fallback (tiny sizes) here, so the GPU benchmark cannot rot before a GPU runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_cpu_fallback_runs_and_prints_its_table():
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "EASEL_CPU_BF16": "0"}
    out = subprocess.run(["bash", "bench/gpu.sh", "--tiny"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| tiny")]
    configs = [row.split("|")[2].strip() for row in rows]
    assert configs == ["bare diffusers float32 + SDPA", "Easel defaults, second call",
                       "Easel + token merging 0.5, second call", "Easel --channels-last on, second call",
                       "bare diffusers float32 + SDPA", "Easel defaults, second call",
                       "Easel + token merging 0.5, second call"], out.stdout
    assert all(float(row.split("|")[4]) > 0 for row in rows)  # it/s
    assert "DreamBooth step" in out.stdout
