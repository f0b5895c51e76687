#!/usr/bin/env bash
# Easel launcher: creates .venv if missing, installs what requirements*.txt pin, then runs.
#   ./launch.sh                 start Easel (see README)
#   ./launch.sh generate ...    headless txt2img (./launch.sh generate --help)
#   ./launch.sh install SOURCE  install a model from a HF repo id, URL or file (./launch.sh install --help)
#   ./launch.sh test [ARGS]     install the test dependencies too and run the whole test suite
#   ./launch.sh serve ...       the API on Ray Serve replicas (installs requirements-serve.txt on first use; docs/serve.md)
# Environment: EASEL_VENV (default .venv), EASEL_TORCH_INDEX (a pip index URL for torch, e.g.
# https://download.pytorch.org/whl/cpu on a CPU machine whose default torch wheel is the CUDA one),
# EASEL_SYSTEM_SITE_PACKAGES=1 (Colab: a new venv sees the system Python's packages, and a torch
# already there, with CUDA on a GPU machine, is used instead of installing a second copy;
# docs/experiments/colab-setup.md).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${EASEL_VENV:-.venv}"
PY="${PYTHON:-python3}"

SYSTEM_SITE="${EASEL_SYSTEM_SITE_PACKAGES:-0}"
TORCH_MIN="2.6"   # the oldest system torch used (transformers' torch floor); Easel is tested with 2.13.0

if [ ! -x "$VENV/bin/python" ]; then
  if [ "$SYSTEM_SITE" = 1 ]; then "$PY" -m venv --system-site-packages "$VENV"; else "$PY" -m venv "$VENV"; fi
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

has_cuda() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

# True (printing its version) when EASEL_SYSTEM_SITE_PACKAGES=1 and the venv sees a usable system
# torch: at least TORCH_MIN, and a CUDA build where there is a GPU. Then neither torch nor its pin is installed.
use_system_torch() {
  [ "$SYSTEM_SITE" = 1 ] || return 1
  local cuda=0
  if has_cuda; then cuda=1; fi
  python - "$TORCH_MIN" "$cuda" <<'PYEOF' 2>/dev/null
import sys
import torch
least = tuple(int(p) for p in sys.argv[1].split("."))
have = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
ok = have >= least and (sys.argv[2] == "0" or torch.version.cuda)
print(torch.__version__ if ok else "")
sys.exit(0 if ok else 1)
PYEOF
}

# The system's torch instead of install_torch: only the optional CUDA extras that do not pin torch
# (xformers is left out: its wheel pins one torch version and would replace the system's).
system_torch_extras() {
  echo "launch.sh: using the system's torch $1" \
       "(EASEL_SYSTEM_SITE_PACKAGES=1; Easel is tested with 2.13.0)" >&2
  if has_cuda; then
    pip install spandrel==0.4.2 controlnet-aux==0.0.10 ||
      echo "spandrel/controlnet-aux not installed: ESRGAN upscalers and neural preprocessors unavailable"
  fi
}

install_torch() {
  local want="2.13.0"
  if python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$want' else 1)" 2>/dev/null; then
    return
  fi
  if [ -n "${EASEL_TORCH_INDEX:-}" ]; then
    pip install "torch==$want" --index-url "$EASEL_TORCH_INDEX"
  elif has_cuda; then
    # The CUDA build from PyPI, then xformers where a wheel exists (optional: SDPA is the default).
    pip install "torch==$want"
    pip install xformers || echo "xformers not available for this torch; using PyTorch SDPA attention"
    # ESRGAN-family upscalers (models/ESRGAN) load through spandrel, which needs torchvision.
    pip install torchvision==0.28.0 spandrel==0.4.2 || echo "spandrel not installed: ESRGAN upscalers unavailable"
    # ControlNet's neural preprocessors (lineart, depth, openpose, hed) use controlnet-aux, which needs
    # torchvision too; their weights are read from models/ControlNet/annotators only, never downloaded.
    pip install controlnet-aux==0.0.10 || echo "controlnet-aux not installed: lineart/depth/openpose/hed preprocessors unavailable"
  else
    # CPU machine: never pull the multi-GB CUDA build. The CPU wheel is found through pip's
    # configured find-links here; elsewhere set EASEL_TORCH_INDEX=https://download.pytorch.org/whl/cpu
    pip install "torch==$want"
    python -c "import torch, sys; sys.exit(0 if torch.version.cuda is None else 1)" || {
      echo "launch.sh: a CUDA build of torch was installed on a machine without a GPU;" \
           "set EASEL_TORCH_INDEX=https://download.pytorch.org/whl/cpu and run again" >&2; exit 1; }
  fi
}

install_requirements() {
  local stamp="$VENV/.easel-installed-$(echo "$*" | tr -c "A-Za-z0-9.\n" "_")" files=("$@")   # one stamp per set of files
  local sum
  sum=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
    return
  fi
  local args=() f reuse=0 version
  if version=$(use_system_torch); then reuse=1; system_torch_extras "$version"; else install_torch; fi
  for f in "${files[@]}"; do
    if [ "$reuse" = 1 ]; then  # the torch pin would install a second torch over the system's
      grep -v -E '^torch==' "$f" > "$VENV/.easel-$(basename "$f")"
      f="$VENV/.easel-$(basename "$f")"
    fi
    args+=(-r "$f")
  done
  pip install --disable-pip-version-check "${args[@]}"
  echo "$sum" > "$stamp"
}

export TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DIFFUSERS_NO_ADVISORY_WARNINGS=1
# Nothing is fetched from the network, unless the operator allows model downloads (Models tab, API, `install`).
case " $* " in
  *" --allow-downloads "*) export HF_HUB_OFFLINE=0 ;;
  *) export HF_HUB_OFFLINE=1 ;;
esac

install_browser() {
  # Browser tests drive Debian's chromium through Playwright (never `playwright install`).
  [ -x /usr/bin/chromium ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
      echo "launch.sh: could not install chromium; the browser tests will be skipped" >&2
  else
    echo "launch.sh: /usr/bin/chromium is missing (apt-get install chromium); the browser tests will be skipped" >&2
  fi
}

if [ "${1:-}" = "test" ]; then
  shift
  install_requirements requirements.txt requirements-dev.txt requirements-serve.txt  # ray: the Serve tests run too
  install_browser
  exec python -m pytest "$@"
fi
if [ "${1:-}" = "serve" ]; then
  shift
  install_requirements requirements.txt requirements-serve.txt
  exec python -m modules.serve "$@"
fi
install_requirements requirements.txt
exec python app.py "$@"
