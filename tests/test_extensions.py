"""A1111-style extensions (modules.a1111_compat): loading, preload flags, scripts in jobs, options, failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from modules.a1111_compat.loader import load_extensions, parse_cmd_opts
from modules.images import read_infotext
from modules.schemas import ScriptCall, Txt2ImgRequest

FIXTURES = Path(__file__).parent / "extension_fixtures"


def add_extensions(data_dir: Path, *names: str) -> None:
    for name in names:
        shutil.copytree(FIXTURES / name, data_dir / "extensions" / name)


@pytest.fixture
def loaded(services, data_dir):
    add_extensions(data_dir, "rewriter", "broken", "grumpy")
    cmd_opts, errors = parse_cmd_opts(services.settings, ["--rewriter-flag", "on"])
    extensions = load_extensions(services, cmd_opts, preload_errors=errors)
    yield services, extensions
    extensions.unload()


def request(**kw) -> Txt2ImgRequest:
    return Txt2ImgRequest(**{"prompt": "a cat", "steps": 1, "width": 32, "height": 32, "seed": 11, **kw})


def test_a_broken_extension_is_disabled_with_its_error_and_the_others_load(loaded):
    services, extensions = loaded
    by_name = {e.name: e for e in extensions.items}
    assert by_name["broken"].error == "ModuleNotFoundError: No module named 'a_module_that_does_not_exist'"
    assert not by_name["broken"].active and by_name["rewriter"].active and by_name["grumpy"].active
    titles = [s.title for s in extensions.scripts]
    assert {"Prompt rewriter", "Flip images", "Grumpy"} <= set(titles)
    assert extensions.find_script("prompt REWRITER", False).alwayson
    assert not extensions.find_script("flip images", True).alwayson
    assert by_name["rewriter"].metadata == {"Extension": {"name": "rewriter"}}
    assert [p.name for p in by_name["rewriter"].javascript] == ["rewriter.js"]


def test_preload_flag_and_ui_settings_option(loaded):
    services, extensions = loaded
    from modules import shared

    assert shared.cmd_opts.rewriter_flag == "on"
    assert shared.opts.rewriter_word == "cat"  # the declared default
    info = extensions.options["rewriter_word"]
    assert info.section == ("rewriter", "Prompt rewriter") and info.info_text == "any word"
    [option] = [o for o in extensions.ui_options() if o.key == "rewriter_word"]
    assert option.owner == "rewriter" and option.component == "textbox"
    shared.opts.rewriter_word = "dog"
    assert services.settings.extension_options == {"rewriter_word": "dog"} and shared.opts.rewriter_word == "dog"
    assert shared.opts.samples_format == "png"  # Easel's own settings read through


def test_alwayson_process_rewrites_all_prompts_and_adds_infotext_params(loaded):
    services, _ = loaded
    req = request(batch_size=2, extension_alwayson={"prompt rewriter": [True, " in space"]})
    result = services.submit("txt2img", req).wait(120)
    assert result.prompts == ["a cat in space 0", "a cat in space 1"]
    assert result.seeds == [11, 12]
    for text, prompt in zip(result.infotexts, result.prompts, strict=True):
        assert text.startswith(prompt + "\n") and text.endswith("Rewriter: in space, Rewriter word: cat")
    assert read_infotext(result.paths[0]) == result.infotexts[0]
    # the same seed alone gives the same picture as in the batch: per-prompt images are generated one by one
    alone = services.submit("txt2img", request(prompt="a cat in space 1", seed=12)).wait(120)
    assert alone.images[0].tobytes() == result.images[1].tobytes()


def test_alwayson_script_default_args_leave_the_job_alone_and_failing_hooks_are_recorded(loaded):
    services, _ = loaded
    plain = services.submit("txt2img", request()).wait(120)  # the rewriter is off by default (its ui's value)
    assert plain.prompts == ["a cat"] and "Rewriter" not in plain.infotexts[0]
    errors = {(e.owner, e.point) for e in services.hooks.errors}
    assert ("grumpy", "script 'Grumpy'.process_batch") in errors and ("grumpy", "image_saved") in errors


def test_dropdown_script_run_calls_process_images(loaded):
    services, _ = loaded
    plain = services.submit("txt2img", request()).wait(120)
    flipped = services.submit("txt2img", request(extension_script=ScriptCall(title="Flip images"))).wait(120)
    from PIL import ImageOps

    assert flipped.images[0].tobytes() == ImageOps.mirror(plain.images[0]).tobytes()
    assert len(flipped.paths) == 1


def test_disable_all_extensions_loads_none(services, data_dir):
    add_extensions(data_dir, "rewriter")
    extensions = load_extensions(services, disable="extra")
    try:
        assert [e.name for e in extensions.items if e.active] == ["builtin"]
        assert extensions.find_script("Prompt rewriter", False) is None
    finally:
        extensions.unload()


def test_unknown_extension_scripts_are_refused_at_submission(loaded):
    from modules.schemas import RequestError

    services, _ = loaded
    with pytest.raises(RequestError, match="extension_script: no script titled 'Nope' for txt2img; available: .*'Flip images'"):
        services.submit("txt2img", request(extension_script=ScriptCall(title="Nope")))
    with pytest.raises(RequestError, match="extension_alwayson.flip images: no always-on script"):
        services.submit("txt2img", request(extension_alwayson={"flip images": []}))


def test_scripts_see_the_styled_prompt(loaded, data_dir):
    services, _ = loaded
    (data_dir / "styles.csv").write_text("name,prompt,negative_prompt\nglossy,\"{prompt}, glossy\",dull\n")
    req = request(styles=["glossy"], extension_alwayson={"prompt rewriter": [True, "!"]})
    result = services.submit("txt2img", req).wait(120)
    assert result.prompts == ["a cat, glossy! 0"] and result.negative_prompts == ["dull"]


def test_progress_goes_on_across_the_runner_calls_of_one_job():
    from modules.a1111_compat.processing import RunsProgress
    from modules.jobs import ProgressSink

    sink = ProgressSink()
    progress = RunsProgress(sink, runs=2)
    progress.update(0, 2)
    progress.update(2, 2)
    assert (sink.snapshot().step, sink.snapshot().total) == (2, 4)
    progress.next_run()
    progress.update(0, 2)
    progress.update(1, 2)
    assert (sink.snapshot().step, sink.snapshot().total) == (3, 4)


def test_save_model_denoiser_and_unload_callbacks(services, data_dir):
    import sys

    import torch

    from modules.hooks import CFGDenoiserParams

    add_extensions(data_dir, "stamper")
    extensions = load_extensions(services)
    [stamper] = [e for e in extensions.items if e.name == "stamper"]
    assert stamper.active, stamper.error
    module = sys.modules["easel_extensions.stamper_stamper"]
    result = services.submit("txt2img", request()).wait(120)
    assert read_infotext(result.paths[0]).endswith(", Stamp: yes")
    assert module.seen["saved"] == [str(result.paths[0])] and module.seen["models"] == ["tiny-a.safetensors"]
    params = services.hooks.cfg_denoiser(CFGDenoiserParams(torch.ones(1, 4, 2, 2), None, torch.tensor([1.0]), 3, 5,
                                                           None, None))
    assert params.x.eq(0).all() and module.seen["steps"] == [0, 3]  # the job's one step (the core calls it), then this
    path, txt = module.save_copy(result.images[0], data_dir / "copies")
    assert txt is None and read_infotext(path) == "copy info, Stamp: yes" and "copy-" in path
    extensions.unload()
    assert module.seen["unloaded"] == 1 and not services.hooks.hooks("image_saved")


def test_img2img_without_a_size_keeps_the_init_images_size(loaded):
    from PIL import Image

    from modules.schemas import Img2ImgRequest

    services, _ = loaded
    req = Img2ImgRequest(prompt="x", steps=1, seed=1, init_images=[Image.new("RGB", (40, 24), "red")],
                         extension_alwayson={"prompt rewriter": [True, "!"]})
    result = services.submit("img2img", req).wait(120)
    assert result.images[0].size == (40, 24) and result.prompts == ["x! 0"]
