"""colab/easel.ipynb runs top to bottom under nbclient up to the launch cell: google.colab stubbed, the
repository cloned from this checkout, and the model list pointed at a local file host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.model_host import ModelHost, create_host_app
from tests.served import served
from tests.test_installer import lora_bytes

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "colab" / "easel.ipynb"


def stub_google_colab(folder: Path) -> Path:
    """A ``google.colab`` package whose ``drive.mount`` only makes the folder."""
    package = folder / "google" / "colab"
    package.mkdir(parents=True)
    (folder / "google" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "drive.py").write_text("import os\n\ndef mount(path):\n    os.makedirs(path, exist_ok=True)\n")
    (package / "userdata.py").write_text("def get(name):\n    return 'hf_test_token'\n")
    return folder


def test_notebook_clones_installs_and_reaches_the_launch_cell(tmp_path, monkeypatch):
    head = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0 or head.stdout.strip() == "HEAD":
        pytest.skip("needs a checkout on a branch to clone")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert "launch.sh --share" in nb.cells[code[-1]].source
    host = ModelHost()
    host.files["1"] = ("colab-lora.safetensors", lora_bytes(5))
    host.repos["someone/style"] = {"style.safetensors": lora_bytes(6)}
    with served(create_host_app(host)) as port:
        overrides = {"REPO_URL": ROOT.as_uri(), "BRANCH": head.stdout.strip(), "EASEL_DIR": str(tmp_path / "easel"),
                     "MODELS": [f"http://127.0.0.1:{port}/api/download/models/1", "someone/style"], "USE_DRIVE": True,
                     "DRIVE_MODELS_DIR": str(tmp_path / "drive")}
        settings_cell = code[0]
        nb.cells.insert(settings_cell + 1, nbformat.v4.new_code_cell(
            "\n".join(f"{k} = {json.dumps(v) if not isinstance(v, bool) else v}" for k, v in overrides.items())))
        launch = next(i for i, c in enumerate(nb.cells) if "launch.sh --share" in c.source and c.cell_type == "code")
        nb.cells = nb.cells[:launch]  # everything before the launch cell (it serves until stopped)
        nb.cells.append(nbformat.v4.new_code_cell(  # the environment launch.sh gets in the launch cell
            'print("launch env:", os.environ.get("EASEL_SYSTEM_SITE_PACKAGES"))'))
        monkeypatch.setenv("PYTHONPATH", str(stub_google_colab(tmp_path / "stubs")))
        monkeypatch.setenv("EASEL_VENV", str(Path(sys.executable).parent.parent))  # this venv: no new install
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")  # the hub, here
        monkeypatch.delenv("HF_TOKEN", raising=False)
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    installed = tmp_path / "easel" / "models" / "Lora" / "colab-lora.safetensors"
    assert installed.read_bytes() == host.files["1"][1], outputs
    assert "installed lora colab-lora.safetensors" in outputs
    assert (tmp_path / "easel" / "models" / "Lora" / "style.safetensors").is_file(), outputs
    assert host.tokens and set(host.tokens) == {"Bearer hf_test_token"}  # the Colab secret reached the hub
    assert (tmp_path / "drive").is_dir()
    assert "launch env: 1" in outputs  # launch.sh reuses Colab's torch (a --system-site-packages venv)
    assert os.path.isfile(tmp_path / "easel" / "launch.sh")


def test_notebook_reuses_colabs_torch_before_the_first_launch_sh():
    """EASEL_SYSTEM_SITE_PACKAGES=1 is set before any cell runs launch.sh (the install cell makes the venv)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    first_launch = next(i for i, c in enumerate(code) if "launch.sh" in c)
    sets = [i for i, c in enumerate(code) if 'os.environ["EASEL_SYSTEM_SITE_PACKAGES"] = "1"' in c]
    assert sets and sets[0] < first_launch
    # what launch.sh does with it: tests/test_launch_sh.py
