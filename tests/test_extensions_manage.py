"""Installing, updating, enabling and disabling extensions; the command-line flags that choose what loads."""

from __future__ import annotations

import shutil
import subprocess
import zipfile

import pytest

from modules.a1111_compat import manage
from modules.a1111_compat.loader import load_extensions
from tests.test_extensions import FIXTURES

GIT = shutil.which("git")


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path):
    """A local git repository holding the rewriter fixture extension (and an install.py)."""
    src = tmp_path / "src" / "sd-rewriter"
    shutil.copytree(FIXTURES / "rewriter", src)
    (src / "install.py").write_text("raise SystemExit('install.py must not run at start')\n")
    git(src, "init", "-q", "-b", "main")
    git(src, "add", ".")
    git(src, "commit", "-qm", "first")
    return src


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_install_from_a_local_git_repo_then_update(services, repo):
    message = manage.install(services.settings, str(repo))
    assert "Installed sd-rewriter" in message and "install.py, which Easel does not run" in message
    target = services.settings.data_dir / "extensions" / "sd-rewriter"
    assert (target / "scripts" / "rewriter.py").exists()
    extensions = load_extensions(services)
    try:
        [ext] = [e for e in extensions.items if e.name == "sd-rewriter"]
        assert ext.active and ext.git_info()["remote"] == str(repo.resolve()) and len(ext.git_info()["version"]) == 8
        assert "already up to date" in manage.update(ext)
        (repo / "README.md").write_text("new\n")
        git(repo, "add", ".")
        git(repo, "commit", "-qm", "second")
        assert "updated" in manage.update(ext) and (target / "README.md").exists()
        with pytest.raises(manage.ExtensionError, match="already installed"):
            manage.install(services.settings, str(repo))
    finally:
        extensions.unload()


def test_install_from_a_zip_strips_the_top_folder_and_refuses_escapes(services, tmp_path):
    archive = tmp_path / "grumpy-main.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for file in (FIXTURES / "grumpy").rglob("*.py"):
            z.write(file, "grumpy-main/" + file.relative_to(FIXTURES / "grumpy").as_posix())
    assert "Installed grumpy-main" in manage.install(services.settings, str(archive))
    assert (services.settings.data_dir / "extensions" / "grumpy-main" / "scripts" / "grumpy.py").exists()
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside.py", "x = 1")
    with pytest.raises(manage.ExtensionError, match="would land outside"):
        manage.install(services.settings, str(evil))
    assert not (services.settings.data_dir / "extensions" / "evil").exists()


def test_install_from_a_folder_and_bad_sources(services, tmp_path):
    assert "Installed grumpy" in manage.install(services.settings, str(FIXTURES / "grumpy"))
    with pytest.raises(manage.ExtensionError, match="neither a git URL nor an existing folder"):
        manage.install(services.settings, str(tmp_path / "missing"))
    with pytest.raises(manage.ExtensionError, match="name"):
        manage.install(services.settings, str(FIXTURES / "grumpy"), name="../x")


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_install_from_an_unreachable_url_is_one_clear_line(services):
    with pytest.raises(manage.ExtensionError) as err:
        manage.install(services.settings, "https://unreachable.invalid/owner/sd-ext.git")
    text = str(err.value)
    assert text.startswith("git clone failed") and "\n" not in text
    assert not (services.settings.data_dir / "extensions" / "sd-ext").exists()


def test_enable_disable_round_trip_is_saved_and_applied_on_reload(services, data_dir):
    shutil.copytree(FIXTURES / "rewriter", data_dir / "extensions" / "rewriter")
    load_extensions(services)
    assert services.extensions.find_script("Prompt rewriter", False) is not None
    assert manage.set_enabled(services, {"rewriter": False}) == ["rewriter"]
    assert '"disabled_extensions": [\n    "rewriter"\n  ]' in services.settings.config_file.read_text()
    extensions = manage.reload(services)
    assert extensions.find_script("Prompt rewriter", False) is None
    assert not services.hooks.hooks("app_started")  # its callbacks went with it
    assert manage.set_enabled(services, {"rewriter": True}) == []
    extensions = manage.reload(services)
    assert extensions.find_script("Prompt rewriter", False) is not None
    with pytest.raises(manage.ExtensionError, match="unknown extension"):
        manage.set_enabled(services, {"nope": True})
    extensions.unload()


def test_command_line_preload_flags_and_disable_flags(data_dir, capsys):
    from modules.cli import extensions_mode, parse_serve_args

    shutil.copytree(FIXTURES / "rewriter", data_dir / "extensions" / "rewriter")
    args, errors = parse_serve_args(["--data-dir", str(data_dir), "--rewriter-flag", "x"])
    assert args.rewriter_flag == "x" and errors == {} and extensions_mode(args) == "none"
    with pytest.raises(SystemExit):  # no preload: the extension's flag does not exist
        parse_serve_args(["--data-dir", str(data_dir), "--disable-extra-extensions", "--rewriter-flag", "x"])
    other = data_dir / "elsewhere"
    shutil.copytree(FIXTURES / "grumpy", other / "grumpy")
    args, _ = parse_serve_args(["--data-dir", str(data_dir), "--extensions-dir", str(other)])
    assert not hasattr(args, "rewriter_flag") and extensions_mode(args) == "none"
    args, _ = parse_serve_args(["--data-dir", str(data_dir), "--disable-all-extensions"])
    assert extensions_mode(args) == "all"


def test_extensions_dir_is_operator_only(services):
    from modules.settings_update import validate_change

    with pytest.raises(ValueError, match="extensions_dir"):
        validate_change(services.settings, {"extensions_dir": "/tmp/evil"}, services.access)
