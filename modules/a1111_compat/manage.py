"""Installing, updating, enabling and disabling extensions (the Extensions tab's actions).

Install sources: a git URL (``git clone``; offline, a one-line error), a local git checkout
(cloned, so it can be updated), a local folder (copied) or a ``.zip`` (extracted; a single top
folder is stripped; members that would land outside are refused). ``install.py`` is never run:
the message says it is there, for the operator to run. Enabling and disabling are saved in the
setting ``disabled_extensions`` and apply when the extensions are reloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from modules.config import save_settings

from .loader import extensions_root

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
URL = re.compile(r"^(https?|git|ssh)://|^[\w.-]+@[\w.-]+:")
MAX_ZIP_BYTES = 200 * 1024 * 1024


class ExtensionError(ValueError):
    """An install/update/enable request that cannot be done; the message says why, on one line."""


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise ExtensionError(f"extension name {name!r}: letters, digits, '.', '_' and '-' only (at most 100)")
    return name


def _name_from(source: str) -> str:
    stem = re.split(r"[/:]", source.rstrip("/"))[-1]
    return stem[:-4] if stem.endswith(".git") or stem.endswith(".zip") else stem


def _git(args: list[str], cwd: Path | None = None, timeout: float = 300) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except FileNotFoundError:
        raise ExtensionError("git is not installed on this machine; install it, or install from a folder or a zip") from None
    except subprocess.TimeoutExpired:
        raise ExtensionError(f"git {args[0]} took longer than {timeout:.0f}s and was stopped") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        if any(s in last for s in ("Could not resolve host", "unable to access", "Failed to connect", "Network is")):
            raise ExtensionError(f"git {args[0]} failed: cannot reach the server (offline?): {last}")
        raise ExtensionError(f"git {args[0]} failed: {last}")
    return done.stdout.strip()


def install(settings: Any, source: str, name: str | None = None) -> str:
    """Install ``source`` into the extensions folder; returns a one-line summary (install.py is not run)."""
    source = (source or "").strip()
    if not source:
        raise ExtensionError("source: give a git URL, a folder or a .zip file")
    root = extensions_root(settings)
    is_url = bool(URL.match(source))
    path = None if is_url else Path(source).expanduser()
    if path is not None and not path.exists():
        raise ExtensionError(f"source: {source!r} is neither a git URL nor an existing folder or .zip file")
    target_name = check_name(name or (path.stem if path is not None and path.suffix == ".zip" else _name_from(source)))
    target = root / target_name
    if target.exists():
        raise ExtensionError(f"an extension named {target_name!r} is already installed ({target}); remove it first")
    root.mkdir(parents=True, exist_ok=True)
    if is_url or (path.is_dir() and (path / ".git").exists()):
        _git(["clone", "--depth", "1", "--", source if is_url else str(path.resolve()), str(target)])
    elif path.is_dir():
        shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
    elif zipfile.is_zipfile(path):
        _extract_zip(path, target)
    else:
        raise ExtensionError(f"source: {source!r} is not a folder, a .zip file or a git URL")
    if not (target / "scripts").is_dir() and not (target / "preload.py").exists():
        note = " (it has no scripts/ folder: nothing will load)"
    else:
        note = ""
    if (target / "install.py").exists():
        note += "; it has an install.py, which Easel does not run: read it, and run it yourself if you trust it"
    return f"Installed {target_name} into {target}{note}. It loads when extensions are reloaded."


def _extract_zip(path: Path, target: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
            raise ExtensionError(f"{path.name}: more than {MAX_ZIP_BYTES >> 20} MiB once extracted")
        names = [PurePosixPath(m.filename) for m in members]
        for n in names:
            if n.is_absolute() or ".." in n.parts or "\\" in str(n):
                raise ExtensionError(f"{path.name}: member {str(n)!r} would land outside the extension folder")
        tops = {n.parts[0] for n in names if n.parts}
        strip = len(tops) == 1 and all(len(n.parts) > 1 for n in names)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            staging = Path(tmp) / "x"
            staging.mkdir()
            for member, n in zip(members, names, strict=True):
                rel = PurePosixPath(*n.parts[1:]) if strip else n
                out = staging / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            staging.rename(target)


def update(extension: Any) -> str:
    """``git pull --ff-only`` in an extension that is a git checkout; returns a one-line summary."""
    if not (extension.path / ".git").exists():
        raise ExtensionError(f"{extension.name} is not a git checkout: reinstall it to update")
    before = _git(["rev-parse", "HEAD"], cwd=extension.path)
    _git(["pull", "--ff-only"], cwd=extension.path)
    after = _git(["rev-parse", "HEAD"], cwd=extension.path)
    if before == after:
        return f"{extension.name}: already up to date ({after[:8]})"
    return f"{extension.name}: updated {before[:8]} -> {after[:8]}; it applies when extensions are reloaded"


def set_enabled(services: Any, enabled: dict[str, bool]) -> list[str]:
    """Save which extensions are enabled (setting ``disabled_extensions``); returns the disabled names."""
    known = {e.name for e in services.extensions.items if not e.builtin} if services.extensions else set()
    unknown = sorted(set(enabled) - known)
    if unknown:
        raise ExtensionError(f"unknown extension(s): {', '.join(unknown)}; installed: {', '.join(sorted(known)) or 'none'}")
    disabled = set(services.settings.disabled_extensions)
    for name, on in enabled.items():
        (disabled.discard if on else disabled.add)(name)
    new = services.settings.model_copy(update={"disabled_extensions": sorted(disabled)})
    save_settings(new)
    services.update_settings(new)
    return sorted(disabled)


def reload(services: Any) -> Any:
    """Load the extensions again (scripts, hooks, options) with the saved enable/disable choices."""
    from .loader import load_extensions

    old = services.extensions
    cmd_opts = old.cmd_opts if old is not None else None
    disable = old.disable if old is not None else "none"
    install_allowed = old.install_allowed if old is not None else True
    extensions = load_extensions(services, cmd_opts, disable)
    extensions.install_allowed = install_allowed
    return extensions
