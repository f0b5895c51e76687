"""Finding, preloading and loading A1111-style extensions, and running their scripts in jobs.

An extension is a folder of ``<data>/extensions`` (setting ``extensions_dir``, flag
``--extensions-dir``): ``preload.py`` (``preload(parser)`` adds command-line flags, run before the
flags are parsed), ``scripts/*.py`` (imported at start; ``Script`` subclasses and
``script_callbacks.on_*`` registrations), ``extension.py`` (Easel's own API: ``register(hooks, services)``
adds hooks to ``modules.hooks``' registry under the extension's name), ``javascript/*.js`` and ``style.css`` (served into the
page), ``metadata.ini``. ``install.py`` is never run here: installing says it is there.

A file that fails to import disables its extension for this run, with the error shown in the
Extensions tab; Easel starts anyway. Easel's built-in scripts (Prompt matrix, Prompts from file
or textbox) load the same way from ``builtin/``, unless ``--disable-all-extensions``.
"""

from __future__ import annotations

import argparse
import configparser
import importlib.util
import logging
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.hooks import OwnedHooks, UiOption
from modules.schemas import RequestError

from . import processing, runtime
from .options import OptionInfo
from .scripts import LoadedScript, Script, args_for, describe_script

logger = logging.getLogger(__name__)
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
DISABLE_MODES = ("none", "extra", "all")


@dataclass
class Extension:
    name: str
    path: Path
    enabled: bool = True  # the user's choice (setting disabled_extensions)
    builtin: bool = False
    error: str | None = None  # why it did not load (then it is not active)
    scripts: list[LoadedScript] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.enabled and self.error is None

    @property
    def javascript(self) -> list[Path]:
        return sorted((self.path / "javascript").glob("*.js")) if self.active else []

    @property
    def css(self) -> Path | None:
        css = self.path / "style.css"
        return css if self.active and css.is_file() else None

    @property
    def metadata(self) -> dict[str, dict[str, str]]:
        parser = configparser.ConfigParser()
        try:
            parser.read(self.path / "metadata.ini", encoding="utf-8")
        except configparser.Error:
            return {}
        return {section: dict(parser[section]) for section in parser.sections()}

    def git_info(self) -> dict[str, Any]:
        """A1111's extension fields from git (empty when the folder is not a git checkout)."""
        info: dict[str, Any] = {"remote": "", "branch": "", "commit_hash": "", "commit_date": 0, "version": ""}
        if not (self.path / ".git").exists():
            return info
        for key, cmd in (("remote", ["config", "--get", "remote.origin.url"]), ("branch", ["rev-parse", "--abbrev-ref", "HEAD"]),
                         ("commit_hash", ["rev-parse", "HEAD"]), ("commit_date", ["log", "-1", "--format=%ct"])):
            out = git(self.path, *cmd)
            if out is not None:
                info[key] = int(out) if key == "commit_date" and out.isdigit() else out
        info["version"] = info["commit_hash"][:8]
        return info


def git(folder: Path, *args: str, timeout: float = 10) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0]


def extensions_root(settings: Any) -> Path:
    return settings.path(settings.extensions_dir)


def discover(settings: Any) -> list[Extension]:
    """The extension folders, sorted by name, with the user's enable/disable choice."""
    root = extensions_root(settings)
    if not root.is_dir():
        return []
    disabled = set(settings.disabled_extensions)
    return [Extension(p.name, p, enabled=p.name not in disabled) for p in sorted(root.iterdir())
            if p.is_dir() and not p.name.startswith(".")]


def _import(path: Path, module_name: str) -> Any:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _module_name(extension: Extension, path: Path) -> str:
    safe = re.sub(r"\W", "_", f"{extension.name}_{path.stem}")
    return f"easel_extensions.{safe}"


def preload(parser: argparse.ArgumentParser, settings: Any, disable: str = "none") -> dict[str, str]:
    """Run each enabled extension's ``preload.py`` (``preload(parser)``); returns errors by extension name."""
    errors: dict[str, str] = {}
    if disable != "none":
        return errors
    for extension in discover(settings):
        file = extension.path / "preload.py"
        if not extension.enabled or not file.is_file():
            continue
        try:
            module = _import(file, _module_name(extension, file))
            if hasattr(module, "preload"):
                module.preload(parser)
        except Exception as err:  # noqa: BLE001 - a broken extension must not stop Easel
            errors[extension.name] = f"preload.py: {one_line(err)}"
            logger.error("extension %s: preload.py failed: %s", extension.name, one_line(err))
    return errors


class Extensions:
    """What was loaded for one app: extensions, their scripts and options; runs scripts in jobs."""

    def __init__(self, services: Any, cmd_opts: argparse.Namespace | None = None, disable: str = "none") -> None:
        if disable not in DISABLE_MODES:
            raise ValueError(f"disable: {disable!r}; choose one of {', '.join(DISABLE_MODES)}")
        self.services = services
        self.cmd_opts = cmd_opts or argparse.Namespace()
        self.disable = disable
        # the Extensions tab may install, update and enable (A1111: not with --listen/--share unless
        # --enable-insecure-extension-access: an extension runs code on this machine)
        self.install_allowed = True
        self.items: list[Extension] = []
        self.options: dict[str, OptionInfo] = {}
        self.option_owner: dict[str, str] = {}
        self.settings_callbacks: list[tuple[str, Any, Any]] = []
        self.infotext_pasted: list[tuple[str, Any]] = []
        self.unloaded_callbacks: list[tuple[str, Any]] = []

    # -- loading ----------------------------------------------------------------------------
    def load(self, preload_errors: dict[str, str] | None = None) -> None:
        builtin = Extension("builtin", BUILTIN_DIR, builtin=True, enabled=self.disable != "all")
        found = [] if self.disable != "none" else discover(self.services.settings)
        if self.disable != "none":  # listed, so the tab shows why they are off
            found = [Extension(e.name, e.path, enabled=False, error=f"--disable-{self.disable}-extensions")
                     for e in discover(self.services.settings)]
        self.items = [builtin, *found]
        for extension in self.items:
            if preload_errors and extension.name in preload_errors:
                extension.error = preload_errors[extension.name]
            if extension.active:
                self._load_one(extension)
        for owner, callback, extension in self.settings_callbacks:
            with runtime.loading(extension):
                try:
                    callback()
                except Exception as err:  # noqa: BLE001
                    self.services.hooks.record(owner, "on_ui_settings", err)
        self.services.hooks.add("ui_built", self._add_ui_options, owner="a1111_compat")

    def _load_one(self, extension: Extension) -> None:
        files = sorted((extension.path / "scripts").glob("*.py")) if not extension.builtin else \
            sorted(extension.path.glob("*.py"))
        with runtime.loading(extension):
            try:
                native = extension.path / "extension.py"
                if not extension.builtin and native.is_file():  # Easel's own API: register(hooks, services)
                    module = _import(native, _module_name(extension, native))
                    register = getattr(module, "register", None)
                    if not callable(register):
                        raise TypeError("extension.py must define register(hooks, services)")
                    register(OwnedHooks(self.services.hooks, extension.name), self.services)
                for file in files:
                    if file.name == "__init__.py":
                        continue
                    module = _import(file, _module_name(extension, file))
                    for obj in list(vars(module).values()):
                        if isinstance(obj, type) and issubclass(obj, Script) and obj is not Script \
                                and obj.__module__ == module.__name__:
                            script = obj()
                            script.filename = str(file)
                            extension.scripts.append(describe_script(script, extension.name))
            except Exception as err:  # noqa: BLE001 - a broken extension is disabled, Easel starts
                extension.error = one_line(err)
                extension.scripts.clear()
                self._forget(extension.name)
                logger.error("extension %s failed to load and is disabled: %s\n%s", extension.name, extension.error,
                             traceback.format_exc(limit=6))

    def _forget(self, owner: str) -> None:
        self.services.hooks.remove_owner(owner)
        self.settings_callbacks = [c for c in self.settings_callbacks if c[0] != owner]
        self.infotext_pasted = [c for c in self.infotext_pasted if c[0] != owner]
        self.unloaded_callbacks = [c for c in self.unloaded_callbacks if c[0] != owner]
        for key in [k for k, o in self.option_owner.items() if o == owner]:
            self.options.pop(key, None)
            self.option_owner.pop(key, None)

    def unload(self) -> None:
        """Call on_script_unloaded callbacks and remove every hook the extensions added."""
        for owner, callback in self.unloaded_callbacks:
            try:
                callback()
            except Exception as err:  # noqa: BLE001
                self.services.hooks.record(owner, "on_script_unloaded", err)
        for extension in self.items:
            self._forget(extension.name)
        self.services.hooks.remove_owner("a1111_compat")

    def pasted(self, text: str, params: dict[str, Any]) -> None:
        """Extensions' ``on_infotext_pasted(infotext, params)``: each may change ``params`` (errors recorded)."""
        for owner, callback in self.infotext_pasted:
            try:
                callback(text, params)
            except Exception as err:  # noqa: BLE001
                self.services.hooks.record(owner, "on_infotext_pasted", err)

    def add_option(self, key: str, info: OptionInfo, owner: str) -> None:
        self.options[key] = info
        self.option_owner[key] = owner

    # -- what is loaded ----------------------------------------------------------------------
    @property
    def scripts(self) -> list[LoadedScript]:
        return [s for e in self.items if e.active for s in e.scripts]

    def scripts_for(self, is_img2img: bool) -> list[LoadedScript]:
        return [s for s in self.scripts if (s.img2img if is_img2img else s.txt2img)]

    def find_script(self, title: str, is_img2img: bool, alwayson: bool | None = None) -> LoadedScript | None:
        wanted = title.strip().lower()
        for entry in self.scripts_for(is_img2img):
            if entry.title.lower() == wanted and (alwayson is None or entry.alwayson == alwayson):
                return entry
        return None

    def ui_options(self) -> list[UiOption]:
        out = []
        for key, info in self.options.items():
            section = tuple(info.section) if info.section else ("extensions", "Extensions")
            component, choices, lo, hi, step = _component(info)
            out.append(UiOption(key, info.default, info.label or key, section, component, choices, lo, hi, step,
                                info.info_text, self.option_owner.get(key, "easel")))
        return out

    def _add_ui_options(self, event: Any) -> None:
        for option in self.ui_options():
            event.add_option(option)

    def check_request(self, kind: str, request: Any) -> None:
        """A RequestError naming ``extension_script`` / ``extension_alwayson.<title>`` for scripts not loaded here."""
        is_img2img = kind != "txt2img"
        call = getattr(request, "extension_script", None)
        if call is not None and self.find_script(call.title, is_img2img, alwayson=False) is None:
            have = ", ".join(repr(s.title) for s in self.scripts_for(is_img2img) if not s.alwayson) or "none"
            raise RequestError(f"extension_script: no script titled {call.title!r} for {kind}; available: {have}")
        for title in getattr(request, "extension_alwayson", None) or {}:
            if self.find_script(title, is_img2img, alwayson=True) is None:
                have = ", ".join(repr(s.title) for s in self.scripts_for(is_img2img) if s.alwayson) or "none"
                raise RequestError(f"extension_alwayson.{title}: no always-on script of that title for {kind};"
                                   f" available: {have}")

    # -- running scripts in a job (the around_process hook) -----------------------------------
    def around_process(self, event: Any, proceed: Any) -> Any:
        kind, request, ctx = event.kind, event.request, event.ctx
        if kind not in ("txt2img", "img2img", "inpaint"):
            return proceed(request)
        is_img2img = kind != "txt2img"
        given = dict(getattr(request, "extension_alwayson", None) or {})
        alwayson = [s for s in self.scripts_for(is_img2img) if s.alwayson]
        call = getattr(request, "extension_script", None)
        selected = self.find_script(call.title, is_img2img, alwayson=False) if call else None
        if not alwayson and selected is None:
            return proceed(request)
        from modules.processing.common import apply_request_styles

        request = apply_request_styles(request, ctx)  # styled prompts, as A1111's p.all_prompts hold them
        p = processing.from_request(kind, request, ctx)
        lowered = {str(k).lower(): v for k, v in given.items()}
        p._run = [(s, args_for(s, lowered.get(s.title.lower()), is_img2img)) for s in alwayson]
        p.script_args = [a for _, args in p._run for a in args]
        with runtime.in_job(ctx, proceed, kind, self.services):
            if selected is None:
                return processing.run_in_job(p, ctx, proceed).result
            args = args_for(selected, call.args, is_img2img)
            try:
                processed = selected.script.run(p, *args)
                if processed is None:
                    processed = processing.run_in_job(p, ctx, proceed)
            except RequestError:
                raise
            except Exception as err:  # the job fails (it was the script's job); the tab shows why
                self.services.hooks.record(selected.owner, f"script {selected.title!r}.run", err)
                raise
            return processing.result_of(processed, p, ctx)


def _component(info: OptionInfo) -> tuple[str, list | None, float | None, float | None, float | None]:
    """Easel's component kind for an A1111 option (gradio class + component_args)."""
    name = getattr(info.component, "__name__", "") .lower() if info.component else ""
    args = info.component_args() if callable(info.component_args) else (info.component_args or {})
    choices = list(args.get("choices", [])) or None
    if isinstance(info.default, bool) and not name:
        return "checkbox", None, None, None, None
    if name in ("checkbox", "slider", "dropdown", "radio", "number", "textbox"):
        return name, choices, args.get("minimum"), args.get("maximum"), args.get("step")
    if isinstance(info.default, (int, float)) and not isinstance(info.default, bool):
        return "number", None, None, None, None
    return ("dropdown" if choices else "textbox"), choices, None, None, None


def load_extensions(services: Any, cmd_opts: argparse.Namespace | None = None, disable: str = "none",
                    preload_errors: dict[str, str] | None = None) -> Extensions:
    """Load the extensions for ``services`` (binding the A1111 adapters to it); a broken one is disabled."""
    if services.extensions is not None:
        services.extensions.unload()
    runtime.bind(services)
    extensions = Extensions(services, cmd_opts, disable)
    services.extensions = extensions
    extensions.load(preload_errors)
    services.hooks.add("around_process", extensions.around_process, owner="a1111_compat")
    return extensions


def parse_cmd_opts(settings: Any, argv: list[str], disable: str = "none") -> tuple[argparse.Namespace, dict[str, str]]:
    """``shared.cmd_opts``: the serve flags plus the extensions' preload flags, parsed from ``argv``."""
    from modules.cli import serve_parser

    parser = serve_parser()
    errors = preload(parser, settings, disable)
    args, _ = parser.parse_known_args(argv)
    return args, errors
