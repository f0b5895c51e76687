"""``launch.sh train ...``: a training from the command line, with the request's options as flags.

Every field of ``TrainOptions`` is a flag (``learning_rate`` → ``--learning-rate``, booleans are
switches, ``--sample-prompt`` repeats); ``--images`` takes a folder or image files. Progress goes
to stderr, the written file's path to stdout. Errors print one line and exit 2; Ctrl+C cancels the
training, keeps its state (run the same command again to resume) and exits 130.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any

from modules.training.config import TrainOptions

FLAG_ALIASES = {"output_name": ["--name"], "sd_model_checkpoint": ["--checkpoint"],
                "with_prior_preservation": ["--prior-preservation"], "sample_prompts": ["--sample-prompt"]}
SKIPPED = {"warnings", "instance_dir"}
POLL_SECONDS = 1.0


def _base_type(annotation: Any) -> Any:
    """``int | None`` → int; ``Literal[...]`` stays; ``list[str]`` → list."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return annotation


def train_parser() -> argparse.ArgumentParser:
    from modules.cli import add_settings_flags

    ap = argparse.ArgumentParser(
        prog="launch.sh train",
        description="Train a DreamBooth model, a LoRA or a textual-inversion embedding; prints the written file.",
    )
    ap.add_argument("--images", nargs="+", required=True, metavar="DIR_OR_FILES",
                    help="a folder of 3-30 instance images, or the image files")
    for name, info in TrainOptions.model_fields.items():
        if name in SKIPPED:
            continue
        flags = [f"--{name.replace('_', '-')}", *FLAG_ALIASES.get(name, [])]
        kind = _base_type(info.annotation)
        help_text = info.description or ""
        if kind is bool:
            ap.add_argument(*flags, dest=name, action="store_true", default=None, help=help_text)
        elif typing.get_origin(kind) is typing.Literal:
            ap.add_argument(*flags, dest=name, choices=list(typing.get_args(kind)), default=None, help=help_text)
        elif typing.get_origin(kind) is list:
            ap.add_argument(*flags, dest=name, action="append", default=None, help=f"{help_text} (repeatable)")
        else:
            required = info.is_required()
            ap.add_argument(*flags, dest=name, type=kind, default=None, required=required, help=help_text)
    add_settings_flags(ap)
    return ap


def _images(paths: list[str]) -> tuple[list[Path], str | None]:
    """(files, folder) from --images: one folder, or files."""
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return [], paths[0]
    return [Path(p) for p in paths], None


def run_train(argv: list[str]) -> int:
    from modules.access import ClientAccess
    from modules.cli import settings_from_args
    from modules.jobs import JobCancelled
    from modules.services import build_services
    from modules.training import job as training

    args = train_parser().parse_args(argv)
    values = {name: value for name, value in vars(args).items() if name in TrainOptions.model_fields and value is not None}
    files, folder = _images(args.images)
    # The operator runs this command: folders on this machine are theirs to name.
    services = build_services(settings_from_args(args), access=ClientAccess(allow_server_paths=True))
    try:
        request = training.build_request(services, values, uploads=files, folder=folder)
        for warning in request.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        job = training.submit(services, request)
        try:
            _follow(job)
            if job.state.value == "failed":
                print(f"error: {job.error}", file=sys.stderr)
                return 2
            result = job.wait()
        except KeyboardInterrupt:
            services.queue.cancel(job.id)
            try:
                job.wait(600)
            except JobCancelled:
                pass
            print("cancelled; the state is kept: run the same command again to resume", file=sys.stderr)
            return 130
        except JobCancelled:
            print("cancelled; the state is kept: run the same command again to resume", file=sys.stderr)
            return 130
        print(result.output_path)
        return 0
    finally:
        services.close()


def _follow(job: Any) -> None:
    """Print the phase, step and loss to stderr until the job ends."""
    from modules.training import job as training

    shown = None
    while not job.is_finished:
        snap = training.status_of(job)
        line = f"{snap.phase}: step {snap.step}/{snap.total}"
        if snap.phase == "training" and snap.losses:
            line += f", loss {snap.losses[-1]:.4f}"
        if line != shown:
            print(line, file=sys.stderr, flush=True)
            shown = line
        time.sleep(POLL_SECONDS)
