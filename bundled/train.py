"""Train the bundled shapes model (a small SD 1.x) from scratch on the CPU or a GPU.

Two phases, one process, resumable:

1. **VAE** (``--vae-steps``): reconstruction loss weighted towards the shape's pixels (so small
   shapes keep their colour), a tiny KL term, and the posterior log-variance started near -10.
2. **UNet + text encoder** (``--steps``): epsilon prediction on SD's scaled-linear schedule, with
   offset noise (low frequencies must come from the text, not leak through the noise), half the
   timesteps drawn from the noisy half of the schedule, 10% empty captions for CFG, and an EMA
   of the weights, which is what gets exported. ``--pyramid-noise`` extends offset noise to 2x2
   and 4x4 grids (the shape's position must not leak through the noise) and ``--text-probe``
   adds a small position/shape classification loss on the pooled text (training-only heads), so
   the position words of a from-scratch text encoder leave their random initialisation.

The data is drawn on the fly from ``numpy.random.default_rng([seed, step])``, so a run is
deterministic given its seed and a resumed run sees the same batches as an uninterrupted one.
A checkpoint (``state.pt``) is written every ``--save-every`` steps; run the same command again
to resume. Export with ``python -m bundled.export``. ``--init-from`` starts a new run from an
exported checkpoint instead (e.g. the shipped one, to train it further on another machine): the
VAE phase is skipped and the step count continues from the one recorded in the file.

    python -m bundled.train --out runs/shapes --threads 2
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bundled.architecture import SCHEDULER_CONFIG, build_models
from bundled.shapes import POSITION_PHRASES, POSITIONS, SHAPES, training_batch
from bundled.weighting import loss_weights, lr_at, weighted_mse

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "configs" / "tokenizer"


def load_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), model_max_length=77)


def shape_weights(images: torch.Tensor) -> torch.Tensor:
    """Per-pixel loss weights: 1 on the background, 8 on the shape (pixels unlike the corner)."""
    corner = images[:, :, :2, :2].mean(dim=(2, 3), keepdim=True)
    differs = (images - corner).abs().amax(dim=1, keepdim=True) > 0.1
    return 1.0 + 7.0 * differs.float()


def vae_step(vae, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    posterior = vae.encode(images).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
    recon = vae.decode(z).sample
    rec = (shape_weights(images) * (recon - images).square()).mean()
    kl = posterior.kl().mean() / z[0].numel()
    return rec + 1e-6 * kl


def sample_timesteps(n: int, gen: torch.Generator) -> torch.Tensor:
    """Half uniform over [0, 1000), half uniform over the noisy half [500, 1000)."""
    uniform = torch.randint(0, 1000, (n,), generator=gen)
    noisy = torch.randint(500, 1000, (n,), generator=gen)
    pick = torch.rand(n, generator=gen) < 0.5
    return torch.where(pick, noisy, uniform)


def low_frequency_noise(shape: tuple[int, ...], strength: float, gen: torch.Generator) -> torch.Tensor:
    """Noise on coarse grids (1x1, 2x2, 4x4), bilinearly upsampled to ``shape``.

    Offset noise generalised to a few scales ("pyramid" noise). SD's schedule leaves a few
    per cent of the image in x_t even at t=999, so without it the model learns to read the
    background colour (1x1) and the shape's position (2x2, 4x4) from the noise instead of the
    prompt. Each level's amplitude is ``strength / cells``, where ``cells`` is the side of one
    grid cell in latent pixels over the latent side: about doubling the white noise that the
    mean over such a cell already has. ``strength`` 0.1 at the 1x1 level is plain offset noise.
    """
    b, c, h, w = shape
    out = torch.zeros(shape)
    for grid in (1, 2, 4):
        if grid > min(h, w):
            break
        coarse = torch.randn(b, c, grid, grid, generator=gen)
        out += strength * grid * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return out


class CaptionProbe(torch.nn.Module):
    """Training-only linear heads on the text encoder's pooled output: position and shape.

    A from-scratch text encoder leaves the position words at their random initialisation (the
    UNet cannot use them before they differ, and they cannot learn to differ before the UNet
    uses them). A small classification loss on the pooled text breaks that circle; the heads
    are never exported.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.position = torch.nn.Linear(hidden, len(POSITIONS))
        self.shape = torch.nn.Linear(hidden, len(SHAPES))

    def loss(self, pooled: torch.Tensor, captions: list[str], scenes) -> torch.Tensor:
        pos_ids = list(POSITIONS)
        pos_t, shape_t = [], []
        for caption, s in zip(captions, scenes, strict=True):
            named = bool(caption) and any(p in caption for p in POSITION_PHRASES[s.position])
            pos_t.append(pos_ids.index(s.position) if named else -100)
            shape_t.append(SHAPES.index(s.shape) if caption else -100)
        dev = pooled.device
        pos_loss = F.cross_entropy(self.position(pooled), torch.tensor(pos_t, device=dev), ignore_index=-100)
        shape_loss = F.cross_entropy(self.shape(pooled), torch.tensor(shape_t, device=dev), ignore_index=-100)
        return pos_loss + shape_loss


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float = 0.999) -> None:
    decay = min(max_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1 - decay)


def init_from_checkpoint(path: Path, vae, unet, text_encoder) -> tuple[int, float]:
    """Load an exported checkpoint's weights through Easel's loader; returns (step, scaling)."""
    from safetensors import safe_open

    from modules.checkpoints import CheckpointInfo
    from modules.model_loading import load_checkpoint

    yaml = path.with_suffix(".yaml")
    pipe = load_checkpoint(CheckpointInfo(path.name, path, "single", yaml if yaml.exists() else None), None).pipe
    vae.load_state_dict({k: v.float() for k, v in pipe.vae.state_dict().items()})
    unet.load_state_dict({k: v.float() for k, v in pipe.unet.state_dict().items()})
    text_encoder.load_state_dict({k: v.float() for k, v in pipe.text_encoder.state_dict().items()})
    with safe_open(str(path), "pt") as f:
        step = int((f.metadata() or {}).get("easel_train_step", 0))
    return step, float(pipe.vae.config.scaling_factor)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/shapes"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--vae-steps", type=int, default=2000)
    ap.add_argument("--vae-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=9000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--offset-noise", type=float, default=0.1, help="plain offset noise (1x1), when --pyramid-noise is 0")
    ap.add_argument("--pyramid-noise", type=float, default=0.0,
                    help="low-frequency noise on 1x1, 2x2 and 4x4 grids instead of offset noise (e.g. 0.1)")
    ap.add_argument("--text-probe", type=float, default=0.0,
                    help="weight of the position/shape classification loss on the pooled text (e.g. 0.02)")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the UNet and text encoder (fp32 weights)")
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--init-from", type=Path, default=None, help="exported .safetensors to start from (no state.pt yet)")
    ap.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                    help="cosine: decay to zero at --steps (from this run's first step)")
    ap.add_argument("--rewarm", type=int, default=0,
                    help="warm the learning rate up over this many steps from this run's first step (a fresh "
                         "optimizer after --init-from); 0: over 300 steps from step 0, as the shipped file was trained")
    ap.add_argument("--outline-weight", type=float, default=0.0,
                    help="extra loss weight on latent pixels on the shape's outline (0: plain MSE)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(args.device)

    torch.manual_seed(args.seed)
    vae, unet, text_encoder = build_models()
    tokenizer = load_tokenizer()
    vae_opt = torch.optim.Adam(vae.parameters(), lr=5e-4)
    with torch.no_grad():  # start the posterior log-variance near -10
        conv = vae.encoder.conv_out
        conv.weight[conv.out_channels // 2 :] *= 0.01
        conv.bias[conv.out_channels // 2 :] = -10.0
    probe = CaptionProbe(text_encoder.config.hidden_size)
    params = list(unet.parameters()) + list(text_encoder.parameters()) + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    vae_done, step, start_step, scaling = 0, 0, 0, None

    state_path = args.out / "state.pt"
    if state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        vae.load_state_dict(st["vae"])
        vae_opt.load_state_dict(st["vae_opt"])
        unet.load_state_dict(st["unet"])
        text_encoder.load_state_dict(st["text_encoder"])
        ema_unet.load_state_dict(st["ema_unet"])
        ema_text.load_state_dict(st["ema_text"])
        if "probe" in st:
            probe.load_state_dict(st["probe"])
        opt.load_state_dict(st["opt"])
        vae_done, step, scaling = st["vae_done"], st["step"], st["scaling"]
        start_step = st.get("start_step", 0)
        print(f"resumed: vae {vae_done}/{args.vae_steps}, unet {step}/{args.steps}", flush=True)
    elif args.init_from is not None:
        step, scaling = init_from_checkpoint(args.init_from, vae, unet, text_encoder)
        start_step = step
        ema_unet.load_state_dict(unet.state_dict())
        ema_text.load_state_dict(text_encoder.state_dict())
        vae_done = args.vae_steps
        print(f"initialised from {args.init_from} (UNet step {step})", flush=True)
    for m in (vae, unet, text_encoder, ema_unet, ema_text, probe):
        m.to(dev)

    def save() -> None:
        st = dict(
            vae=vae.state_dict(), vae_opt=vae_opt.state_dict(), unet=unet.state_dict(),
            text_encoder=text_encoder.state_dict(), ema_unet=ema_unet.state_dict(), probe=probe.state_dict(),
            ema_text=ema_text.state_dict(), opt=opt.state_dict(), vae_done=vae_done, step=step, start_step=start_step,
            scaling=scaling, args={k: str(v) for k, v in vars(args).items()},
        )
        tmp = state_path.with_suffix(".tmp")
        torch.save(st, tmp)
        tmp.replace(state_path)

    t0, log = time.time(), args.out / "log.txt"
    while vae_done < args.vae_steps:
        rng = np.random.default_rng([args.seed, 0, vae_done])
        gen = torch.Generator().manual_seed(args.seed * 7919 + vae_done)
        images = torch.from_numpy(training_batch(rng, args.vae_batch)[0]).to(dev)
        loss = vae_step(vae, images, gen)
        vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        vae_opt.step()
        vae_done += 1
        if vae_done % 50 == 0:
            msg = f"vae {vae_done} loss {loss.item():.4f} {time.time() - t0:.0f}s"
            print(msg, flush=True)
            with log.open("a") as f:
                f.write(msg + "\n")
        if vae_done % args.save_every == 0 or vae_done == args.vae_steps:
            save()

    vae.eval().requires_grad_(False)
    if scaling is None:
        with torch.no_grad():
            images = torch.from_numpy(training_batch(np.random.default_rng([args.seed, 1]), 256)[0]).to(dev)
            scaling = float(1.0 / vae.encode(images).latent_dist.mean.std())
        save()
    sqrt_betas = torch.linspace(SCHEDULER_CONFIG["beta_start"] ** 0.5, SCHEDULER_CONFIG["beta_end"] ** 0.5, 1000)
    alphas_bar = torch.cumprod(1 - sqrt_betas**2, 0).to(dev)  # SD's scaled-linear schedule

    while step < args.steps:
        rng = np.random.default_rng([args.seed, 2, step])
        gen = torch.Generator().manual_seed(args.seed * 104729 + step)
        images, captions, scenes = training_batch(rng, args.batch)
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            post = vae.encode(torch.from_numpy(images).to(dev)).latent_dist
            latents = (post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(dev)) * scaling
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=gen)  # draw order matters: resumed runs must match
        if args.pyramid_noise:
            noise = noise + low_frequency_noise(tuple(latents.shape), args.pyramid_noise, gen)
        else:
            noise = noise + args.offset_noise * torch.randn(b, latents.shape[1], 1, 1, generator=gen)
        noise = noise.to(dev)
        t = sample_timesteps(b, gen).to(dev)
        ab = alphas_bar[t].view(b, 1, 1, 1)
        noisy = ab.sqrt() * latents + (1 - ab).sqrt() * noise
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            text = text_encoder(ids.to(dev))
            ctx = text.last_hidden_state
            pred = unet(noisy, t, ctx).sample
        if args.outline_weight:
            pictures = list(np.rint((images.transpose(0, 2, 3, 1) + 1) * 127.5).astype(np.uint8))
            weights = loss_weights(pictures, latents.shape[-1], args.outline_weight).to(dev)
            loss = weighted_mse(pred.float(), noise, weights)
        else:
            loss = F.mse_loss(pred.float(), noise)
        if args.text_probe:
            loss = loss + args.text_probe * probe.loss(text.pooler_output.float(), captions, scenes)
        warm = (args.rewarm, start_step) if args.rewarm else (300, 0)
        lr = lr_at(step, start_step, args.steps, args.lr, args.lr_schedule, warmup=warm[0], warmup_from=warm[1])
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        ema_update(ema_unet, unet, step)
        ema_update(ema_text, text_encoder, step)
        if step % 50 == 0:
            msg = f"unet {step} loss {loss.item():.4f} lr {lr:.2e} {time.time() - t0:.0f}s"
            print(msg, flush=True)
            with log.open("a") as f:
                f.write(msg + "\n")
        if step % args.save_every == 0 or step == args.steps:
            save()
    print("done", flush=True)


if __name__ == "__main__":
    main()
