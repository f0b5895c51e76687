"""ControlNet units during generation, on tiny checkpoints and tiny ControlNets (diffusers folders in
models/ControlNet, loaded through the real scanner and model cache): weight 0, guidance window,
control modes, resize modes, txt2img / img2img / inpaint / hires, infotext round trip, errors."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from modules.config import load_settings
from modules.controlnet import apply
from modules.infotext import infotext_to_fields, parse_infotext
from modules.processing import txt2img
from modules.processing.context import RunContext
from modules.schemas import ControlNetUnit, Img2ImgRequest, RequestError, Txt2ImgRequest, parse_request
from modules.services import build_services
from tests.tiny_controlnet import write_controlnet
from tests.tiny_controlnets import tiny_controlnet, tiny_sd2_controlnet, write_controlnet_folder
from tests.tiny_models import noise_image, write_single_file

CN = "tiny-cn"


@pytest.fixture(scope="session")
def tiny_controlnets_dir(tmp_path_factory):
    """models/ControlNet: two tiny SD 1.x ControlNets and an SD 2.x one (diffusers folders), and an SD 1.x
    single file in the original layout."""
    root = tmp_path_factory.mktemp("cn") / "ControlNet"
    root.mkdir()
    write_controlnet_folder(root, "tiny-cn", tiny_controlnet(seed=0))
    write_controlnet_folder(root, "tiny-cn-b", tiny_controlnet(seed=1))
    write_controlnet_folder(root, "tiny-sd2-cn", tiny_sd2_controlnet())
    write_controlnet(root, "tiny-single", seed=2)  # the original single-file layout, with its yaml
    return root


@pytest.fixture(scope="module")
def services(tmp_path_factory, tiny_models_dir, tiny_controlnets_dir):
    """Services on the tiny checkpoints (plus a 9-channel inpainting one) and the tiny ControlNets."""
    data = tmp_path_factory.mktemp("cn-data")
    shutil.copytree(tiny_models_dir, data / "models" / "Stable-diffusion")
    write_single_file(data / "models" / "Stable-diffusion", "tiny-inpaint", seed=3, in_channels=9)
    shutil.copytree(tiny_controlnets_dir, data / "models" / "ControlNet")
    s = build_services(load_settings(data, {"show_progress_every_n_steps": 0}))
    yield s
    s.close()


class CountingNet:
    """A ControlNet that records the batch size of every call (an observer, not a patch)."""

    def __init__(self, net, calls: list[int]):
        self.net, self.calls = net, calls

    def __call__(self, sample, *args, **kwargs):
        self.calls.append(int(sample.shape[0]))
        return self.net(sample, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.net, name)


class CountingSource:
    """The services' ControlNets, each handed out wrapped in a CountingNet."""

    def __init__(self, services):
        self.services = services
        self.calls: list[int] = []

    def controlnet_infos(self):
        return self.services.controlnet_infos()

    @contextmanager
    def use_controlnet(self, title: str, field: str = "controlnet model"):
        with self.services.use_controlnet(title, field) as loaded:
            yield dataclasses.replace(loaded, model=CountingNet(loaded.model, self.calls))


@contextmanager
def counting_ctx(services, checkpoint: str = "tiny-a"):
    source = CountingSource(services)
    with services.models.use(services.checkpoints.get(checkpoint).name) as model:
        yield RunContext(model, services.settings, None, controlnets=source), source


def square_map(size=(32, 32), box=(8, 8, 24, 24)) -> Image.Image:
    """White square on black (a ready-made control map)."""
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 255, 255), box)
    return image


def unit(**fields) -> ControlNetUnit:
    return ControlNetUnit(**{"module": "none", "model": CN, "image": square_map(), **fields})


def t2i(services, units=(), **fields):
    req = Txt2ImgRequest(**{"prompt": "a red circle", "seed": 3, "steps": 4, "sampler_name": "Euler",
                            "save_images": False, "controlnet_units": list(units), **fields})
    return services.submit("txt2img", req).wait(timeout=120)


def i2i(services, units=(), **fields):
    req = Img2ImgRequest(**{"prompt": "a red circle", "seed": 3, "steps": 4, "sampler_name": "Euler",
                            "save_images": False, "init_images": [noise_image(32, 32, seed=1)],
                            "denoising_strength": 0.75, "controlnet_units": list(units), **fields})
    return services.submit("img2img", req).wait(timeout=120)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def differ(a, b, by: float = 1.0) -> bool:
    return float(np.abs(pixels(a) - pixels(b)).mean()) > by


# ---------------------------------------------------------------------------------------------
# weight 0, weight 1, guidance window


def test_weight_zero_equals_no_controlnet_pixel_for_pixel(services):
    plain = t2i(services)
    zero = t2i(services, [unit(weight=0.0)])
    assert np.array_equal(pixels(plain.images[0]), pixels(zero.images[0]))
    assert "ControlNet 0:" in zero.infotexts[0] and "ControlNet" not in plain.infotexts[0]
    # batches, another sampler and img2img too
    plain = t2i(services, batch_size=2, sampler_name="Euler a", cfg_scale=5)
    zero = t2i(services, [unit(weight=0.0)], batch_size=2, sampler_name="Euler a", cfg_scale=5)
    for a, b in zip(plain.images, zero.images, strict=True):
        assert np.array_equal(pixels(a), pixels(b))
    assert np.array_equal(pixels(i2i(services).images[0]), pixels(i2i(services, [unit(weight=0.0)]).images[0]))


def test_a_unit_changes_the_image_and_follows_its_map(services):
    plain = t2i(services).images[0]
    left = t2i(services, [unit(image=square_map(box=(0, 0, 16, 32)))]).images[0]
    right = t2i(services, [unit(image=square_map(box=(16, 0, 32, 32)))]).images[0]
    assert differ(plain, left) and differ(plain, right) and differ(left, right)
    other_model = t2i(services, [unit(model="tiny-cn-b", image=square_map(box=(0, 0, 16, 32)))]).images[0]
    assert differ(left, other_model)


def test_a_single_file_controlnet_runs_under_its_title(services):
    title = next(i.name for i in services.controlnet_infos() if i.stem == "tiny-single")
    assert title.startswith("tiny-single [") and len(title) == len("tiny-single [12345678]")
    by_stem = t2i(services, [unit(model="tiny-single")])
    by_title = t2i(services, [unit(model=title)])
    assert np.array_equal(pixels(by_stem.images[0]), pixels(by_title.images[0]))
    assert f"Model: {title}, Weight: 1.0" in by_stem.infotexts[0]
    assert differ(t2i(services).images[0], by_stem.images[0], 0.1)


def test_guidance_end_half_runs_the_controlnet_on_fewer_steps(services):
    def calls(**fields) -> int:
        with counting_ctx(services) as (ctx, source):
            txt2img.run(Txt2ImgRequest(prompt="x", seed=1, steps=8, sampler_name="Euler", save_images=False,
                                       controlnet_units=[unit(**fields)]), ctx)
        return len(source.calls)

    assert calls() == 8
    assert calls(guidance_end=0.5) == 4  # steps 0-3 of 8: fractions 0 .. 0.375
    assert calls(guidance_start=0.5) == 4
    assert calls(guidance_start=0.25, guidance_end=0.5) == 2
    late = t2i(services, [unit(guidance_start=0.5)]).images[0]
    full = t2i(services, [unit()]).images[0]
    assert differ(late, full, by=0.1)


def test_guidance_start_after_end_is_rejected():
    with pytest.raises(ValidationError, match="guidance_start"):
        ControlNetUnit(guidance_start=0.8, guidance_end=0.2)
    with pytest.raises(RequestError, match=r"controlnet_units\.0\.guidance_end"):
        parse_request(Txt2ImgRequest, {"controlnet_units": [{"guidance_start": 0.8, "guidance_end": 0.2}]})
    with pytest.raises(RequestError, match=r"controlnet_units\.0\.weight"):
        parse_request(Txt2ImgRequest, {"controlnet_units": [{"weight": 3}]})


# ---------------------------------------------------------------------------------------------
# control modes


def test_control_modes_residuals(services):
    """Balanced: both halves; prompt more important: scaled 0.825**(n-1-i); ControlNet more
    important: the same scaling, on the conditional half only (the net runs on that half)."""
    gen = torch.Generator().manual_seed(0)
    sample, embeds = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 77, 32, generator=gen)
    t = torch.tensor(500)
    out, calls = {}, {}
    for mode in (0, 1, 2):
        with counting_ctx(services) as (ctx, source):
            prepared = apply.prepare_units([unit(control_mode=mode)], ctx, 32, 32)
            with apply.controlnets_in_use(ctx, prepared) as control:
                out[mode] = control(sample, t, embeds, 0, 4, 1)  # row 0 unconditional
        calls[mode] = source.calls
    assert calls == {0: [2], 1: [2], 2: [1]}
    (bal_down, bal_mid), (soft_down, soft_mid), (cfg_down, cfg_mid) = out[0], out[1], out[2]
    scales = apply.soft_scales(len(bal_down) + 1)
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.825 ** len(bal_down))
    for b, s, scale in zip(bal_down, soft_down, scales, strict=False):
        assert torch.allclose(b * scale, s) and b.abs().max() > 0
    assert torch.allclose(bal_mid, soft_mid)
    for c, s in zip([*cfg_down, cfg_mid], [*soft_down, soft_mid], strict=True):
        assert torch.count_nonzero(c[0]) == 0  # the unconditional half gets nothing
        assert torch.allclose(c[1], s[1], atol=1e-5)


def test_control_modes_give_different_images(services):
    images = [t2i(services, [unit(control_mode=mode)]).images[0] for mode in (0, 1, 2)]
    assert differ(images[0], images[1], 0.1) and differ(images[0], images[2], 0.1) and differ(images[1], images[2], 0.1)
    # without CFG "ControlNet is more important" is "My prompt is more important" (no halves to tell apart)
    soft = t2i(services, [unit(control_mode=1)], cfg_scale=1).images[0]
    cfg = t2i(services, [unit(control_mode=2)], cfg_scale=1).images[0]
    assert np.array_equal(pixels(soft), pixels(cfg))


def test_controlnet_is_more_important_with_and_parts(services):
    """Composable prompts put several conditional groups after the unconditional rows: the
    ControlNet runs on all of them (batch 2 of 3 for one image, two parts) and none on the uncond rows."""
    with counting_ctx(services) as (ctx, source):
        result = txt2img.run(Txt2ImgRequest(prompt="a red circle AND a blue square :0.5", seed=1, steps=2,
                                            sampler_name="Euler", save_images=False,
                                            controlnet_units=[unit(control_mode=2)]), ctx)
    assert source.calls == [2, 2] and result.images[0].size == (32, 32)


def test_two_units_sum_their_residuals(services):
    one = t2i(services, [unit()]).images[0]
    both = t2i(services, [unit(), unit(model="tiny-cn-b", image=square_map(box=(0, 0, 8, 8)))]).images[0]
    assert differ(one, both)
    with counting_ctx(services) as (ctx, source):
        result = txt2img.run(Txt2ImgRequest(prompt="x", seed=1, steps=3, save_images=False,
                                            controlnet_units=[unit(), unit(enabled=False), unit(guidance_end=0.5)]), ctx)
    assert len(source.calls) == 3 + 2
    assert "ControlNet 0:" in result.infotexts[0] and "ControlNet 2:" in result.infotexts[0]
    assert "ControlNet 1:" not in result.infotexts[0]


# ---------------------------------------------------------------------------------------------
# resize modes


def test_resize_modes_place_the_map():
    """A 16x32 (w x h) map with a white square in the middle, fitted to 32x32."""
    small = square_map((16, 32), (4, 12, 12, 20))

    def white(mode: int) -> np.ndarray:
        hint = apply.hint_tensor(apply.fit_map(small, 32, 32, mode))
        assert hint.shape == (1, 3, 32, 32) and hint.dtype == torch.float32
        assert 0.0 <= hint.min() and hint.max() <= 1.0
        return hint[0, 0].numpy() > 0.5

    just, crop, fill = white(0), white(1), white(2)
    # Just Resize: stretched 2x across: x 8..24, y 12..20
    assert just[16, 10:22].all() and just[13:19, 16].all() and not just[16, 2:6].any() and not just[6, 16]
    # Crop and Resize: scaled 2x (32x64), the middle 32 rows kept: x 8..24, y 8..24
    assert crop[10:22, 10:22].all() and not crop[4, 16] and not crop[28, 16]
    # Resize and Fill: kept at 16x32, centred, black bands (the border's colour) left and right: x 12..20, y 12..20
    assert fill[13:19, 13:19].all() and not fill[16, 9:11].any() and not fill[16, 21:23].any()
    assert not fill[:, :8].any() and not fill[:, 24:].any()
    assert just.sum() > fill.sum() and crop.sum() > just.sum()


def test_resize_and_fill_pads_with_the_border_colour():
    grey_border = Image.new("RGB", (16, 32), (90, 90, 90))
    filled = np.asarray(apply.fit_map(grey_border, 32, 32, 2))
    assert (filled == 90).all()


def test_a_control_image_of_another_size_works_in_every_mode(services):
    wide = square_map((48, 24), (20, 8, 28, 16))
    with counting_ctx(services) as (ctx, _):
        for mode in (0, 1, 2):
            prepared = apply.prepare_units([unit(image=wide, resize_mode=mode)], ctx, 32, 48)
            assert prepared[0].hint.shape == (1, 3, 48, 32)
            assert prepared[0].detected.size == (48, 24)  # module none: the image itself
    for mode in ("Just Resize", "Crop and Resize", "Resize and Fill"):
        result = t2i(services, [unit(image=wide, resize_mode=mode)], width=32, height=48)
        assert result.images[0].size == (32, 48) and f"Resize Mode: {mode}" in result.infotexts[0]


def test_preprocessor_runs_at_processor_res_and_pixel_perfect(services):
    shape = square_map((64, 64), (16, 16, 48, 48))
    with counting_ctx(services) as (ctx, _):
        canny = apply.prepare_units([unit(module="canny", image=shape, processor_res=128)], ctx, 32, 32)[0]
        perfect = apply.prepare_units([unit(module="canny", image=shape, pixel_perfect=True)], ctx, 32, 32)[0]
    assert canny.detected.size == (128, 128)
    edges = np.asarray(canny.detected)[..., 0] > 0
    assert edges[32, 20:44].any() and not edges[64, 40:88].any()  # the square's outline, not its inside
    assert perfect.detected.size == (32, 32)  # pixel perfect: the output's size


# ---------------------------------------------------------------------------------------------
# img2img, inpainting, hires


def test_img2img_uses_the_init_image_when_the_unit_has_none(services):
    plain = i2i(services).images[0]
    own_map = i2i(services, [unit()]).images[0]
    from_init = i2i(services, [unit(image=None)])
    assert differ(plain, own_map) and differ(plain, from_init.images[0]) and differ(own_map, from_init.images[0])
    assert 'ControlNet 0: "Module: none, Model: tiny-cn, Weight: 1.0' in from_init.infotexts[0]
    with pytest.raises(RequestError, match="ControlNet unit 0: image"):
        t2i(services, [unit(image=None)])


def mask_box(size=(32, 32), box=(8, 8, 24, 24)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


@pytest.mark.parametrize("only_masked", [False, True])
def test_inpainting_with_a_unit(services, only_masked):
    fields = {"mask": mask_box(), "mask_blur": 0, "inpaint_full_res": only_masked, "denoising_strength": 1.0,
              "init_images": [noise_image(32, 32, seed=4)]}
    plain = i2i(services, **fields).images[0]
    with_unit = i2i(services, [unit(image=square_map(box=(0, 0, 16, 32)))], **fields)
    outside = np.asarray(mask_box()) == 0
    assert np.array_equal(pixels(plain)[outside], pixels(with_unit.images[0])[outside])  # unmasked pixels kept
    assert differ(plain, with_unit.images[0], 0.1)
    assert "ControlNet 0:" in with_unit.infotexts[0]


def test_only_masked_cuts_the_map_to_the_masked_region(services):
    with counting_ctx(services) as (ctx, _):
        big = square_map((64, 64), (0, 0, 32, 64))  # left half white
        prepared = apply.prepare_units([unit(image=big, resize_mode=0)], ctx, 32, 32,
                                       init_image=Image.new("RGB", (32, 32)), crop=((64, 64), (16, 0, 48, 64)))
    white = prepared[0].hint[0, 0].numpy() > 0.5
    assert white[:, :14].all() and not white[:, 18:].any()  # the region's left half is the map's white


def test_nine_channel_inpainting_checkpoint_with_a_unit(services):
    fields = {"mask": mask_box(), "mask_blur": 0, "inpaint_full_res": False, "denoising_strength": 1.0,
              "sd_model_checkpoint": "tiny-inpaint"}
    plain = i2i(services, **fields)
    with_unit = i2i(services, [unit()], **fields)
    assert differ(plain.images[0], with_unit.images[0], 0.1)
    assert "ControlNet 0:" in with_unit.infotexts[0] and "tiny-inpaint" in with_unit.infotexts[0]


def test_hires_pass_uses_the_units_at_the_hires_size(services):
    fields = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.5,
              "hr_second_pass_steps": 4}
    with counting_ctx(services) as (ctx, source):
        result = txt2img.run(Txt2ImgRequest(prompt="x", seed=1, steps=4, sampler_name="Euler", save_images=False,
                                            controlnet_units=[unit()], **fields), ctx)
    assert len(source.calls) == 4 + 2  # first pass, then the 2 steps the hires pass runs
    assert result.images[0].size == (64, 64) and "ControlNet 0:" in result.infotexts[0]
    assert "Hires upscale: 2" in result.infotexts[0]
    plain = t2i(services, **fields).images[0]
    assert differ(plain, t2i(services, [unit()], **fields).images[0])


# ---------------------------------------------------------------------------------------------
# infotext


def test_infotext_round_trip(services):
    units = [unit(module="canny", image=square_map(), weight=0.8, resize_mode=2, processor_res=64, threshold_a=50,
                  threshold_b=150, guidance_start=0.1, guidance_end=0.9, control_mode=1, pixel_perfect=False),
             unit(enabled=False),
             unit(model="tiny-cn-b", control_mode="ControlNet is more important", low_vram=True)]
    result = t2i(services, units)
    text = result.infotexts[0]
    assert ('ControlNet 0: "Module: canny, Model: tiny-cn, Weight: 0.8, Resize Mode: Resize and Fill, Low Vram: False,'
            ' Processor Res: 64, Threshold A: 50.0, Threshold B: 150.0, Guidance Start: 0.1, Guidance End: 0.9,'
            ' Pixel Perfect: False, Control Mode: My prompt is more important"') in text
    params = parse_infotext(text)
    assert params["Steps"] == "4" and params["ControlNet 2"].startswith("Module: none, Model: tiny-cn-b,")
    back = apply.units_from_params(params)
    assert len(back) == 3 and back[1].enabled is False
    for before, after in ((units[0], back[0]), (units[2], back[2])):
        assert after.image is None and after.enabled
        assert after.model_dump(exclude={"image"}) == before.model_dump(exclude={"image"})
    fields = infotext_to_fields(params)
    assert [u.model for u in fields["controlnet_units"]] == ["tiny-cn", "None", "tiny-cn-b"]
    assert fields["_unparsed"] == []
    # the restored units run again to the same image
    rerun = t2i(services, [u.model_copy(update={"image": square_map()}) if u.enabled else u for u in back])
    assert np.array_equal(pixels(result.images[0]), pixels(rerun.images[0]))


def test_infotext_with_a_broken_controlnet_value_is_listed_as_unparsed():
    params = parse_infotext('p\nSteps: 2, Seed: 1, ControlNet 0: "Module: none, Model: x, Weight: heavy"')
    fields = infotext_to_fields(params)
    assert "controlnet_units" not in fields and fields["_unparsed"] == ["ControlNet 0"]
    assert apply.units_from_params({"Steps": "2"}) == []


# ---------------------------------------------------------------------------------------------
# errors, cancel, progress


@pytest.mark.parametrize("fields, message", [
    ({"model": "nope"}, r"ControlNet unit 0: model: 'nope' not found; choose None or one of: tiny-cn, tiny-cn-b"),
    ({"model": "None", "module": "canny"}, r"ControlNet unit 0: model: no model chosen \(preprocessor 'canny'\)"),
    ({"model": "tiny-sd2-cn"}, r"ControlNet unit 0: model: tiny-sd2-cn is an SD 2.x ControlNet, but the checkpoint is SD 1.x"),
    ({"module": "canny", "threshold_a": 300}, r"ControlNet unit 0: threshold_a: 300 is outside"),
    ({"module": "sharpen"}, r"ControlNet unit 0: module: unknown preprocessor 'sharpen'"),
    ({"image": "not an image"}, r"ControlNet unit 0: image: expected an image"),
])
def test_bad_units_are_request_errors(services, fields, message):
    with pytest.raises(RequestError, match=message):
        t2i(services, [unit(**fields)])
    assert t2i(services).images  # the queue goes on


def test_untouched_and_disabled_units_are_skipped(services):
    with counting_ctx(services) as (ctx, _):
        assert apply.prepare_units([ControlNetUnit(), unit(enabled=False)], ctx, 32, 32) == []


def test_progress_and_cancel_with_units(services):
    job = services.submit("txt2img", Txt2ImgRequest(prompt="x", seed=1, steps=4, n_iter=2, save_images=False,
                                                    controlnet_units=[unit()]))
    job.wait(120)
    snap = job.progress.snapshot()
    assert (snap.step, snap.total) == (8, 8)
    long = services.submit("txt2img", Txt2ImgRequest(prompt="x", seed=4, steps=150, save_images=False,
                                                     controlnet_units=[unit()]))
    while long.progress.snapshot().step < 2:
        threading.Event().wait(0.01)
    services.queue.cancel(long.id)  # a running job is interrupted: it stops and keeps its partial image
    result = long.wait(60)
    assert result.interrupted and len(result.images) == 1
    assert long.progress.snapshot().step < 150
