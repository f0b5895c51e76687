"""``./launch.sh install SOURCE [...]``: install one model from a repo id, a URL or a local file.

The operator runs this on the server, so a local path is accepted (clients need
``--allow-server-paths`` for that). Downloads still need ``--allow-downloads``: launch.sh keeps
``HF_HUB_OFFLINE=1`` otherwise. Progress goes to stderr; the installed file's path is the one line
on stdout. A server already running lists the new file after its lists are refreshed (the UI's
refresh buttons, or an install through the UI or API, which refreshes them itself).
"""

from __future__ import annotations

import argparse
import sys
import time

from modules.installer import MODEL_TYPES, InstallRequest, Progress, install, target_from_settings
from modules.schemas import parse_request


def install_parser() -> argparse.ArgumentParser:
    from modules.cli import add_settings_flags

    ap = argparse.ArgumentParser(prog="launch.sh install",
                                 description="Install a checkpoint, LoRA, VAE, ControlNet or embedding into the data "
                                             "folder; its contents choose the folder.")
    ap.add_argument("source", help="owner/name[/FILE][@REVISION] on the Hugging Face hub, an https:// URL, or a "
                                   "local file")
    ap.add_argument("--type", choices=MODEL_TYPES, default=None,
                    help="used only when the contents cannot tell (the contents always win)")
    ap.add_argument("--sha256", default=None, help="expected sha256 (the hub's is checked anyway)")
    ap.add_argument("--file", default=None, help="the file inside the repo (or put it after owner/name/)")
    ap.add_argument("--revision", default=None, help="branch, tag or commit of the repo")
    ap.add_argument("--allow-pickle", action="store_true",
                    help="accept .ckpt/.pt/.pth/.bin (read only with the safe weights-only loader)")
    ap.add_argument("--allow-downloads", action="store_true",
                    help="allow network downloads (off by default: launch.sh sets HF_HUB_OFFLINE=1 without it)")
    add_settings_flags(ap)
    return ap


def progress_printer(progress: Progress, every_s: float = 1.0):
    """A ``cancelled`` callback that prints the progress to stderr at most every ``every_s`` seconds."""
    last = [0.0]

    def tick() -> bool:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            total = f" of {progress.total_bytes / 2**20:.1f}" if progress.total_bytes else ""
            print(f"{progress.stage}: {progress.done_bytes / 2**20:.1f}{total} MiB", file=sys.stderr)
        return False

    return tick


def run_install(argv: list[str]) -> int:
    from modules.cli import settings_from_args

    args = install_parser().parse_args(argv)
    settings = settings_from_args(args)
    request = parse_request(InstallRequest, {"source": args.source, "type": args.type, "sha256": args.sha256,
                                             "file": args.file, "revision": args.revision,
                                             "allow_pickle": args.allow_pickle})
    target = target_from_settings(settings, allow_downloads=args.allow_downloads, allow_server_paths=True)
    progress = Progress()
    result = install(request, target, progress, progress_printer(progress), from_client=False)
    print(f"installed {result.type} {result.name} ({result.size / 2**20:.1f} MiB, sha256 {result.sha256}); "
          f"{result.note}", file=sys.stderr)
    print(result.path)
    return 0
