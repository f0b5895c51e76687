"""Export a ControlNet training state as Easel's bundled ControlNet (original single-file layout).

Writes ``NAME.safetensors`` (fp16, ``control_model.*`` keys as lllyasviel's ControlNet files) and
its companion ``NAME.yaml`` into ``models/ControlNet/``, so it goes through the same loader as a
downloaded ``control_v11p_sd15_canny.safetensors``.

    python -m bundled.export_controlnet --state runs/controlnet/state.pt [--overwrite]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bundled.architecture import build_models
from bundled.train_controlnet import build_controlnet
from modules.controlnet.layout import save_controlnet

MAX_BYTES = 15 * 2**20
DEFAULT_OUT = Path("models/ControlNet/easel-shapes-control.safetensors")


def export(state_path: Path, out: Path = DEFAULT_OUT, overwrite: bool = False) -> Path:
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    _, unet, _ = build_models()
    controlnet = build_controlnet(unet)
    controlnet.load_state_dict(st["controlnet"])
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"easel_train_step": str(st["step"]), "easel_base_step": str(st.get("base_step")),
                "easel_source": "bundled/train_controlnet.py (shapes world)"}
    save_controlnet(controlnet, out, dtype=torch.float16, overwrite=overwrite, metadata=metadata)
    size = out.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{out} is {size / 2**20:.1f} MiB, over the 15 MiB budget")
    print(f"wrote {out} ({size / 2**20:.1f} MiB, ControlNet step {st['step']} on base UNet step {st.get('base_step')})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, default=Path("runs/controlnet/state.pt"))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    export(args.state, args.out, args.overwrite)


if __name__ == "__main__":
    main()
