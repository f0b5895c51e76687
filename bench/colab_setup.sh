#!/usr/bin/env bash
# Colab set-up time, simulated on this machine (#27): a "system" Python that already has torch
# (as Colab's has its CUDA torch; here the CPU wheel of torch 2.13.0 from pip's find-links), then
# Easel's set-up (./launch.sh install --help: create the environment, install requirements.txt,
# start the CLI once) timed three ways, each from a fresh copy of that system:
#   A  a venv with --system-site-packages (EASEL_SYSTEM_SITE_PACKAGES=1): the system's torch is reused
#   B  straight into the system Python (launch.sh pointed at it): the system's torch is reused
#   C  a plain venv: torch is installed into it again (what launch.sh did before)
# Usage: [ORDER="c b a"] bench/colab_setup.sh [WORKDIR]   (~5 GB under WORKDIR, default /tmp/easel-colabsim)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-/tmp/easel-colabsim}"
BASE="$(python3 -c 'import sys; print(sys.base_prefix)')"
rm -rf "$WORK" && mkdir -p "$WORK"

make_system() {  # a copy of the base Python with an empty site-packages, then torch installed in it
  local sys="$1" v
  v="$("$BASE/bin/python3" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  mkdir -p "$sys/bin" "$sys/lib/python$v"
  cp -a "$BASE/bin/python$v" "$sys/bin/" && ln -s "python$v" "$sys/bin/python3" && ln -s "python$v" "$sys/bin/python"
  cp -a "$BASE/include" "$sys/"
  cp -a "$BASE"/lib/libpython* "$sys/lib/" 2>/dev/null || true
  (cd "$BASE/lib/python$v" && tar cf - --exclude=./site-packages --exclude=__pycache__ .) | (cd "$sys/lib/python$v" && tar xf -)
  mkdir -p "$sys/lib/python$v/site-packages"
  "$sys/bin/python3" -m ensurepip --default-pip >/dev/null  # bin/pip too: never another Python's pip
  "$sys/bin/python3" -m pip install -q "torch==2.13.0"
}

activate_for_b() {  # launch.sh sources "$VENV/bin/activate": for B, one that puts this Python and its pip first
  printf 'export PATH="%s/bin:$PATH"\npip() { "%s/bin/python3" -m pip "$@"; }\n' "$1" "$1" > "$1/bin/activate"
}

timed() {  # NAME COMMAND...: run, print and record the seconds
  local name="$1" t0 t1; shift
  t0=$(date +%s.%N)
  "$@" > "$WORK/$name.log" 2>&1 || { echo "$name failed:"; tail -20 "$WORK/$name.log"; exit 1; }
  t1=$(date +%s.%N)
  printf '%s %.1f s\n' "$name" "$(echo "$t1 - $t0" | bc)" | tee -a "$WORK/times.txt"
}

where_torch() {  # PYTHON: the folder torch is imported from
  "$1" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))'
}

make_system "$WORK/system"
cp -a "$WORK/system" "$WORK/system-b"
activate_for_b "$WORK/system-b"
[ -x "$WORK/system-b/bin/pip" ] || { echo "no pip in the system copy: refusing to run B" >&2; exit 1; }
export HF_HUB_OFFLINE=1
run_a() { timed A_venv_system_site env EASEL_SYSTEM_SITE_PACKAGES=1 EASEL_VENV="$WORK/venv-a" \
            PYTHON="$WORK/system/bin/python3" "$ROOT/launch.sh" install --help; }
run_b() { timed B_system_python env EASEL_VENV="$WORK/system-b" "$ROOT/launch.sh" install --help; }
run_c() { timed C_plain_venv env EASEL_VENV="$WORK/venv-c" PYTHON="$WORK/system/bin/python3" \
            "$ROOT/launch.sh" install --help; }
for step in ${ORDER:-a b c}; do "run_$step"; done  # ORDER="c b a": the other way round
echo "torch used by A: $(where_torch "$WORK/venv-a/bin/python")" | tee -a "$WORK/times.txt"
echo "torch used by B: $(where_torch "$WORK/system-b/bin/python3")" | tee -a "$WORK/times.txt"
echo "torch used by C: $(where_torch "$WORK/venv-c/bin/python")" | tee -a "$WORK/times.txt"
du -sh "$WORK/venv-a" "$WORK/venv-c" "$WORK/system" "$WORK/system-b" | tee -a "$WORK/times.txt"
