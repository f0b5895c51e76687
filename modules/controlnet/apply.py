"""ControlNet units during generation: each unit's control map, and the residuals added to the UNet.

1. ``prepare_units``: for every enabled unit, find its model, take its image (or the img2img init
   image), run the preprocessor at the processor resolution (pixel perfect: computed from the
   image and output sizes), fit the map to the output size by the unit's resize mode, and make
   the hint tensor the ControlNet takes ((1, 3, H, W) in [0, 1] at pixel size).
2. ``controlnets_in_use``: the units' ControlNet models, locked on the device for the run
   (another job cannot evict them), checked against the checkpoint; yields a ``Control``.
3. ``Control`` is called by the sampling loop before every UNet call: each unit whose
   [guidance_start, guidance_end) window holds the step's fraction of the schedule runs its
   ControlNet (``conditioning_scale`` = weight), and the residuals of all active units are summed.
   Control modes, as sd-webui-controlnet: *Balanced*, the residuals go to both halves of the CFG
   batch; *My prompt is more important*, they are scaled down from the deepest layer to the
   shallowest (0.825 ** (n - 1 - i) for residual i of n, the mid block's last, at 1);
   *ControlNet is more important*, that scaling and the residuals only on the conditional rows
   (the unconditional rows get none), so CFG amplifies the control.

Errors are RequestErrors naming ``ControlNet unit N: field``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from modules import masks
from modules.controlnet.params import unit_params, units_from_params
from modules.schemas import CONTROL_MODES, ControlNetUnit, RequestError

__all__ = ["Control", "PreparedUnit", "controlnets_in_use", "infotext_params", "prepare_units", "units_from_params"]

BALANCED, PROMPT_MORE, CONTROL_MORE = range(len(CONTROL_MODES))
SOFT_INJECTION_BASE = 0.825  # the ControlNet authors' layer decay ("guess mode")
DEFAULT_PROCESSOR_RES = 512

Residuals = tuple[list[torch.Tensor], torch.Tensor]
Added = dict[str, torch.Tensor] | None  # SDXL's added_cond_kwargs (text_embeds, time_ids), row for row with the batch
Crop = tuple[tuple[int, int], tuple[int, int, int, int]]  # (original size, box) of inpainting "only masked"


class ControlNetSource(Protocol):
    """Where a run finds ControlNet models (``Services`` is one)."""

    def controlnet_infos(self) -> list[Any]: ...

    def use_controlnet(self, title: str) -> AbstractContextManager[Any]: ...


@dataclass(frozen=True)
class PreparedUnit:
    """One enabled unit made ready: its model's title, the detected map and the hint at output size."""

    index: int  # the unit's place in the request ("ControlNet N" in the infotext)
    unit: ControlNetUnit
    title: str  # the model's title, as the infotext records it
    detected: Image.Image  # the preprocessor's map (RGB), before fitting to the output
    hint: torch.Tensor  # (1, 3, H, W) float in [0, 1], the detected map fitted to the output size

    def resized(self, width: int, height: int) -> PreparedUnit:
        """The same unit with its map fitted to another output size (hires fix)."""
        return replace(self, hint=hint_tensor(fit_map(self.detected, width, height, self.unit.resize_mode)))


def unit_error(index: int, field: str, message: str) -> RequestError:
    return RequestError(f"ControlNet unit {index}: {field}: {message}")


# ---------------------------------------------------------------------------------------------
# 1. preparing units


def prepare_units(
    units: list[ControlNetUnit],
    ctx,
    width: int,
    height: int,
    init_image: Image.Image | None = None,
    crop: Crop | None = None,
) -> list[PreparedUnit]:
    """The enabled units of a request, ready for ``controlnets_in_use``.

    ``init_image``: the image img2img starts from (as prepared for the model), the control image
    of units without their own. ``crop`` = ((w, h), box) for inpainting "only masked": a unit's
    own image is stretched to (w, h), the original's size, then cut to ``box`` like the init image.
    A unit left untouched (no model, module "none", no image) is skipped.
    """
    prepared: list[PreparedUnit] = []
    for index, unit in enumerate(units):
        if not unit.enabled or is_untouched(unit):
            continue
        title = find_model(ctx, index, unit)
        image = unit_image(index, unit, init_image, crop)
        detected = detect(ctx, index, unit, image, width, height)
        hint = hint_tensor(fit_map(detected, width, height, unit.resize_mode))
        prepared.append(PreparedUnit(index, unit, title, detected, hint))
    return prepared


def is_untouched(unit: ControlNetUnit) -> bool:
    return unit.model in ("", "None") and unit.module in ("", "none") and unit.image is None


def model_source(ctx, index: int) -> ControlNetSource:
    source = getattr(ctx, "controlnets", None)
    if source is None:
        raise unit_error(index, "model", "ControlNet models are not available in this context")
    return source


def find_model(ctx, index: int, unit: ControlNetUnit) -> str:
    """The title of the unit's model (named by title, name or file name); RequestError listing the choices."""
    from modules.controlnet.models import find_controlnet

    field = f"ControlNet unit {index}: model"
    infos = model_source(ctx, index).controlnet_infos()
    info = find_controlnet(unit.model, infos, field=field)
    if info is None:
        choices = ", ".join(i.name for i in infos) or "none installed (put ControlNet models in models/ControlNet)"
        raise RequestError(f"{field}: no model chosen (preprocessor {unit.module!r}); choose one of: {choices}")
    return info.name


def unit_image(index: int, unit: ControlNetUnit, init_image: Image.Image | None, crop: Crop | None) -> Image.Image:
    """The unit's control image as RGB: its own, else the init image; cut to the inpainting crop."""
    if unit.image is None:
        if init_image is None:
            raise unit_error(index, "image", "no control image; give one (img2img uses the init image when none is given)")
        return masks.to_rgb(init_image, f"ControlNet unit {index}: image")
    image = masks.to_rgb(unit.image, f"ControlNet unit {index}: image")
    if crop is not None:
        size, box = crop
        image = image.resize(size, masks.LANCZOS) if image.size != size else image
        image = image.crop(box)
    return image


def detect(ctx, index: int, unit: ControlNetUnit, image: Image.Image, width: int, height: int) -> Image.Image:
    """The preprocessor's map for ``image`` (RGB) at the unit's processor resolution."""
    from modules.controlnet import preprocessors

    if unit.pixel_perfect:
        resolution = preprocessors.pixel_perfect_resolution(image.size, width, height, unit.resize_mode)
    else:
        resolution = DEFAULT_PROCESSOR_RES if unit.processor_res < 0 else unit.processor_res
    annotators = ctx.settings.models_dir / "ControlNet" / "annotators"
    device = str(ctx.model.pipe._execution_device) if ctx.model is not None else "cpu"
    try:
        detected = preprocessors.preprocess(unit.module, image, resolution, unit.threshold_a, unit.threshold_b,
                                            annotators, device)
    except RequestError as err:  # the message starts with the parameter at fault
        text = str(err)
        if getattr(err, "field", None) == "resolution":
            text = "processor_res" + text.removeprefix("resolution")
        raise RequestError(f"ControlNet unit {index}: {text}") from None
    return detected.convert("RGB")


def fit_map(detected: Image.Image, width: int, height: int, resize_mode: int) -> Image.Image:
    """The map at width x height: 0 Just Resize (stretch), 1 Crop and Resize (cover, centre crop),
    2 Resize and Fill (fit inside, centred, the bands filled with the median colour of the map's
    border, as sd-webui-controlnet does, so no edge lines are stretched into the bands)."""
    if resize_mode in (0, 1):
        return masks.resize_image(detected, width, height, resize_mode)
    scale = min(width / detected.width, height / detected.height)
    w, h = max(1, round(detected.width * scale)), max(1, round(detected.height * scale))
    arr = np.asarray(detected)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    out = Image.new("RGB", (width, height), tuple(int(c) for c in np.median(border, axis=0)))
    out.paste(detected.resize((w, h), masks.LANCZOS), ((width - w) // 2, (height - h) // 2))
    return out


def hint_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1]: what a diffusers ControlNet takes as ``controlnet_cond``."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def detected_maps(prepared: list[PreparedUnit], width: int, height: int) -> list[Image.Image]:
    """The units' detected maps fitted to the output size, for the units that keep theirs (``save_detected_map``)."""
    return [fit_map(p.detected, width, height, p.unit.resize_mode) for p in prepared if p.unit.save_detected_map]


def infotext_params(prepared: list[PreparedUnit]) -> dict[str, str]:
    """The ``ControlNet N`` infotext keys of the units that ran."""
    return unit_params([(p.index, p.unit, p.title) for p in prepared])


# ---------------------------------------------------------------------------------------------
# 2. the models, locked for the run


@dataclass(frozen=True)
class ActiveUnit:
    prepared: PreparedUnit
    net: Any  # a diffusers ControlNetModel (or anything called like one)


@contextmanager
def controlnets_in_use(ctx, prepared: list[PreparedUnit]) -> Iterator[Control | None]:
    """A ``Control`` for the prepared units, their models locked on the device (None when there are none)."""
    if not prepared:
        yield None
        return
    with ExitStack() as stack:
        active = []
        for p in prepared:
            loaded = stack.enter_context(model_source(ctx, p.index).use_controlnet(p.title))
            check_compatible(ctx, p.index, loaded)
            active.append(ActiveUnit(p, loaded.model))
        yield Control(active)


def check_compatible(ctx, index: int, loaded) -> None:
    """A ControlNet for another model family, or one whose shapes do not fit this UNet, is refused."""
    from modules.controlnet.models import check_family

    field = f"ControlNet unit {index}: model"
    check_family(loaded, ctx.model.arch, field=field)
    title = loaded.info.name
    net_cfg, unet_cfg = loaded.model.config, ctx.model.pipe.unet.config
    shape = ("cross_attention_dim", "block_out_channels", "layers_per_block")
    theirs, ours = ({k: _listed(cfg.get(k)) for k in shape} for cfg in (net_cfg, unet_cfg))
    if theirs != ours:
        raise RequestError(f"{field}: {title} does not fit this checkpoint's UNet ({theirs}; the UNet has {ours})")
    factor = 2 ** (len(net_cfg.conditioning_embedding_out_channels) - 1)
    if factor != ctx.model.vae_scale_factor:
        raise RequestError(f"{field}: {title} takes maps at {factor}x the latent size; this checkpoint's VAE scales"
                           f" by {ctx.model.vae_scale_factor}")


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


# ---------------------------------------------------------------------------------------------
# 3. residuals at every step


def is_active(unit: ControlNetUnit, step: int, total: int) -> bool:
    """Whether the unit runs at ``step`` of ``total``: its fraction lies in [guidance_start, guidance_end)."""
    fraction = step / max(total, 1)
    return unit.guidance_start <= fraction < unit.guidance_end


def soft_scales(count: int) -> list[float]:
    """Per-residual scales of the soft injection: the deepest (the mid block's, last) keeps 1."""
    return [SOFT_INJECTION_BASE ** (count - 1 - i) for i in range(count)]


def run_net(net, hint: torch.Tensor, sample: torch.Tensor, t, embeds: torch.Tensor, weight: float,
            added: Added = None) -> Residuals:
    """One ControlNet call on a batch; the hint is repeated over it. ``added``: SDXL's pooled text and
    size conditioning (``added_cond_kwargs``), the same the UNet gets."""
    dtype, device = net.dtype, net.device
    cond = hint.to(device, dtype).expand(sample.shape[0], -1, -1, -1)
    kwargs = {}
    if added is not None:
        kwargs["added_cond_kwargs"] = {key: value.to(device, dtype) for key, value in added.items()}
    down, mid = net(sample.to(device, dtype), t, encoder_hidden_states=embeds.to(device, dtype),
                    controlnet_cond=cond, conditioning_scale=float(weight), return_dict=False, **kwargs)
    return list(down), mid


def unit_residuals(active: ActiveUnit, sample: torch.Tensor, t, embeds: torch.Tensor, uncond_rows: int,
                   added: Added = None) -> Residuals:
    """One unit's residuals for the whole batch, by its control mode; the batch's first
    ``uncond_rows`` rows are the unconditional ones (0: no guidance)."""
    unit = active.prepared.unit
    if unit.control_mode == CONTROL_MORE and uncond_rows:  # the conditional rows only; the uncond rows get zeros
        cond_added = {key: value[uncond_rows:] for key, value in added.items()} if added is not None else None
        down, mid = run_net(active.net, active.prepared.hint, sample[uncond_rows:], t, embeds[uncond_rows:], unit.weight,
                            cond_added)
        down = [torch.cat([d.new_zeros((uncond_rows, *d.shape[1:])), d]) for d in down]
        mid = torch.cat([mid.new_zeros((uncond_rows, *mid.shape[1:])), mid])
    else:
        down, mid = run_net(active.net, active.prepared.hint, sample, t, embeds, unit.weight, added)
    if unit.control_mode != BALANCED:
        scales = soft_scales(len(down) + 1)
        down = [d * s for d, s in zip(down, scales, strict=False)]
        mid = mid * scales[-1]
    return down, mid


class Control:
    """The ControlNets of one run; called before each UNet call for the residuals to add (or None)."""

    def __init__(self, active: list[ActiveUnit]) -> None:
        self.active = active

    def resized(self, width: int, height: int) -> Control:
        """The same units with their maps fitted to another output size (the hires pass)."""
        return Control([ActiveUnit(a.prepared.resized(width, height), a.net) for a in self.active])

    def __call__(
        self, sample: torch.Tensor, t, embeds: torch.Tensor, step: int, total: int, uncond_rows: int,
        added: Added = None,
    ) -> Residuals | None:
        """Summed residuals of the units active at ``step`` of ``total`` (None: no unit is); the
        first ``uncond_rows`` rows of the batch are unconditional (composable prompts have several
        conditional groups after them)."""
        total_down: list[torch.Tensor] | None = None
        total_mid: torch.Tensor | None = None
        for active in self.active:
            if not is_active(active.prepared.unit, step, total):
                continue
            down, mid = unit_residuals(active, sample, t, embeds, uncond_rows, added)
            if total_down is None:
                total_down, total_mid = down, mid
            else:
                total_down = [a + b for a, b in zip(total_down, down, strict=True)]
                total_mid = total_mid + mid
        if total_down is None:
            return None
        return [d.to(sample.device, sample.dtype) for d in total_down], total_mid.to(sample.device, sample.dtype)
