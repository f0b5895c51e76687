"""Training as queue jobs (modules/training) on the tiny checkpoints: DreamBooth, LoRA, textual
inversion; the files they write are loaded by the rest of Easel; resume, cancel, bad input, the
API, the CLI and the Train tab's handlers."""

from __future__ import annotations

import base64
import errno
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file, save_file

from modules.access import ClientAccess
from modules.infotext import parse_infotext
from modules.jobs import CancelToken, JobCancelled, ProgressSink
from modules.lora import lora_layers
from modules.processing.context import RunContext
from modules.schemas import RequestError, Txt2ImgRequest
from modules.training import job as training
from modules.training import outputs
from modules.training.loop import load_state
from tests.tiny_models import noise_image

ROOT = Path(__file__).resolve().parent.parent
FAST = {"instance_prompt": "a zwx shape", "class_prompt": "a shape", "steps": 3, "resolution": 32, "save_every": 0}


def images(n: int = 3) -> list[Image.Image]:
    """Seeded noise pictures of a few sizes (cropped and resized by the job)."""
    return [noise_image(40 + 8 * i, 32 + 4 * i, seed=i) for i in range(n)]


def generate(services, prompt: str, **fields) -> tuple[np.ndarray, str]:
    req = Txt2ImgRequest(prompt=prompt, steps=3, seed=11, sampler_name="Euler", save_images=False, **fields)
    result = services.submit("txt2img", req).wait(timeout=120)
    return np.asarray(result.images[0], dtype=np.int16), result.infotexts[0]


def train(services, uploads=None, **values):
    request = training.build_request(services, {**FAST, **values}, uploads=images() if uploads is None else uploads)
    return training.submit(services, request).wait(timeout=300)


# --------------------------------------------------------------------------- bad input


def test_no_images_and_too_few_are_errors_before_the_job(services):
    with pytest.raises(RequestError, match="instance_images: 0 readable images; at least 3"):
        training.build_request(services, {**FAST, "method": "lora"}, uploads=[])
    with pytest.raises(RequestError, match="at least 3"):
        training.build_request(services, FAST, uploads=images(2))
    with pytest.raises(RequestError, match="at most 30"):
        training.build_request(services, FAST, uploads=images(1) * 31)
    assert services.queue.job_count() == 0


def test_unreadable_images_are_skipped_with_a_warning(services, tmp_path):
    services.access = ClientAccess(allow_server_paths=True)  # as the train command line
    folder = tmp_path / "instances"
    folder.mkdir()
    for i, image in enumerate(images(3)):
        image.save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    request = training.build_request(services, FAST, uploads=[b"garbage"], folder=str(folder))
    assert len(request.instance_images) == 3
    text = " | ".join(request.warnings)
    assert "notes.txt skipped: a caption file without an image notes.*" in text and "broken.jpg skipped" in text
    assert "instance image #1 skipped" in text
    with pytest.raises(RequestError, match="instance_dir: folder .* not found"):
        training.build_request(services, FAST, folder=str(tmp_path / "nope"))


def test_server_folders_and_paths_are_refused_from_clients_by_default(services, tmp_path):
    """Without --allow-server-paths a client names no server folder, and text is never a file path;
    the refusal is the same whether the folder exists or not."""
    folder = tmp_path / "instances"
    folder.mkdir()
    paths = []
    for i, image in enumerate(images(3)):
        image.save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    messages = []
    for missing in (folder, tmp_path / "nope"):
        with pytest.raises(RequestError) as err:
            training.build_request(services, FAST, folder=str(missing))
        messages.append(str(err.value))
        with pytest.raises(RequestError) as err:
            training.build_request(services, {**FAST, "with_prior_preservation": True, "class_dir": str(missing)},
                                   uploads=images())
        messages.append(str(err.value))
    assert messages[0] == messages[2] and messages[1] == messages[3]
    assert "--allow-server-paths" in messages[0] and messages[0].startswith("instance_dir:")
    assert messages[1].startswith("class_dir:")
    # path strings in the uploads are image data, not files: none opens
    with pytest.raises(RequestError, match="instance_images: 0 readable images"):
        training.build_request(services, FAST, uploads=paths)


def test_a_fifo_in_an_allowed_folder_is_skipped_not_opened(services, tmp_path):
    services.access = ClientAccess(allow_server_paths=True)
    folder = tmp_path / "instances"
    folder.mkdir()
    for i, image in enumerate(images(3)):
        image.save(folder / f"{i}.png")
    os.mkfifo(folder / "pipe.png")
    request = training.build_request(services, FAST, folder=str(folder))  # would block reading the FIFO
    assert len(request.instance_images) == 3


@pytest.mark.parametrize("values, message", [
    ({"resolution": 100}, r"resolution: must be a multiple of 8 \(got 100; nearest: 96\)"),
    ({"steps": 0}, "steps: Input should be greater than or equal to 1"),
    ({"learning_rate": 0}, "learning_rate: Input should be greater than 0"),
    ({"lr_scheduler": "linear-ish"}, "lr_scheduler: Input should be 'constant'"),
    ({"with_prior_preservation": True, "class_prompt": ""}, "class_prompt: required with prior preservation"),
    ({"method": "textual_inversion", "output_name": "heart"}, "instance_prompt: must contain the embedding's name 'heart'"),
    ({"output_name": "../evil"}, "output_name: must be a file name"),
])
def test_bad_values_name_the_field(services, values, message):
    with pytest.raises(RequestError, match=message):
        training.build_request(services, {**FAST, **values}, uploads=images())


def test_lora_of_another_family_is_refused_before_the_job(services, data_dir):
    folder = data_dir / "models" / "Lora"
    folder.mkdir(parents=True)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{key}.lora_down.weight": torch.zeros(4, 768), f"{key}.lora_up.weight": torch.zeros(32, 4),
               f"{key}.alpha": torch.tensor(4.0)}, str(folder / "sd15-style.safetensors"))
    services.networks.loras.refresh()
    with pytest.raises(RequestError, match=r"init_lora: LoRA 'sd15-style' is for SD 1.x \(cross-attention width 768\); "
                                           r"the base checkpoint 'tiny-a.safetensors' is a 32-wide model"):
        training.build_request(services, {**FAST, "init_lora": "sd15-style"}, uploads=images())


def test_warnings_for_a_common_word_few_images_and_over_training(services):
    plain = training.build_request(services, {**FAST, "instance_prompt": "a zwx shape"}, uploads=images(5))
    assert plain.warnings == []
    common = training.build_request(services, {**FAST, "instance_prompt": "a dog shape", "steps": 3000},
                                    uploads=images(3))
    text = " | ".join(common.warnings)
    assert "the identifier 'dog' is a common word" in text
    assert "only 3 instance images" in text
    assert "about 1000 times" in text


def test_an_existing_output_is_never_overwritten_without_the_flag(services, data_dir):
    folder = data_dir / "models" / "Lora"
    folder.mkdir(parents=True)
    (folder / "zwx.safetensors").write_bytes(b"precious")
    with pytest.raises(RequestError, match="zwx.safetensors already exists; choose another name, or set overwrite"):
        training.build_request(services, {**FAST, "method": "lora"}, uploads=images())
    result = train(services, method="lora", overwrite=True, steps=1)
    assert Path(result.output_path).read_bytes() != b"precious"
    assert sorted(p.name for p in folder.iterdir()) == ["zwx.safetensors"]  # no temporary file left


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "model.safetensors"
    with pytest.raises(outputs.DiskFull, match="not enough disk space to write model.safetensors.*nothing was written"):
        outputs.write_atomically(target, lambda p: p.write_bytes(b"x" * 10), 1 << 30, False, free_bytes=lambda p: 1 << 20)

    def fills_up(path: Path) -> None:
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(outputs.DiskFull, match="the disk filled up while writing"):
        outputs.write_atomically(target, fills_up, 10, False)
    assert list(target.parent.iterdir()) == []


# --------------------------------------------------------------------------- the three methods


def test_lora_job_writes_a_kohya_file_that_prompts_use_and_leaves_the_model_unchanged(services, data_dir):
    before, _ = generate(services, "a zwx shape")
    result = train(services, method="lora", learning_rate=5e-2, steps=4, sample_every=2, sample_prompts=["a zwx shape"])
    path = Path(result.output_path)
    assert path == data_dir / "models" / "Lora" / "zwx.safetensors"
    keys = load_file(str(path))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert all(k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    assert len(result.losses) == 4 and len(result.samples) == 1
    assert [lora.name for lora in services.networks.loras.list()] == ["zwx"]  # listed without a refresh call
    after, _ = generate(services, "a zwx shape")
    assert np.array_equal(before, after)  # the cached model was not changed by the training
    with_lora, info = generate(services, "a zwx shape <lora:zwx:1>")
    assert np.abs(with_lora - before).mean() > 0.5
    assert parse_infotext(info)["Lora hashes"].startswith("zwx: ")
    with services.models.use(services.selected_checkpoint) as model:
        assert lora_layers(model.pipe.unet) == 0


def test_lora_with_the_text_encoder_and_gradient_checkpointing(services):
    before, _ = generate(services, "a zwx shape")
    result = train(services, method="lora", learning_rate=5e-2, steps=2, train_text_encoder=True,
                   gradient_checkpointing=True, lora_rank=2, lora_alpha=1.0)
    tensors = load_file(result.output_path)
    key = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert tensors[f"{key}.lora_down.weight"].shape == (2, 32) and float(tensors[f"{key}.alpha"]) == 1.0
    te_only, _ = generate(services, "a zwx shape <lora:zwx:1:0>")  # text-encoder weight 1, UNet 0
    assert np.abs(te_only - before).mean() > 0.5
    assert np.array_equal(generate(services, "a zwx shape")[0], before)


def test_the_lora_target_names_agree_everywhere():
    import typing

    from modules.training.config import LORA_TARGETS, TrainOptions
    from modules.training.lora_train import UNET_TARGETS

    assert tuple(UNET_TARGETS) == LORA_TARGETS == typing.get_args(TrainOptions.model_fields["lora_targets"].annotation)


def test_lora_on_the_cross_attention_keys_and_values_only(services):
    before, _ = generate(services, "a zwx shape")
    result = train(services, method="lora", learning_rate=5e-2, steps=3, lora_targets="cross_attention_kv")
    layers = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in load_file(result.output_path)}
    assert layers and all(k.endswith(("_attn2_to_k", "_attn2_to_v")) for k in layers)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k" in layers
    with_lora, _ = generate(services, "a zwx shape <lora:zwx:1>")
    assert np.abs(with_lora - before).mean() > 0.5
    train(services, method="lora", steps=1, output_name="all-layers")  # to_q/to_k/to_v/to_out.0 everywhere
    continued = training.build_request(services, {**FAST, "method": "lora", "output_name": "zwx2", "init_lora": "all-layers",
                                                  "lora_targets": "cross_attention_kv"}, uploads=images())
    with pytest.raises(RequestError, match=r"attn1_to_\w+ is not one this trainer trains \(UNet cross-attention to_k/to_v"):
        training.submit(services, continued).wait(timeout=120)


def test_ema_decay_writes_the_average_of_the_trained_weights(services):
    plain = train(services, method="lora", learning_rate=5e-2, steps=4, output_name="plain")
    averaged = train(services, method="lora", learning_rate=5e-2, steps=4, output_name="averaged", ema_decay=0.9)
    assert averaged.losses == plain.losses  # the average does not change the training, only what is written
    last, ema = load_file(plain.output_path), load_file(averaged.output_path)
    assert last.keys() == ema.keys()
    ups = [k for k in last if k.endswith(".lora_up.weight")]  # zero at the start, growing: the average lags
    assert sum(float(ema[k].norm()) for k in ups) < 0.97 * sum(float(last[k].norm()) for k in ups)


def test_textual_inversion_writes_an_embedding_used_by_its_name(services, data_dir):
    before, _ = generate(services, "a zwx shape")
    other_before, _ = generate(services, "a red circle")
    result = train(services, method="textual_inversion", learning_rate=0.5, steps=3, initializer_token="shape",
                   gradient_checkpointing=True, num_vectors=2)
    path = Path(result.output_path)
    assert path == data_dir / "embeddings" / "zwx.safetensors"
    vectors = load_file(str(path))["emb_params"]
    assert vectors.shape == (2, 32)
    after, info = generate(services, "a zwx shape")
    assert np.abs(after - before).mean() > 0.5
    assert parse_infotext(info)["TI hashes"].startswith("zwx: ")
    other_after, _ = generate(services, "a red circle")
    assert np.array_equal(other_before, other_after)  # the text encoder itself is unchanged
    with services.models.use(services.selected_checkpoint) as model:
        assert not model.pipe.unet.is_gradient_checkpointing  # switched on for the job, off again after


def test_full_dreambooth_writes_a_single_file_checkpoint_that_is_listed_and_loads(services, data_dir):
    base, _ = generate(services, "a zwx shape")
    result = train(services, method="dreambooth", learning_rate=1e-3, steps=2, with_prior_preservation=True,
                   num_class_images=2, class_steps=2, train_text_encoder=True)
    path = Path(result.output_path)
    assert path == data_dir / "models" / "Stable-diffusion" / "zwx-dreambooth.safetensors"
    assert path.with_suffix(".yaml").read_text() == (data_dir / "models" / "Stable-diffusion" / "tiny-a.yaml").read_text()
    assert len(list((data_dir / "cache" / "class_images").glob("*/*.png"))) == 2
    assert "zwx-dreambooth.safetensors" in [info.name for info in services.checkpoints.list()]
    tuned, info = generate(services, "a zwx shape", sd_model_checkpoint="zwx-dreambooth")
    assert "Model: zwx-dreambooth" in info
    assert np.abs(tuned - base).mean() > 0.5
    again, _ = generate(services, "a zwx shape")
    assert np.array_equal(again, base)


def test_max_minutes_stops_early_and_still_writes_the_result(services):
    result = train(services, method="textual_inversion", steps=100000, max_minutes=0.0001)
    assert result.steps < 5 and Path(result.output_path).is_file()


# --------------------------------------------------------------------------- resume and cancel


class StopAt(ProgressSink):
    """A progress sink that stops the run after training step ``step``: cancels, or raises (a kill)."""

    def __init__(self, step: int, token: CancelToken, crash: bool) -> None:
        super().__init__()
        self.at, self.token, self.crash = step, token, crash

    def update(self, step, total, preview=None, textinfo=""):
        super().update(step, total, preview, textinfo)
        if textinfo.startswith("loss") and step == self.at:
            if self.crash:
                raise RuntimeError("killed")
            self.token.cancel()


def run_directly(services, request, stop: int, crash: bool):
    token = CancelToken()
    with services.models.use(request.sd_model_checkpoint) as model:
        ctx = RunContext(model, services.settings, None, token, StopAt(stop, token, crash))
        return training.run(request, ctx)


def test_killed_and_cancelled_runs_resume_to_the_same_weights(services, data_dir):
    values = {**FAST, "method": "lora", "learning_rate": 1e-2, "steps": 6, "save_every": 2}
    reference = train(services, **{**values, "output_name": "reference"})
    state = outputs.state_path(services.settings, "lora", "resumed")
    with pytest.raises(RuntimeError, match="killed"):  # killed after step 3: the state of step 2 is on disk
        run_directly(services, training.build_request(services, {**values, "output_name": "resumed"}, uploads=images()),
                     3, crash=True)
    assert load_state(state)["step"] == 2
    with pytest.raises(JobCancelled):  # resumed at 2, cancelled after step 4: the state of step 4 is kept
        run_directly(services, training.build_request(services, {**values, "output_name": "resumed"}, uploads=images()),
                     4, crash=False)
    assert load_state(state)["step"] == 4
    assert not (data_dir / "models" / "Lora" / "resumed.safetensors").exists()
    request = training.build_request(services, {**values, "output_name": "resumed", "resume": "yes"}, uploads=images())
    job = training.submit(services, request)
    result = job.wait(timeout=300)
    assert result.resumed_from == 4 and result.steps == 6
    assert len(result.losses) == 6 and result.losses == pytest.approx(reference.losses, abs=1e-6)
    assert not state.exists()
    ref, res = load_file(reference.output_path), load_file(result.output_path)
    assert ref.keys() == res.keys()
    assert all(torch.allclose(ref[k], res[k], atol=1e-6) for k in ref)


def test_a_state_of_other_settings_is_not_resumed(services):
    values = {**FAST, "method": "lora", "steps": 4}
    request = training.build_request(services, values, uploads=images())
    with pytest.raises(JobCancelled):
        run_directly(services, request, 2, crash=False)
    changed = training.build_request(services, {**values, "learning_rate": 3e-3}, uploads=images())
    with pytest.raises(RequestError, match="resume: the saved state of 'zwx' \\(step 2\\) was made with other settings"):
        training.submit(services, changed).wait(timeout=120)
    fresh = training.build_request(services, {**values, "learning_rate": 3e-3, "resume": "no"}, uploads=images())
    assert training.submit(services, fresh).wait(timeout=120).resumed_from == 0
    with pytest.raises(RequestError, match="resume: there is no saved state"):
        training.build_request(services, {**values, "output_name": "other", "resume": "yes"}, uploads=images())


# --------------------------------------------------------------------------- the API, the CLI, the UI


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def poll(client: TestClient, job_id: str, until: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/easel/v1/train/{job_id}").json()
        if body["state"] in until:
            return body
        time.sleep(0.05)
    raise AssertionError(f"training {job_id} did not reach {until} in {timeout} s")


def test_api_start_poll_and_cancel(services, data_dir):
    from modules.api import create_app

    with TestClient(create_app(services)) as client:
        body = {**FAST, "method": "lora", "steps": 3, "sample_every": 2, "instance_images": [b64(i) for i in images()]}
        r = client.post("/easel/v1/train", json=body)
        assert r.status_code == 202, r.text
        assert r.json()["output_path"].endswith("models/Lora/zwx.safetensors")
        done = poll(client, r.json()["id"], ("done", "failed"))
        assert done["state"] == "done", done["error"]
        assert done["step"] == done["total"] == 3 and len(done["losses"]) == 3
        assert Image.open(io.BytesIO(base64.b64decode(done["samples"][0]))).size == (32, 32)
        assert Path(done["output_path"]).is_file()
        assert client.get("/sdapi/v1/loras").json()[0]["name"] == "zwx"

        long = client.post("/easel/v1/train", json={**body, "output_name": "long", "steps": 100000, "sample_every": 0})
        job_id = long.json()["id"]
        deadline = time.monotonic() + 60
        while client.get(f"/easel/v1/train/{job_id}").json()["step"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {"prompt": "x", "steps": 1}})
        assert waiting.json()["position"] == 1  # generation waits behind the training
        assert client.get(f"/easel/v1/train/{job_id}").json()["jobs_waiting"] == 1
        cancel = client.post(f"/easel/v1/train/{job_id}/cancel")
        assert cancel.status_code == 200 and cancel.json()["cancelled"] is True
        stopped = poll(client, job_id, ("cancelled", "failed"))
        assert stopped["state"] == "cancelled"
        assert outputs.state_path(services.settings, "lora", "long").exists()

        few = client.post("/easel/v1/train", json={**body, "output_name": "x", "instance_images": body["instance_images"][:2]})
        assert few.status_code == 400 and "at least 3" in few.json()["detail"]
        bad = client.post("/easel/v1/train", json={**body, "resolution": 100})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "resolution"
        lone = client.post("/easel/v1/train", json={**body, "class_caption_dropout": 0.1})  # without prior preservation
        assert lone.status_code == 422 and "class_caption_dropout: only with prior preservation" in lone.text
        assert client.get("/easel/v1/train/nope").status_code == 404
        assert client.post("/easel/v1/train/nope/cancel").status_code == 404


def test_cli_errors_are_one_line_and_exit_2(data_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "app.py"), "train", "--data-dir", str(data_dir), "--images", str(empty),
                        "--method", "lora", "--instance-prompt", "a zwx shape", "--class-prompt", "a shape",
                        "--steps", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: instance_images: 0 readable images (folder " + str(empty) + "); at least 3 are needed (3-30 of the subject)"]


@pytest.mark.slow
def test_cli_trains_a_lora_and_prints_its_path(data_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images()):
        image.save(folder / f"{i}.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "app.py"), "train", "--data-dir", str(data_dir), "--images", str(folder),
                        "--method", "lora", "--instance-prompt", "a zwx shape", "--class-prompt", "a shape",
                        "--steps", "2", "--resolution", "32"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(data_dir / "models" / "Lora" / "zwx.safetensors")
    assert "warning: only 3 instance images" in r.stderr


def test_train_tab_builds_submits_and_polls(services, tmp_path):
    import gradio as gr

    from webui import train as train_tab

    with gr.Blocks():
        tab = train_tab.create_ui(services)
        train_tab.bind_events(tab, services)
    assert set(tab.fields) <= set(training.TrainRequest.model_fields)
    values = train_tab.request_values({"method": "lora", "learning_rate": 0, "resolution": 32, "output_name": "",
                                       "sample_prompts": "a zwx shape\n\n a red zwx shape ", "token": "", "steps": 2,
                                       "instance_prompt": "a zwx shape", "class_prompt": "a shape", "lora_alpha": 0,
                                       "snr_gamma": 0, "noise_offset": 0.05})
    assert values == {"method": "lora", "resolution": 32, "steps": 2, "instance_prompt": "a zwx shape",
                      "class_prompt": "a shape", "sample_prompts": ["a zwx shape", "a red zwx shape"], "noise_offset": 0.05}
    assert train_tab.request_values({"snr_gamma": 5})["snr_gamma"] == 5
    assert "token_learning_rate" not in train_tab.request_values({"token_learning_rate": 0})  # 0: off
    assert "text_encoder_learning_rate" not in train_tab.request_values({"text_encoder_learning_rate": 0})
    assert train_tab.request_values({"token_learning_rate": 5e-3})["token_learning_rate"] == 5e-3
    paths = []
    for i, image in enumerate(images()):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    started = train_tab.start_training(services, {**values, "sample_every": 1}, paths, "auto")
    assert started["job_id"] and started["status"].startswith("Queued: lora training of zwx")
    services.queue.get(started["job_id"]).wait(timeout=120)
    final = train_tab.poll(services, started["job_id"])
    assert final["output"].endswith("zwx.safetensors") and final["status"].startswith("Done: 2 steps")
    assert list(final["loss"]["step"]) == [1, 2] and len(final["samples"]) == 2
    refused = train_tab.start_training(services, values, paths[:2], "auto")
    assert "at least 3" in refused["error"]["value"] and refused["job_id"] == ""
