"""launch.sh's set-up with EASEL_SYSTEM_SITE_PACKAGES=1 (Colab reusing its own torch), run for real
against a stand-in Python: a script that makes the venv folder and answers for python and pip, so
what launch.sh asks of them is recorded and nothing is installed. The real install is measured by
bench/colab_setup.sh (docs/experiments/colab-setup.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The venv's python: the system torch check (a script on stdin) answers $FAKE_SYSTEM_TORCH (0: a usable
# torch 2.9.1+cu126); the venv has no torch 2.13.0; the CPU-build check passes; the app exits at once.
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "python $*" >> "$FAKE_LOG"
case "$*" in
  "- "*) cat > /dev/null; [ "${FAKE_SYSTEM_TORCH:-1}" = 0 ] && echo "2.9.1+cu126"; exit "${FAKE_SYSTEM_TORCH:-1}" ;;
  *"__version__.split('+')[0] == "*) exit 1 ;;
esac
exit 0
"""
FAKE_PIP = r"""#!/usr/bin/env bash
echo "pip $*" >> "$FAKE_LOG"
"""
# The "system" Python: only `-m venv [--system-site-packages] DIR`, which makes DIR with the two above.
FAKE_BASE = r"""#!/usr/bin/env bash
echo "base $*" >> "$FAKE_LOG"
dir="${@: -1}"
mkdir -p "$dir/bin"
cp "$FAKE_DIR/venv-python" "$dir/bin/python"
cp "$FAKE_DIR/venv-pip" "$dir/bin/pip"
echo "export PATH=\"$dir/bin:\$PATH\"" > "$dir/bin/activate"
"""


def run_launch(tmp_path: Path, system_site: bool, system_torch_ok: bool) -> tuple[list[str], Path, str]:
    fake = tmp_path / "fake"
    fake.mkdir()
    for name, text in (("python3", FAKE_BASE), ("venv-python", FAKE_PYTHON), ("venv-pip", FAKE_PIP)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    log, venv = tmp_path / "log.txt", tmp_path / "venv"
    env = {**os.environ, "EASEL_VENV": str(venv), "PYTHON": str(fake / "python3"), "FAKE_LOG": str(log),
           "FAKE_DIR": str(fake), "FAKE_SYSTEM_TORCH": "0" if system_torch_ok else "1",
           "PATH": "/usr/bin:/bin"}  # no nvidia-smi: a CPU machine
    env.pop("VIRTUAL_ENV", None)
    env.pop("EASEL_TORCH_INDEX", None)
    if system_site:
        env["EASEL_SYSTEM_SITE_PACKAGES"] = "1"
    else:
        env.pop("EASEL_SYSTEM_SITE_PACKAGES", None)
    r = subprocess.run(["bash", str(ROOT / "launch.sh"), "install", "--help"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return log.read_text().splitlines(), venv, r.stderr


def requirement_files(calls: list[str]) -> list[Path]:
    [install] = [c for c in calls if c.startswith("pip install --disable-pip-version-check")]
    words = install.split()
    return [Path(words[i + 1]) for i, w in enumerate(words) if w == "-r"]


pytestmark = pytest.mark.skipif(shutil.which("sha256sum") is None, reason="launch.sh needs coreutils")


def test_system_site_packages_reuses_the_system_torch(tmp_path):
    calls, venv, stderr = run_launch(tmp_path, system_site=True, system_torch_ok=True)
    assert "using the system's torch 2.9.1+cu126" in stderr
    assert calls[0] == f"base -m venv --system-site-packages {venv}"
    assert not [c for c in calls if c.startswith("pip install") and "torch==" in c]  # no second torch
    [reqs] = requirement_files(calls)
    text = reqs.read_text()
    assert reqs.parent == venv and "diffusers==" in text and "gradio==" in text
    assert not [line for line in text.splitlines() if line.startswith("torch==")]  # the pin would replace it
    assert calls[-1] == "python app.py install --help"


def test_a_system_torch_too_old_or_missing_is_not_used(tmp_path):
    calls, venv, stderr = run_launch(tmp_path, system_site=True, system_torch_ok=False)
    assert "using the system's torch" not in stderr
    assert calls[0] == f"base -m venv --system-site-packages {venv}"
    assert "pip install torch==2.13.0" in calls
    assert requirement_files(calls) == [Path("requirements.txt")]  # the pin kept


def test_without_the_variable_the_venv_is_plain_and_installs_torch(tmp_path):
    calls, venv, _ = run_launch(tmp_path, system_site=False, system_torch_ok=True)
    assert calls[0] == f"base -m venv {venv}"
    assert "pip install torch==2.13.0" in calls
    assert requirement_files(calls) == [Path("requirements.txt")]
