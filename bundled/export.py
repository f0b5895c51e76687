"""Export a training state as Easel's bundled checkpoint: an original-layout single file.

Writes ``NAME.safetensors`` (fp16, the EMA weights, SD 1.x key layout) and its companion
``NAME.yaml`` (an A1111 LDM config carrying the small model's dimensions), so the bundled
model goes through exactly the code path of a user's downloaded checkpoint.

    python -m bundled.export --state runs/shapes/state.pt --out models/Stable-diffusion/easel-shapes.safetensors [--overwrite]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bundled.architecture import SCHEDULER_CONFIG, TEXT_CONFIG, build_models
from modules.ldm_export import ldm_yaml, pipeline_to_ldm, save_ldm_checkpoint

MAX_BYTES = 30 * 2**20


def export(state_path: Path, out: Path, overwrite: bool = False) -> Path:
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    if st.get("scaling") is None:
        raise SystemExit(f"{state_path} is still in the VAE phase; nothing to export yet")
    vae, unet, text_encoder = build_models()
    vae.load_state_dict(st["vae"])
    unet.load_state_dict(st["ema_unet"])
    text_encoder.load_state_dict(st["ema_text"])
    metadata = {"easel_train_step": str(st["step"]), "easel_vae_steps": str(st["vae_done"]),
                "easel_source": "bundled/train.py (shapes world)"}
    return write_checkpoint(out, vae, unet, text_encoder, st["scaling"], metadata, overwrite)


def write_checkpoint(out: Path, vae, unet, text_encoder, scaling: float, metadata: dict[str, str],
                     overwrite: bool = False) -> Path:
    """The three modules as an fp16 original-layout ``.safetensors`` plus its ``.yaml``, within budget."""
    save_ldm_checkpoint(out, pipeline_to_ldm(unet, vae, text_encoder), dtype=torch.float16,
                        metadata=metadata, overwrite=overwrite)
    yaml = ldm_yaml(unet.config, vae.config, TEXT_CONFIG, SCHEDULER_CONFIG, scaling_factor=scaling)
    out.with_suffix(".yaml").write_text(yaml)
    size = out.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{out} is {size / 2**20:.1f} MiB, over the 30 MiB budget")
    print(f"wrote {out} ({size / 2**20:.1f} MiB, UNet step {metadata.get('easel_train_step')}) and "
          f"{out.with_suffix('.yaml').name}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, default=Path("runs/shapes/state.pt"))
    ap.add_argument("--out", type=Path, default=Path("models/Stable-diffusion/easel-shapes.safetensors"))
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    export(args.state, args.out, args.overwrite)


if __name__ == "__main__":
    main()
