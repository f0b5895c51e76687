"""The web UI's handlers without a browser: requests built from named fields, masks, the X/Y plot,
settings validation, and a real job streamed through the output panel."""

from __future__ import annotations

import json

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from modules.config import SettingsError
from modules.schemas import Img2ImgRequest, OutpaintRequest, RequestError, Txt2ImgRequest
from webui import extras, img2img, inpaint, outpaint, runner, settings, txt2img, xyplot
from webui.widgets import fields_from_infotext, given, output_panel, reuse_seed

TXT2IMG_VALUES = {
    "prompt": "a cat", "negative_prompt": "dog", "styles": [], "sampler_name": "DPM++ 2M", "scheduler": "Karras",
    "steps": 2, "width": 32, "height": 48, "n_iter": 1, "batch_size": 1, "cfg_scale": 5.5, "seed": 7,
    "subseed": -1, "subseed_strength": 0.0, "enable_hr": False, "hr_sampler_name": "Use same sampler",
    "hr_scheduler": "Use same scheduler", "hr_prompt": None, "hr_negative_prompt": None,
}


def test_txt2img_request_is_built_from_named_fields():
    req = txt2img.build_request(TXT2IMG_VALUES)
    assert isinstance(req, Txt2ImgRequest)
    assert (req.prompt, req.negative_prompt, req.sampler_name, req.scheduler) == ("a cat", "dog", "DPM++ 2M", "Karras")
    assert (req.steps, req.width, req.height, req.cfg_scale, req.seed) == (2, 32, 48, 5.5, 7)
    assert req.hr_sampler_name is None and req.hr_scheduler is None
    assert req.hr_prompt == ""  # None (an unrendered textbox) falls back to the request default


def test_txt2img_refiner_fields():
    assert txt2img.build_request({**TXT2IMG_VALUES, "refiner_checkpoint": "None"}).refiner_checkpoint is None
    req = txt2img.build_request({**TXT2IMG_VALUES, "refiner_checkpoint": "tiny-b.safetensors", "refiner_switch_at": 0.6})
    assert (req.refiner_checkpoint, req.refiner_switch_at) == ("tiny-b.safetensors", 0.6)


def test_txt2img_bad_width_raises_request_error_naming_the_field():
    with pytest.raises(RequestError, match=r"width: must be a multiple of 8 \(got 100"):
        txt2img.build_request({**TXT2IMG_VALUES, "width": 100})


def test_given_drops_unset_values_only():
    assert given({"a": None, "b": 0, "c": "", "d": []}) == {"b": 0, "c": "", "d": []}


def test_infotext_fields_split_legacy_sampler_names():
    values = fields_from_infotext("p\nSteps: 3, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: 5, Size: 64x32")
    assert values["sampler_name"] == "DPM++ 2M" and values["scheduler"] == "Karras"
    assert (values["steps"], values["cfg_scale"], values["seed"], values["width"], values["height"]) == (3, 6.0, 5, 64, 32)


def test_reuse_seed_takes_the_selected_image():
    assert reuse_seed([11, 12, 13], 1) == 12
    assert reuse_seed([], 0) == -1


def editor_value(size=(64, 64), stroke_rows=slice(10, 20)) -> dict:
    background = Image.new("RGBA", size, (10, 20, 30, 255))
    layer = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    layer[stroke_rows, 8:40] = (255, 255, 255, 255)
    return {"background": background, "layers": [Image.fromarray(layer, "RGBA")], "composite": background}


def test_mask_from_layers_is_white_where_painted():
    mask = np.asarray(inpaint.mask_from_layers(editor_value()))
    assert mask[10:20, 8:40].min() == 255
    assert mask[:10].max() == 0 and mask[20:].max() == 0 and mask[:, 40:].max() == 0


def test_mask_from_layers_none_when_nothing_painted():
    value = editor_value(stroke_rows=slice(0, 0))
    assert inpaint.mask_from_layers(value) is None


INPAINT_VALUES = {**{k: v for k, v in TXT2IMG_VALUES.items() if not k.startswith(("hr_", "enable"))},
                  "resize_mode": 1, "denoising_strength": 0.6, "mask_blur": 3, "inpainting_mask_invert": 1,
                  "inpainting_fill": 2, "inpaint_full_res": 1, "inpaint_full_res_padding": 16}


def test_inpaint_request_has_image_mask_and_options():
    req = inpaint.build_request(INPAINT_VALUES, editor_value(), None, inpaint.MASK_SOURCES[0])
    assert isinstance(req, Img2ImgRequest)
    assert req.init_images[0].mode == "RGB" and req.init_images[0].getpixel((0, 0)) == (10, 20, 30)
    assert np.asarray(req.mask)[15, 20] == 255 and np.asarray(req.mask)[40, 20] == 0
    assert (req.resize_mode, req.denoising_strength, req.mask_blur) == (1, 0.6, 3)
    assert (req.inpainting_mask_invert, req.inpainting_fill, req.inpaint_full_res) == (1, 2, True)


def test_inpaint_uploaded_mask_and_missing_inputs():
    uploaded = Image.new("L", (64, 64), 255)
    req = inpaint.build_request(INPAINT_VALUES, editor_value(stroke_rows=slice(0, 0)), uploaded,
                                inpaint.MASK_SOURCES[1])
    assert np.asarray(req.mask).min() == 255
    with pytest.raises(RequestError, match="nothing is painted"):
        inpaint.build_request(INPAINT_VALUES, editor_value(stroke_rows=slice(0, 0)), None, inpaint.MASK_SOURCES[0])
    with pytest.raises(RequestError, match="no mask image was uploaded"):
        inpaint.build_request(INPAINT_VALUES, editor_value(), None, inpaint.MASK_SOURCES[1])
    with pytest.raises(RequestError, match="init_images"):
        inpaint.build_request(INPAINT_VALUES, None, None, inpaint.MASK_SOURCES[0])


def test_outpaint_request_ignores_size_and_validates_pixels():
    values = {**INPAINT_VALUES, "direction": ["left", "up"], "pixels": 16, "outpaint_fill": "noise",
              "fill_color": "#000000"}
    req = outpaint.build_request(values, Image.new("RGB", (32, 32)))
    assert isinstance(req, OutpaintRequest)
    assert (req.direction, req.pixels, req.outpaint_fill, req.width, req.height) == (["left", "up"], 16, "noise", None, None)
    with pytest.raises(RequestError, match="pixels: must be a multiple of 8"):
        outpaint.build_request({**values, "pixels": 12}, Image.new("RGB", (32, 32)))


def test_extras_request_and_missing_image():
    req = extras.build_request({"upscaling_resize": 3.0, "upscaler_1": "Lanczos", "resize_mode": 0},
                               Image.new("RGBA", (8, 8)))
    assert (req.upscaling_resize, req.upscaler_1, req.image.mode) == (3.0, "Lanczos", "RGB")
    with pytest.raises(RequestError, match="image: no source image"):
        extras.build_request({}, None)


def test_xy_plot_plans_one_request_per_cell_with_one_seed(services):
    base = txt2img.build_request({**TXT2IMG_VALUES, "seed": -1})
    script = {"xy_x_type": "Sampler", "xy_x_values": "Euler a, DPM++ 2M",
              "xy_y_type": "CFG Scale", "xy_y_values": "3, 5, 9"}
    batch = xyplot.plan_batch("txt2img", base, script, services)
    cells = [r for _, r in batch.requests]
    assert [(r.sampler_name, r.cfg_scale) for r in cells] == [
        ("Euler a", 3.0), ("DPM++ 2M", 3.0), ("Euler a", 5.0), ("DPM++ 2M", 5.0), ("Euler a", 9.0), ("DPM++ 2M", 9.0)]
    assert len({r.seed for r in cells}) == 1 and cells[0].seed >= 0


def test_xy_plot_prompt_sr_and_bad_values(services):
    base = txt2img.build_request(TXT2IMG_VALUES)
    batch = xyplot.plan_batch("txt2img", base, {"xy_x_type": "Prompt S/R", "xy_x_values": "cat, dog, \"red, fox\"",
                                                "xy_y_type": "Nothing"}, services)
    assert [r.prompt for _, r in batch.requests] == ["a cat", "a dog", "a red, fox"]
    with pytest.raises(xyplot.XYPlotError, match="Sampler value 'Nope'"):
        xyplot.plan_batch("txt2img", base, {"xy_x_type": "Sampler", "xy_x_values": "Nope", "xy_y_type": "Nothing"},
                          services)
    with pytest.raises(xyplot.XYPlotError, match="Checkpoint value 'missing'"):
        xyplot.plan_batch("txt2img", base, {"xy_x_type": "Checkpoint", "xy_x_values": "missing",
                                            "xy_y_type": "Nothing"}, services)


def test_settings_bad_values_raise_and_are_not_saved(services):
    before = services.settings
    with pytest.raises(SettingsError, match=r"unknown token \[bogus\]"):
        settings.apply(services, {"samples_filename_pattern": "[bogus]"})
    with pytest.raises(SettingsError, match="sd_checkpoints_limit"):
        settings.apply(services, {"sd_checkpoints_limit": 99})
    with pytest.raises(SettingsError, match="default_steps: a value is required"):
        settings.apply(services, {"default_steps": None})
    with pytest.raises(SettingsError, match="unknown sampler"):
        settings.apply(services, {"default_sampler": "Nope"})
    assert services.settings == before
    assert not before.config_file.exists()


def test_settings_good_values_are_saved_and_applied(services):
    summary = settings.apply(services, {"samples_filename_pattern": "[seed]-[number]", "default_steps": 12,
                                        "memory_mode": "medvram"})
    assert services.settings.samples_filename_pattern == "[seed]-[number]"
    assert services.settings.default_steps == 12
    saved = json.loads(services.settings.config_file.read_text())
    assert saved["samples_filename_pattern"] == "[seed]-[number]" and saved["default_steps"] == 12
    assert "memory_mode applies at the next start" in summary


def make_panel():
    with gr.Blocks():
        buttons = (gr.Button(), gr.Button(), gr.Button())
        return output_panel("t", *buttons)


def test_stream_jobs_shows_the_result_in_the_gallery(services):
    panel = make_panel()
    request = txt2img.build_request({**TXT2IMG_VALUES, "steps": 2})
    updates = list(runner.stream_jobs(services, panel, lambda: runner.Batch([("txt2img", request)]), poll_seconds=0.01))
    assert updates[0][panel.generate]["visible"] is False and updates[0][panel.interrupt]["visible"] is True
    final = updates[-1]
    assert final[panel.generate]["visible"] is True
    assert [im.size for im in final[panel.gallery]] == [(32, 48)]
    assert final[panel.infotext].startswith("a cat\nNegative prompt: dog\nSteps: 2")
    assert final[panel.seeds] == [7]


def test_stream_jobs_shows_a_request_error_without_raising(services):
    panel = make_panel()

    def bad():
        return runner.Batch([("txt2img", txt2img.build_request({**TXT2IMG_VALUES, "height": 50}))])

    updates = list(runner.stream_jobs(services, panel, bad))
    assert len(updates) == 1
    assert "height: must be a multiple of 8" in updates[0][panel.error]["value"]
    assert updates[0][panel.error]["visible"] is True


def test_interrupt_cancels_only_this_tabs_job(services):
    panel = make_panel()
    slow = txt2img.build_request({**TXT2IMG_VALUES, "steps": 150, "n_iter": 20})
    stream = runner.stream_jobs(services, panel, lambda: runner.Batch([("txt2img", slow)]), poll_seconds=0.01)
    first = next(stream)
    other = services.submit("txt2img", txt2img.build_request(TXT2IMG_VALUES))
    runner.interrupt(services, first[panel.job_id])
    final = list(stream)[-1]
    assert final[panel.error]["value"] == "Interrupted."
    assert len(final.get(panel.gallery) or []) <= 1  # what it made: none (stopped while queued), or the partial image
    assert other.wait(60).images[0].size == (32, 48)


def test_create_ui_builds_every_tab(services):
    from webui.app import create_ui

    demo = create_ui(services)
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    for elem_id in ("sd_model_checkpoint", "txt2img_generate", "txt2img_gallery", "img2img_sketch", "inpaint_editor",
                    "outpaint_direction", "extras_upscaler_1", "pnginfo_image", "settings_submit", "txt2img_xy_enabled"):
        assert elem_id in ids, elem_id
    for prefix in ("txt2img", "img2img", "inpaint", "outpaint"):  # the refiner accordion under every generation tab
        assert {f"{prefix}_refiner_checkpoint", f"{prefix}_refiner_switch_at"} <= ids, prefix


def test_img2img_refiner_fields_reach_the_request():
    image = Image.new("RGB", (32, 32), "red")
    values = {**TXT2IMG_VALUES, "denoising_strength": 0.5, "refiner_checkpoint": "tiny-b.safetensors",
              "refiner_switch_at": 0.6}
    for key in ("enable_hr", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt"):
        values.pop(key)
    req = img2img.build_request(values, image)
    assert (req.refiner_checkpoint, req.refiner_switch_at) == ("tiny-b.safetensors", 0.6)
    assert img2img.build_request({**values, "refiner_checkpoint": "None"}, image).refiner_checkpoint is None


def test_serve_flags_and_auth_parsing():
    from modules.cli import parse_auth, serve_parser

    args = serve_parser().parse_args(["--listen", "--port", "7999", "--share", "--api", "--gradio-auth", "u:p"])
    assert (args.listen, args.port, args.share, args.api, args.gradio_auth) == (True, 7999, True, True, "u:p")
    assert parse_auth("a:b,\nc:d:e") == [("a", "b"), ("c", "d:e")]
    with pytest.raises(ValueError, match="not user:password"):
        parse_auth("nopassword")


def serve_settings(tmp_path, *flags: str):
    from modules.cli import serve_parser, settings_from_args

    return settings_from_args(serve_parser().parse_args(["--data-dir", str(tmp_path), *flags]))


@pytest.mark.parametrize("flags, name, value", [
    (["--no-half"], "precision", "fp32"),
    (["--xformers"], "attention", "xformers"),
    (["--opt-sdp-attention"], "attention", "sdpa"),
    (["--device-id", "1"], "device", "cuda:1"),
    (["--use-cpu", "all"], "device", "cpu"),
    (["--use-cpu", "sd"], "device", "cpu"),
    (["--no-half", "--precision", "fp32"], "precision", "fp32"),  # the same value twice is fine
])
def test_a1111_device_flags_map_to_settings(tmp_path, flags, name, value):
    assert getattr(serve_settings(tmp_path, *flags), name) == value


def test_a1111_flags_default_to_config_json_then_auto(tmp_path):
    assert (serve_settings(tmp_path).device, serve_settings(tmp_path).precision) == ("auto", "auto")
    (tmp_path / "config.json").write_text(json.dumps({"attention": "sdpa", "device": "cuda:0"}))
    s = serve_settings(tmp_path, "--no-half")
    assert (s.attention, s.device, s.precision) == ("sdpa", "cuda:0", "fp32")
    assert serve_settings(tmp_path, "--xformers").attention == "xformers"  # a flag beats config.json


@pytest.mark.parametrize("flags, message", [
    (["--no-half", "--precision", "fp16"], r"conflicting flags: --precision \(fp16\), --no-half \(fp32\)"),
    (["--xformers", "--opt-sdp-attention"], r"--xformers \(xformers\), --opt-sdp-attention \(sdpa\)"),
    (["--use-cpu", "all", "--device-id", "0"], r"--use-cpu \(cpu\), --device-id \(cuda:0\)"),
    (["--device", "cuda:1", "--device-id", "2"], r"--device \(cuda:1\), --device-id \(cuda:2\)"),
    (["--use-cpu", "interrogate"], "--use-cpu interrogate: .* use --use-cpu all"),
    (["--device-id", "-1"], "--device-id -1: must be a GPU index"),
])
def test_a1111_flag_conflicts_raise_naming_the_flags(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        serve_settings(tmp_path, *flags)


def test_bad_flag_exits_2_with_one_line(tmp_path, capsys):
    from modules.cli import main

    assert main(["--data-dir", str(tmp_path), "--xformers", "--opt-sdp-attention"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: conflicting flags")


def test_theme_flag_and_head_script():
    from modules.cli import serve_parser
    from webui.server import theme_head

    assert serve_parser().parse_args(["--theme", "dark"]).theme == "dark"
    assert serve_parser().parse_args([]).theme is None
    with pytest.raises(SystemExit):
        serve_parser().parse_args(["--theme", "blue"])
    assert theme_head(None) is None
    assert "url.searchParams.set('__theme', 'light')" in theme_head("light")
    with pytest.raises(ValueError, match="choose one of light, dark"):
        theme_head("blue")


def test_served_ui_has_the_api_from_the_first_request(services):
    """With --api the routes are attached during start-up, so no request sees the UI without them."""
    import socket

    import httpx

    from webui.server import start

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = start(services, port=port, api=True, quiet=True)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/sdapi/v1/sd-models", timeout=30).status_code == 200
        bad = httpx.post(f"{base}/sdapi/v1/txt2img", json={"width": "wide"}, timeout=30)
        assert bad.status_code == 422 and "width" in bad.text
        assert httpx.get(base, timeout=30).status_code == 200
    finally:
        server.close()


def test_settings_apply_writes_only_what_the_user_changed(services):
    from modules.config import save_settings

    shown = {"default_steps": 20, "default_sampler": "DPM++ 2M", "samples_filename_pattern": "[number]-[seed]"}
    other = services.settings.model_copy(update={"default_sampler": "Euler"})  # another client saved this meanwhile
    save_settings(other)
    services.update_settings(other)
    summary = settings.apply(services, {**shown, "default_steps": 9}, shown)
    assert summary.startswith("Saved 1 changed setting(s)") and "default_steps" in summary
    saved = json.loads(services.settings.config_file.read_text())
    assert saved["default_steps"] == 9 and saved["default_sampler"] == "Euler"  # the stale form wrote nothing else
    assert settings.apply(services, {**shown, "default_steps": 9}, {**shown, "default_steps": 9}).startswith("Nothing")


def test_tab_defaults_follow_the_saved_settings(services):
    from webui.widgets import tab_defaults

    native = services.native_size()
    assert tab_defaults(services) == {"sampler_name": "DPM++ 2M", "steps": 20, "width": native, "height": native}
    services.update_settings(services.settings.model_copy(update={"default_steps": 7, "default_width": 48}))
    assert tab_defaults(services) == {"sampler_name": "DPM++ 2M", "steps": 7, "width": 48, "height": native}


def test_token_count_takes_the_longest_text_and_counts_chunks():
    from webui.tokens import count_tokens, counter_html

    assert count_tokens("") == (0, 1)
    assert count_tokens("a red square") == (3, 1)
    assert count_tokens("a (red:1.3) [square] <lora:x:0.5>") == (3, 1)  # weights and tags are no tokens
    assert count_tokens("a cat AND a very big red dog :0.5") == (5, 1)  # the longest AND part
    assert count_tokens("[a cat:a very big red dog:0.5]", steps=10) == (5, 1)  # the longest scheduled text
    assert count_tokens("a BREAK b") == (2, 2)
    assert ">100/150<" in counter_html("word, " * 50)


def test_brush_is_sized_to_the_picture():
    from webui.brushes import brush_size, sized_tools

    assert brush_size(64, 64) == 2  # Gradio's size is a radius: a stroke about 5% (3 px) wide
    assert brush_size(512, 768) == 13
    assert brush_size(8, 8) == 1  # never below 1 px
    with gr.Blocks():
        editor = gr.ImageEditor(brush=gr.Brush(colors=["#000000"], default_size=25))
    tools = sized_tools(editor, Image.new("RGB", (192, 64)))
    assert tools["brush"].default_size == 2 and tools["brush"].colors == ["#000000"]
    assert tools["eraser"].default_size == 2
    assert sized_tools(editor, None) == {}


def test_errors_are_one_line_without_type_names_and_interrupts_are_no_error(services, tmp_path):
    from webui.runner import user_message
    from webui.uploads import is_image_file, open_upload, upload_name

    assert user_message(RequestError("steps: must be at most 150")) == "steps: must be at most 150"
    assert user_message(KeyError("x")) == "KeyError: 'x'"
    assert user_message(RuntimeError("out of\nmemory")) == "RuntimeError: out of memory"
    panel = make_panel()
    slow = txt2img.build_request({**TXT2IMG_VALUES, "steps": 150, "n_iter": 20})
    stream = runner.stream_jobs(services, panel, lambda: runner.Batch([("txt2img", slow)]), poll_seconds=0.01)
    runner.interrupt(services, next(stream)[panel.job_id])
    final = list(stream)[-1]
    assert final[panel.error]["value"] == "Interrupted." and final[panel.error]["label"] == "Stopped"
    # a text file named .png: not an image (the upload check takes it out again with one line)
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    assert not is_image_file(str(fake))
    assert open_upload({"path": str(fake), "orig_name": "fake.png"}) is None
    assert upload_name({"path": str(fake), "orig_name": "notes.png"}) == "notes.png"
    Image.new("RGB", (4, 4)).save(tmp_path / "real.png")
    assert open_upload({"path": str(tmp_path / "real.png")}).size == (4, 4)


def test_sampler_parameters_in_the_settings_tab_reach_the_next_image(services):
    with gr.Blocks():
        tab = settings.create_ui(services)
    assert {"eta_ancestral", "eta_noise_seed_delta", "s_churn", "always_discard_next_to_last_sigma"} <= set(tab.fields)
    request = txt2img.build_request({**TXT2IMG_VALUES, "steps": 2, "sampler_name": "Euler a", "seed": 3})
    before = services.submit("txt2img", request).wait(120)
    settings.apply(services, {"eta_ancestral": 0.5, "eta_noise_seed_delta": 31337})
    after = services.submit("txt2img", request).wait(120)
    assert ", Eta: 0.5, ENSD: 31337," in after.infotexts[0] and "Eta" not in before.infotexts[0]
    assert np.abs(np.asarray(after.images[0], dtype=int) - np.asarray(before.images[0], dtype=int)).max() > 0
    with pytest.raises(SettingsError, match="eta_ancestral"):
        settings.apply(services, {"eta_ancestral": -1})


def test_token_merging_in_the_settings_tab_reaches_the_next_image(services):
    with gr.Blocks():
        tab = settings.create_ui(services)
    assert {"token_merging_ratio", "token_merging_ratio_img2img", "token_merging_ratio_hr"} <= set(tab.fields)
    request = txt2img.build_request({**TXT2IMG_VALUES, "steps": 2, "seed": 3})
    before = services.submit("txt2img", request).wait(120)
    settings.apply(services, {"token_merging_ratio": 0.5})
    after = services.submit("txt2img", request).wait(120)
    assert "Token merging ratio: 0.5" in after.infotexts[0] and "Token merging" not in before.infotexts[0]
    assert np.abs(np.asarray(after.images[0], dtype=int) - np.asarray(before.images[0], dtype=int)).max() > 0
    assert json.loads(services.settings.config_file.read_text())["token_merging_ratio"] == 0.5
    with pytest.raises(SettingsError, match="token_merging_ratio_hr"):
        settings.apply(services, {"token_merging_ratio_hr": 0.95})


def test_xy_plot_token_merging_axis(services):
    base = txt2img.build_request({**TXT2IMG_VALUES, "steps": 2, "seed": 4})
    batch = xyplot.plan_batch("txt2img", base, {"xy_x_type": "Token merging ratio", "xy_x_values": "0, 0.5",
                                                "xy_y_type": "Nothing"}, services)
    assert [r.token_merging_ratio for _, r in batch.requests] == [0.0, 0.5]
    results = [services.submit(kind, r).wait(120) for kind, r in batch.requests]
    assert "Token merging" not in results[0].infotexts[0] and "Token merging ratio: 0.5" in results[1].infotexts[0]
    with pytest.raises(RequestError, match="token_merging_ratio"):
        xyplot.plan_batch("txt2img", base, {"xy_x_type": "Token merging ratio", "xy_x_values": "0.95",
                                            "xy_y_type": "Nothing"}, services)
