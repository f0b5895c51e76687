"""Train the bundled ControlNet: shape outlines (canny edges) or silhouettes -> shapes-world images.

The base model (the shipped ``easel-shapes`` checkpoint, loaded through Easel's own loader) stays
frozen; a diffusers ``ControlNetModel`` is initialised from its UNet's encoder (``from_unet``)
with zero-initialised output convolutions, and learns epsilon prediction on SD's schedule with
the same low-frequency noise as the base model. The control map is what a user gives Easel:

- 70%: ``cv2.Canny`` (thresholds 100/200, Easel's ``canny`` preprocessor defaults) of the
  rendered 64x64 scene, sometimes with its lines thickened to look like a hand-drawn scribble;
- 30%: the filled silhouette (white shape on black), as a filled scribble.

The map is fed at the image size: the hint encoder has one downsampling fewer than SD 1.5's
(4x, like the shapes VAE), which Easel's ControlNet loader reads from the tensors.
A quarter of the captions name a wrong position, so the model learns that the map decides
where the shape goes; 15% of the captions are empty.

Deterministic per step (``default_rng([seed, 3, step])``), resumable from ``state.pt``:

    python -m bundled.train_controlnet --out runs/controlnet --threads 2
    python -m bundled.export_controlnet --state runs/controlnet/state.pt

``--init-from`` starts a new run from an exported ControlNet file (e.g. the shipped one, to train
it further); the step count continues from the one recorded in the file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from bundled.architecture import SCHEDULER_CONFIG, build_models
from bundled.shapes import POSITIONS, Scene, paraphrase, render
from bundled.train import init_from_checkpoint, load_tokenizer, low_frequency_noise, sample_timesteps
from bundled.weighting import loss_weights, lr_at, silhouette_map, weighted_mse

HINT_CHANNELS = (16, 32, 96)  # SD 1.5's hint encoder less its last stage: 4x down, as the shapes VAE
CANNY_LOW, CANNY_HIGH = 100, 200


def build_controlnet(unet):
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)


def canny_map(image: np.ndarray) -> np.ndarray:
    """White edges on black (H, W) uint8, from an RGB uint8 image, as Easel's canny module."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.Canny(gray, CANNY_LOW, CANNY_HIGH)


def control_map(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One training map (H, W) uint8 for an RGB image: edges (some thickened) or a silhouette."""
    if rng.random() < 0.3:
        return silhouette_map(image)
    edges = canny_map(image)
    if rng.random() < 0.3:
        edges = cv2.dilate(edges, np.ones((2, 2), np.uint8))
    return edges


def init_from_file(path: Path, controlnet) -> int:
    """Load an exported ControlNet's weights through Easel's loader; returns its recorded step."""
    from safetensors import safe_open

    from modules.controlnet.models import ControlNetInfo, load_controlnet

    yaml = path.with_suffix(".yaml")
    loaded = load_controlnet(ControlNetInfo(path.stem, path.stem, path, "single", yaml if yaml.exists() else None))
    controlnet.load_state_dict({k: v.float() for k, v in loaded.model.state_dict().items()})
    with safe_open(str(path), "pt") as f:
        return int((f.metadata() or {}).get("easel_train_step", 0))


def map_tensor(maps: list[np.ndarray]) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1]: the maps as RGB."""
    return torch.from_numpy(np.stack(maps)).float().div(255.0)[:, None].repeat(1, 3, 1, 1).contiguous()


def caption_for(scene: Scene, rng: np.random.Generator) -> str:
    """A caption for a ControlNet sample: sometimes empty, sometimes naming a wrong position."""
    if rng.random() < 0.15:
        return ""
    if rng.random() < 0.25:
        wrong = str(rng.choice([p for p in POSITIONS if p != scene.position]))
        scene = Scene(scene.shape, scene.color, scene.background, scene.size, wrong, scene.cx, scene.cy)
    return paraphrase(scene, rng) if rng.random() < 0.7 else scene.caption()


def training_batch(rng: np.random.Generator, batch_size: int):
    """Images (B, 3, 64, 64) in [-1, 1], control maps (B, 3, 64, 64) in [0, 1], captions and the
    rendered pictures (B of (64, 64, 3) uint8)."""
    from bundled.shapes import random_scene

    scenes = [random_scene(rng) for _ in range(batch_size)]
    pictures = [np.asarray(render(s)) for s in scenes]
    images = np.stack(pictures).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
    maps = map_tensor([control_map(p, rng) for p in pictures])
    return torch.from_numpy(images.copy()), maps, [caption_for(s, rng) for s in scenes], pictures


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=Path("models/Stable-diffusion/easel-shapes.safetensors"))
    ap.add_argument("--out", type=Path, default=Path("runs/controlnet"))
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--pyramid-noise", type=float, default=0.1)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--init-from", type=Path, default=None, help="exported ControlNet .safetensors to start from")
    ap.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                    help="cosine: decay to zero at --steps (from this run's first step)")
    ap.add_argument("--timesteps", choices=["base", "uniform"], default="base",
                    help="base: as the base model (half of them in the noisy half); uniform: over [0, 1000), "
                         "twice the share of the less noisy steps that draw the outline's detail")
    ap.add_argument("--outline-weight", type=float, default=0.0,
                    help="extra loss weight on latent pixels on the shape's outline (0: plain MSE)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    vae, unet, text_encoder = build_models()
    base_step, scaling = init_from_checkpoint(args.base, vae, unet, text_encoder)
    for m in (vae, unet, text_encoder):
        m.eval().requires_grad_(False)
    controlnet = build_controlnet(unet)
    opt = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=0.0)
    step = start_step = 0
    state_path = args.out / "state.pt"
    if state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        controlnet.load_state_dict(st["controlnet"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        start_step = st.get("start_step", 0)
        print(f"resumed at step {step}", flush=True)
    elif args.init_from is not None:
        step = start_step = init_from_file(args.init_from, controlnet)
        print(f"initialised from {args.init_from} (ControlNet step {step})", flush=True)
    tokenizer = load_tokenizer()
    sqrt_betas = torch.linspace(SCHEDULER_CONFIG["beta_start"] ** 0.5, SCHEDULER_CONFIG["beta_end"] ** 0.5, 1000)
    alphas_bar = torch.cumprod(1 - sqrt_betas**2, 0)

    def save() -> None:
        st = dict(controlnet=controlnet.state_dict(), opt=opt.state_dict(), step=step, start_step=start_step, base=str(args.base),
                  base_step=base_step, args={k: str(v) for k, v in vars(args).items()})
        tmp = state_path.with_suffix(".tmp")
        torch.save(st, tmp)
        tmp.replace(state_path)

    t0, log = time.time(), args.out / "log.txt"
    while step < args.steps:
        rng = np.random.default_rng([args.seed, 3, step])
        gen = torch.Generator().manual_seed(args.seed * 7907 + step)
        images, maps, captions, pictures = training_batch(rng, args.batch)
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            post = vae.encode(images).latent_dist
            latents = (post.mean + post.std * torch.randn(post.mean.shape, generator=gen)) * scaling
            ctx = text_encoder(ids).last_hidden_state
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=gen) + low_frequency_noise(tuple(latents.shape), args.pyramid_noise, gen)
        t = sample_timesteps(b, gen) if args.timesteps == "base" else torch.randint(0, 1000, (b,), generator=gen)
        ab = alphas_bar[t].view(b, 1, 1, 1)
        noisy = ab.sqrt() * latents + (1 - ab).sqrt() * noise
        down, mid = controlnet(noisy, t, ctx, controlnet_cond=maps, return_dict=False)
        pred = unet(noisy, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        if args.outline_weight:
            weights = loss_weights(pictures, latents.shape[-1], args.outline_weight)
            loss = weighted_mse(pred, noise, weights)
        else:
            loss = F.mse_loss(pred, noise)
        lr = lr_at(step, start_step, args.steps, args.lr, args.lr_schedule)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            msg = f"controlnet {step} loss {loss.item():.4f} {time.time() - t0:.0f}s"
            print(msg, flush=True)
            with log.open("a") as f:
                f.write(msg + "\n")
        if step % args.save_every == 0 or step == args.steps:
            save()
    print("done", flush=True)


if __name__ == "__main__":
    main()
