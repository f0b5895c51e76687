"""Easel's hook registry (modules.hooks): order, isolation, and the points the job, saver and app call."""

from __future__ import annotations

import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modules.hooks import CFGDenoiserParams, HookRegistry
from modules.schemas import Txt2ImgRequest


def test_hooks_run_in_order_and_a_failing_one_is_recorded_not_raised():
    hooks = HookRegistry()
    seen = []
    hooks.add("batch", lambda e: seen.append(("b", e.index)), owner="second", order=5)
    hooks.add("batch", lambda e: 1 / 0, owner="broken")
    hooks.add("batch", lambda e: seen.append(("a", e.index)), owner="first", order=-1)
    hooks.batch("txt2img", None, 3, [1], [2])
    assert seen == [("a", 3), ("b", 3)]
    [err] = hooks.errors_of("broken")
    assert err.point == "batch" and "ZeroDivisionError" in err.message
    assert hooks.remove_owner("broken") == 1 and len(hooks.hooks("batch")) == 2


def test_unknown_point_is_refused():
    import pytest

    with pytest.raises(ValueError, match="unknown hook point 'nope'"):
        HookRegistry().add("nope", print)


def test_cfg_denoiser_hooks_may_replace_x_and_conditioning():
    hooks = HookRegistry()
    x, cond = torch.zeros(1, 4, 2, 2), torch.zeros(1, 77, 8)

    def double(p: CFGDenoiserParams) -> None:
        assert p.sampling_step == 2 and p.total_sampling_steps == 10
        p.x = p.x + 1
        p.text_cond = p.text_cond + 2

    hooks.add("cfg_denoiser", double, owner="ext")
    hooks.add("cfg_denoiser", lambda p: (_ for _ in ()).throw(RuntimeError("boom")), owner="bad")
    params = hooks.cfg_denoiser(CFGDenoiserParams(x, None, torch.tensor([1.0]), 2, 10, cond, cond))
    assert params.x.eq(1).all() and params.text_cond.eq(2).all()
    assert hooks.errors_of("bad")[0].message == "RuntimeError: boom"


def test_job_hooks_fire_around_a_generation_and_a_failing_hook_does_not_fail_it(services, tmp_path):
    calls = []
    h = services.hooks
    h.add("before_process", lambda e: setattr(e, "request", e.request.model_copy(update={"prompt": "rewritten"})))
    h.add("before_process", lambda e: calls.append(("before", e.kind, e.request.prompt)))
    h.add("batch", lambda e: calls.append(("batch", e.index, e.seeds)))
    h.add("image_decoded", lambda e: setattr(e, "image", e.image.convert("L").convert("RGB")))
    h.add("image_decoded", lambda e: 1 / 0, owner="broken")
    h.add("before_image_saved", lambda e: setattr(e, "infotext", e.infotext + ", Hooked: yes"))
    h.add("image_saved", lambda e: calls.append(("saved", e.path.exists())))
    h.add("model_loaded", lambda e: calls.append(("model", e.model.info.name)))
    h.add("after_process", lambda e: calls.append(("after", len(e.result.images))))
    req = Txt2ImgRequest(prompt="a cat", steps=1, width=32, height=32, seed=5, n_iter=2)
    result = services.submit("txt2img", req).wait(120)
    assert calls[0][0] == "model" and ("before", "txt2img", "rewritten") in calls
    assert [c for c in calls if c[0] == "batch"] == [("batch", 0, [5]), ("batch", 1, [6])]
    assert calls.count(("saved", True)) == 2 and calls[-1] == ("after", 2)
    image = result.images[0]
    assert image.getpixel((3, 3))[0] == image.getpixel((3, 3))[1] == image.getpixel((3, 3))[2]  # greyed by the hook
    from modules.images import read_infotext

    assert read_infotext(result.paths[0]).endswith(", Hooked: yes")
    assert result.prompts[0] == "rewritten"
    assert [e.point for e in h.errors_of("broken")] == ["image_decoded", "image_decoded"]


def test_app_started_adds_routes(services):
    from modules.api.app import add_api

    services.hooks.add("app_started", lambda e: e.app.add_api_route("/myext/ping", lambda: {"pong": True}))
    with TestClient(add_api(FastAPI(), services)) as client:
        assert client.get("/myext/ping").json() == {"pong": True}


def test_extension_routes_are_behind_the_api_credentials(services):
    from modules.api.app import add_api

    services.hooks.add("app_started", lambda e: e.app.add_api_route("/myext/v1/items", lambda: ["a"]))
    with TestClient(add_api(FastAPI(), services, api_auth=[("u", "p")])) as client:
        assert client.get("/myext/v1/items").status_code == 401
        assert client.get("/myext/v1/items", auth=("u", "p")).json() == ["a"]
