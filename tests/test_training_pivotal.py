"""Pivotal tuning in full DreamBooth (``token_learning_rate``): the identifier's token-embedding rows
trained apart (``dreambooth.TokenRows``), written into the checkpoint's table, resumed exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from modules.jobs import JobCancelled
from modules.model_loading import make_tokenizer
from modules.schemas import RequestError
from modules.training import job as training
from modules.training import outputs
from modules.training.dreambooth import TokenRows
from modules.training.loop import load_state, prompt_ids, text_token_ids
from tests.test_training import FAST, images, run_directly, train
from tests.tiny_models import TEXT

TABLE = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"  # in the written checkpoint


def encoder_and_ids():
    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(**TEXT)).eval()
    tokenizer = make_tokenizer()
    ids = torch.tensor([prompt_ids(tokenizer, "a red zwx shape"), prompt_ids(tokenizer, "a red circle")])
    return encoder, tokenizer, ids


def test_token_rows_replace_only_their_tokens_and_sync_writes_them_into_the_table():
    encoder, tokenizer, ids = encoder_and_ids()
    zwx = sorted(set(text_token_ids(tokenizer, "zwx")))  # the order TokenRows keeps its rows in
    before = encoder(input_ids=ids).last_hidden_state.detach()
    table_before = encoder.get_input_embeddings().weight.detach().clone()
    rows = TokenRows(encoder, zwx)
    assert torch.allclose(encoder(input_ids=ids).last_hidden_state, before, atol=1e-6)  # starts as the table's rows
    shift = torch.randn(rows.rows.shape, generator=torch.Generator().manual_seed(1))  # not uniform: layer norms drop that
    with torch.no_grad():
        rows.rows.add_(shift)
    hooked = encoder(input_ids=ids).last_hidden_state
    assert (hooked[0] - before[0]).abs().max() > 1e-2  # the zwx prompt changes...
    assert torch.allclose(hooked[1], before[1], atol=1e-6)  # ...a prompt without zwx does not
    hooked.sum().backward()
    assert rows.rows.grad is not None and rows.rows.grad.abs().sum() > 0
    table_grad = encoder.get_input_embeddings().weight.grad
    assert table_grad[zwx].abs().sum() == 0 and table_grad.abs().sum() > 0  # the table's own zwx rows get nothing
    rows.sync()
    rows.close()
    table = encoder.get_input_embeddings().weight.detach()
    assert torch.allclose(table[zwx], table_before[zwx] + shift)
    others = torch.ones(table.shape[0], dtype=torch.bool)
    others[zwx] = False
    assert torch.equal(table[others], table_before[others])
    assert torch.allclose(encoder(input_ids=ids).last_hidden_state, hooked.detach(), atol=1e-6)  # no hook, same output


@pytest.mark.parametrize("values, message", [
    ({"method": "lora", "token_learning_rate": 5e-3}, "token_learning_rate: only for method 'dreambooth'"),
    ({"method": "dreambooth", "token_learning_rate": 0}, "token_learning_rate: Input should be greater than 0"),
])
def test_bad_token_learning_rates_are_refused(services, values, message):
    with pytest.raises(RequestError, match=message):
        training.build_request(services, {**FAST, **values}, uploads=images())


def test_only_the_identifier_rows_move_with_a_frozen_text_encoder(services, data_dir):
    base = load_file(str(data_dir / "models" / "Stable-diffusion" / "tiny-a.safetensors"))[TABLE].float()
    result = train(services, method="dreambooth", learning_rate=1e-6, token_learning_rate=0.05, steps=3,
                   output_name="pivot")
    table = load_file(result.output_path)[TABLE].float()
    changed = (table - base).abs().amax(dim=1) > 1e-2
    zwx = sorted(set(text_token_ids(make_tokenizer(), "zwx")))  # the tokenizer of every SD 1.x checkpoint
    assert changed.nonzero().flatten().tolist() == zwx  # the identifier's rows, and only they
    assert (table - base).abs()[~changed].max() < 1e-2  # the rest as written in fp16


def test_a_killed_pivotal_run_resumes_to_the_same_checkpoint(services):
    values = {**FAST, "method": "dreambooth", "learning_rate": 1e-4, "token_learning_rate": 0.05, "steps": 4,
              "save_every": 2, "train_text_encoder": True}
    reference = train(services, **{**values, "output_name": "reference"})
    request = training.build_request(services, {**values, "output_name": "resumed"}, uploads=images())
    with pytest.raises(JobCancelled):
        run_directly(services, request, 3, crash=False)
    assert "token_rows" in load_state(outputs.state_path(services.settings, "dreambooth", "resumed"))["trainable"]
    request = training.build_request(services, {**values, "output_name": "resumed", "resume": "yes"}, uploads=images())
    result = training.submit(services, request).wait(timeout=300)
    assert result.resumed_from == 3 and result.losses == pytest.approx(reference.losses, abs=1e-6)
    ref, res = load_file(reference.output_path), load_file(result.output_path)
    assert torch.equal(ref[TABLE], res[TABLE])
    assert all(torch.allclose(ref[k].float(), res[k].float(), atol=1e-3) for k in ref)


@pytest.mark.parametrize("method", ["dreambooth", "lora"])
def test_the_text_encoder_and_the_identifier_rows_get_their_own_learning_rates(services, method):
    from modules.training.loop import make_optimizer

    values = {**FAST, "method": method, "learning_rate": 1e-4, "train_text_encoder": True, "text_encoder_learning_rate": 1e-3}
    if method == "dreambooth":
        values["token_learning_rate"] = 5e-3
    request = training.build_request(services, values, uploads=images())
    with services.models.use(services.selected_checkpoint) as model:
        trained = training._build_method(request, model.pipe, "cpu", services.settings.path(services.settings.lora_dir))
        try:
            optimizer = make_optimizer(trained.param_groups(), request, "cpu", 1e-2, [])
            text_params = {id(p) for p in trained.text_encoder.parameters()}
            unet_params = {id(p) for p in trained.unet.parameters()}
        finally:
            trained.close()
    groups = optimizer.param_groups
    assert [g["lr"] for g in groups] == ([1e-4, 1e-3, 5e-3] if method == "dreambooth" else [1e-4, 1e-3])
    assert {id(p) for p in groups[0]["params"]} <= unet_params and {id(p) for p in groups[1]["params"]} <= text_params
    assert groups[0]["weight_decay"] == groups[1]["weight_decay"] == 1e-2
    if method == "dreambooth":
        assert groups[2]["params"] == [trained.token_rows.rows] and groups[2]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(trained.parameters())  # what the loop clips and averages


@pytest.mark.parametrize("values, message", [
    ({"method": "lora", "text_encoder_learning_rate": 1e-3}, "text_encoder_learning_rate: only with train_text_encoder"),
    ({"method": "textual_inversion", "output_name": "zwx", "text_encoder_learning_rate": 1e-3, "train_text_encoder": True},
     "text_encoder_learning_rate: not for textual inversion"),
])
def test_a_text_encoder_rate_without_a_trained_text_encoder_is_refused(services, values, message):
    with pytest.raises(RequestError, match=message):
        training.build_request(services, {**FAST, **values}, uploads=images())
