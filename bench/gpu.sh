#!/usr/bin/env bash
# GPU benchmark (#26 item 6): Easel vs bare diffusers on this card; a tiny CPU fallback without CUDA.
# Usage: bash bench/gpu.sh [--tiny] [--steps N] [--skip-sdxl] [--skip-train]   (see bench/gpu.py)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export HF_HUB_OFFLINE=1
exec "$PYTHON" -m bench.gpu "$@"
