"""The command line: ``app.py [flags]`` (the web UI), ``app.py generate ...`` (headless txt2img)
and the shared flags.

Errors print one line on stderr and exit with status 2; nothing else is printed on stdout but
the paths of the written images, one per line, so scripts can read them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from modules.config import ROOT, SettingsError, load_settings
from modules.schemas import RequestError, Txt2ImgRequest, parse_request


def add_settings_flags(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("settings (override config.json)")
    g.add_argument("--data-dir", type=Path, default=ROOT, help="folder holding models/, outputs/ and config.json")
    g.add_argument("--ckpt-dir", type=Path, action="append", default=None, help="extra checkpoint folder (repeatable)")
    g.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default=None)
    g.add_argument("--attention", choices=["auto", "sdpa", "xformers"], default=None)
    g.add_argument("--medvram", action="store_true", help="offload whole models to the CPU between uses")
    g.add_argument("--lowvram", action="store_true", help="offload layer by layer (slowest, least VRAM)")
    g.add_argument("--vae-tiling", action="store_true", default=None, help="decode large images in tiles")
    g.add_argument("--compile", action="store_true", default=None, dest="compile_unet",
                   help="torch.compile the UNet: faster steps after a slow first generation per model and size")
    g.add_argument("--channels-last", choices=["auto", "on", "off"], default=None,
                   help="UNet/VAE weights in channels_last memory format (auto: where it measured faster)")
    a1111 = ap.add_argument_group("A1111 device flags (shorthands for the settings above)")
    a1111.add_argument("--no-half", action="store_true", help="run in full precision (same as --precision fp32)")
    a1111.add_argument("--no-half-vae", action="store_true", help="run the VAE in fp32 whatever the precision")
    a1111.add_argument("--xformers", action="store_true", help="xformers attention (same as --attention xformers)")
    a1111.add_argument("--opt-sdp-attention", action="store_true",
                       help="PyTorch scaled-dot-product attention (same as --attention sdpa)")
    a1111.add_argument("--device-id", type=int, default=None, metavar="N", help="CUDA GPU N (same as --device cuda:N)")
    a1111.add_argument("--use-cpu", nargs="+", default=None, metavar="all",
                       help="'all' (or 'sd') runs everything on the CPU (same as --device cpu)")


def _one_of(flag_values: dict[str, str | None]) -> str | None:
    """The one value given among equivalent flags (``{flag: value or None}``); ValueError if they disagree."""
    given_values = {flag: value for flag, value in flag_values.items() if value is not None}
    if len(set(given_values.values())) > 1:
        listed = ", ".join(f"{flag} ({value})" for flag, value in given_values.items())
        raise ValueError(f"conflicting flags: {listed}; give only one of them")
    return next(iter(given_values.values()), None)


def cpu_device(use_cpu: list[str] | None) -> str | None:
    """A1111's ``--use-cpu all`` -> "cpu"; Easel runs every model on one device, so only all/sd are known."""
    if not use_cpu:
        return None
    unknown = [name for name in use_cpu if name.lower() not in ("all", "sd")]
    if unknown:
        raise ValueError(f"--use-cpu {' '.join(unknown)}: Easel runs all models on one device; use --use-cpu all")
    return "cpu"


def a1111_device_settings(args: argparse.Namespace) -> dict[str, str | None]:
    """device, precision and attention from the Easel flags and their A1111 shorthands
    (--use-cpu, --device-id, --no-half, --xformers, --opt-sdp-attention); None = not given."""
    device_id = args.device_id
    if device_id is not None and device_id < 0:
        raise ValueError(f"--device-id {device_id}: must be a GPU index 0, 1, ...")
    return {
        "device": _one_of({"--device": args.device, "--use-cpu": cpu_device(args.use_cpu),
                           "--device-id": None if device_id is None else f"cuda:{device_id}"}),
        "precision": _one_of({"--precision": args.precision,
                              "--no-half": "fp32" if args.no_half else None}),
        "attention": _one_of({"--attention": args.attention,
                              "--xformers": "xformers" if args.xformers else None,
                              "--opt-sdp-attention": "sdpa" if args.opt_sdp_attention else None}),
    }


def settings_from_args(args: argparse.Namespace):
    overrides = {
        "ckpt_dirs": args.ckpt_dir,
        **a1111_device_settings(args),
        "memory_mode": "lowvram" if args.lowvram else "medvram" if args.medvram else None,
        "vae_tiling": args.vae_tiling,
        "vae_precision": "fp32" if args.no_half_vae else None,
        "compile_unet": args.compile_unet,
        "channels_last": args.channels_last,
        "extensions_dir": getattr(args, "extensions_dir", None),
    }
    return load_settings(args.data_dir, overrides)


def generate_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="launch.sh generate",
        description="Generate images from text without the UI; prints the paths of the PNGs it wrote.",
    )
    ap.add_argument("--prompt", default="", help="A1111 prompt syntax: (word:1.2), [word], BREAK")
    ap.add_argument("--negative-prompt", default="")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sampler", default=None, help='e.g. "Euler a", "DPM++ 2M", "DPM++ 2M Karras" (see --list-samplers)')
    ap.add_argument("--scheduler", default=None, help="schedule type: Automatic, Uniform, Karras, Exponential, ...")
    ap.add_argument("--cfg-scale", type=float, default=7.0)
    ap.add_argument("--seed", type=int, default=-1, help="-1 = random")
    ap.add_argument("--subseed", type=int, default=-1, help="variation seed")
    ap.add_argument("--subseed-strength", type=float, default=0.0)
    ap.add_argument("--width", type=int, default=None, help="default: the model's native size")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--n-iter", "--batch-count", type=int, default=1, dest="n_iter")
    ap.add_argument("--clip-skip", type=int, default=1)
    ap.add_argument("--checkpoint", default=None, help="checkpoint name, title or short hash (see --list-checkpoints)")
    ap.add_argument("--refiner-checkpoint", default=None,
                    help="a checkpoint that takes over at --refiner-switch-at (A1111's refiner; e.g. an SDXL refiner)")
    ap.add_argument("--refiner-switch-at", type=float, default=0.8, help="fraction of the steps before the refiner")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the PNGs into this folder (default: outputs/txt2img-images/DATE)")
    ap.add_argument("--list-samplers", action="store_true")
    ap.add_argument("--list-checkpoints", action="store_true")
    add_settings_flags(ap)
    return ap


def run_generate(argv: list[str]) -> int:
    args = generate_parser().parse_args(argv)
    from modules import samplers

    if args.list_samplers:
        print("\n".join(samplers.SAMPLER_NAMES))
        return 0
    settings = settings_from_args(args)
    if args.out is not None:
        settings = settings.model_copy(update={"outdir_txt2img_samples": str(args.out.resolve()), "save_to_dirs": False})
    request = parse_request(Txt2ImgRequest, {
        "prompt": args.prompt, "negative_prompt": args.negative_prompt, "steps": args.steps,
        "sampler_name": args.sampler, "scheduler": args.scheduler, "cfg_scale": args.cfg_scale,
        "seed": args.seed, "subseed": args.subseed, "subseed_strength": args.subseed_strength,
        "width": args.width, "height": args.height, "batch_size": args.batch_size, "n_iter": args.n_iter,
        "clip_skip": args.clip_skip, "sd_model_checkpoint": args.checkpoint,
        "refiner_checkpoint": args.refiner_checkpoint, "refiner_switch_at": args.refiner_switch_at,
    })
    from modules.services import build_services

    services = build_services(settings)
    try:
        if args.list_checkpoints:
            for info in services.checkpoints.list():
                print(services.checkpoints.title(info))
            return 0
        result = services.submit("txt2img", request).wait()
        for path in result.paths:
            print(path)
        for message in result.save_errors:  # disk full, folder not writable: the images are lost here
            print(f"error: {message}", file=sys.stderr)
        return 2 if result.save_errors else 0
    finally:
        services.close()


def serve_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="launch.sh", description="Start the Easel web UI (A1111-style flags).")
    ap.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 (all interfaces) instead of 127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--share", action="store_true", help="open a public gradio.live link")
    ap.add_argument("--api", action="store_true", help="serve the HTTP API (/sdapi/v1) next to the UI")
    ap.add_argument("--nowebui", action="store_true", help="serve the HTTP API only (no UI)")
    ap.add_argument("--gradio-auth", default=None, help="user:pass[,user2:pass2] required to open the UI;"
                         " alone, it protects the API too (HTTP Basic)")
    ap.add_argument("--gradio-auth-path", type=Path, default=None, help="file of user:pass entries (lines or commas)")
    ap.add_argument("--theme", choices=["light", "dark"], default=None,
                    help="open the UI in light or dark mode (default: the browser's choice)")
    ap.add_argument("--api-auth", default=None,
                    help="user:pass[,user2:pass2] (HTTP Basic) required by every /sdapi, /easel and /controlnet route;"
                         " alone, it protects the web UI too")
    ap.add_argument("--ckpt", default=None, help="checkpoint to select at start (name, title or short hash)")
    ap.add_argument("--share-insecure", action="store_true",
                    help="allow --share without any credentials (anyone with the link can use everything)")
    ap.add_argument("--allow-server-paths", action="store_true",
                    help="let clients name folders on this machine in requests (training's instance_dir, class_dir)")
    ap.add_argument("--allow-downloads", action="store_true",
                    help="let the Models tab and /easel/v1/models/install download models (off: nothing is fetched)")
    ext = ap.add_argument_group("extensions (A1111's flags; an extension's preload.py may add more)")
    ext.add_argument("--extensions-dir", default=None, metavar="DIR",
                     help="folder of extensions (default: extensions/ in the data folder; setting extensions_dir)")
    ext.add_argument("--disable-extra-extensions", action="store_true", help="load no extension (built-in scripts stay)")
    ext.add_argument("--disable-all-extensions", action="store_true",
                     help="load no extension and none of Easel's built-in scripts (Prompt matrix, Prompts from file)")
    ext.add_argument("--enable-insecure-extension-access", action="store_true",
                     help="let the Extensions tab install, update and enable extensions with --listen or --share")
    add_settings_flags(ap)
    return ap


def extensions_mode(args: argparse.Namespace) -> str:
    """The loader's ``disable`` mode for --disable-all-extensions / --disable-extra-extensions."""
    if getattr(args, "disable_all_extensions", False):
        return "all"
    return "extra" if getattr(args, "disable_extra_extensions", False) else "none"


def parse_serve_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """The serve flags, with the flags that enabled extensions' ``preload.py`` add (A1111's order:
    preload first, then parse); returns the flags and the preload errors by extension name."""
    from modules.a1111_compat.loader import preload

    parser = serve_parser()
    known, _ = parser.parse_known_args(argv)
    errors = preload(parser, settings_from_args(known), extensions_mode(known))
    return parser.parse_args(argv), errors


def parse_auth(text: str) -> list[tuple[str, str]]:
    """The UI's ``--gradio-auth`` entries, parsed like ``--api-auth``'s."""
    from modules.auth import parse_credentials

    return parse_credentials(text, "--gradio-auth")


def auth_policy(args: argparse.Namespace):
    """The one AuthPolicy of --gradio-auth / --gradio-auth-path / --api-auth."""
    from modules.auth import AuthPolicy

    gradio_text = ",".join(t for t in (args.gradio_auth, args.gradio_auth_path and args.gradio_auth_path.read_text()) if t)
    return AuthPolicy.from_flags(gradio_text or None, args.api_auth)


ServeUI = Callable[..., None]  # webui.server.serve, handed in by app.py (the core never imports the UI)


def run_serve(argv: list[str], serve_ui: ServeUI | None = None) -> int:
    """Serve the web UI through ``serve_ui`` (with the API on ``--api``), or the API alone (``--nowebui``)."""
    args, preload_errors = parse_serve_args(argv)
    settings = settings_from_args(args)
    if not args.nowebui and serve_ui is None:
        raise ValueError("this entry point has no web UI: start Easel with ./launch.sh (app.py), or pass --nowebui")
    if args.ckpt:
        settings = settings.model_copy(update={"sd_model_checkpoint": args.ckpt})
    policy = auth_policy(args)
    refusal = policy.share_refusal(args.share and not args.nowebui, args.share_insecure)
    if refusal:
        raise ValueError(refusal)
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    for line in policy.start_warnings(exposed=args.listen, share=args.share and not args.nowebui,
                                      webui=not args.nowebui, api=args.api or args.nowebui):
        print(line, file=sys.stderr)
    from modules.access import ClientAccess
    from modules.services import build_services

    services = build_services(settings, access=ClientAccess(allow_server_paths=args.allow_server_paths),
                              allow_downloads=args.allow_downloads)
    try:
        from modules.a1111_compat.loader import load_extensions

        extensions = load_extensions(services, args, extensions_mode(args), preload_errors)  # a broken one: disabled
        extensions.install_allowed = args.enable_insecure_extension_access or not (args.listen or args.share)
        if args.ckpt:
            services.checkpoints.get(args.ckpt)  # an unknown --ckpt fails now, naming what exists
        if args.nowebui:
            from modules.api import app as api_app

            api_app.serve_api(services, host, args.port, list(policy.api) or None)
        else:
            serve_ui(services, host, args.port, args.share, args.api, list(policy.gradio_auth) or None,
                     theme=args.theme, api_auth=list(policy.api_auth) or None)
        return 0
    finally:
        services.close()


def main(argv: list[str] | None = None, serve_ui: ServeUI | None = None) -> int:
    """The command line: ``generate``, ``train``, ``install``, or serving (the UI through ``serve_ui``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from modules.checkpoints import CheckpointError

    try:
        if argv and argv[0] == "generate":
            return run_generate(argv[1:])
        if argv and argv[0] == "install":  # a model from a repo id, URL or file (modules/install_cli.py)
            from modules.install_cli import run_install

            return run_install(argv[1:])
        if argv and argv[0] == "train":  # DreamBooth / LoRA / textual inversion (modules/training/cli.py)
            from modules.training.cli import run_train

            return run_train(argv[1:])
        return run_serve(argv, serve_ui)
    except (RequestError, SettingsError, CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C, also while the server is still starting
        print("interrupted", file=sys.stderr)
        return 130
