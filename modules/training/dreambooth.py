"""Full DreamBooth: every UNet weight (and the text encoder's, when asked) is trained.

The job trains private fp32 copies of the UNet and text encoder, so the cached model that
generation uses is never touched. The result is one original-layout (LDM / A1111) single-file
``.safetensors`` in fp16 (``modules.ldm_export``), with the base's VAE, loadable like any
downloaded checkpoint.

Pivotal tuning (``token_learning_rate``): the identifier's rows of the token-embedding table are
trained as a tensor of their own (``TokenRows``) at a rate apart, as textual inversion trains its
vectors, while the UNet (and the text encoder, when asked) train at ``learning_rate``. The rows are
written into the checkpoint's table, so generation needs nothing but the file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from modules.ldm_export import pipeline_to_ldm
from modules.training.config import TrainOptions
from modules.training.loop import TrainingMethod, encode_ids, param_group, prompt_ids, text_token_ids


def private_copy(module: torch.nn.Module, device: str, trainable: bool) -> torch.nn.Module:
    """A deep copy in fp32 on ``device``: the job's own module, whatever happens to it."""
    clone = copy.deepcopy(module).to(device)
    if any(p.dtype != torch.float32 for p in clone.parameters()):
        clone.float()
    clone.requires_grad_(trainable)
    return clone


class FrozenText:
    """Encodes prompts with a text encoder that is not trained: once per prompt, cached."""

    def __init__(self, tokenizer: Any, text_encoder: Any) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        for text in set(prompts) - set(self._cache):
            ids = torch.tensor([prompt_ids(self.tokenizer, text)])
            self._cache[text] = encode_ids(self.text_encoder, ids)[0].float()
        return torch.stack([self._cache[text] for text in prompts])


class TokenRows:
    """Some rows of a text encoder's token-embedding table, trained apart.

    A forward hook on the embedding layer puts ``rows`` in place of the table's wherever one of
    ``token_ids`` is embedded, so the gradient reaches ``rows`` (which the optimizer may give its own
    learning rate) and never the table's copy of them. ``sync`` copies them into the table, after which
    the encoder without the hook encodes exactly as with it.
    """

    def __init__(self, text_encoder: torch.nn.Module, token_ids: list[int]) -> None:
        self.layer = text_encoder.get_input_embeddings()
        weight = self.layer.weight
        self.ids = torch.tensor(sorted(set(token_ids)), device=weight.device)
        self.rows = torch.nn.Parameter(weight.detach()[self.ids].clone().float())
        self._handle = self.layer.register_forward_hook(self._put_rows)

    def _put_rows(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        match = (args[0].unsqueeze(-1) == self.ids).to(output.dtype)  # [B, T, rows]: which row sits where
        if not match.any():
            return output
        kept = 1 - match.sum(-1, keepdim=True)
        return output * kept + match @ self.rows.to(output.dtype)

    @torch.no_grad()
    def sync(self) -> None:
        """The trained rows into the table."""
        self.layer.weight[self.ids] = self.rows.to(self.layer.weight.dtype)

    def close(self) -> None:
        self._handle.remove()


class FullDreamBooth(TrainingMethod):
    name = "dreambooth"

    def __init__(self, pipe: Any, options: TrainOptions, device: str) -> None:
        self.pipe = pipe
        self.unet = private_copy(pipe.unet, device, trainable=True)
        self.train_text = options.train_text_encoder
        self.text_lr = options.text_encoder_learning_rate
        self.token_lr = options.token_learning_rate
        self.token_rows: TokenRows | None = None
        if self.train_text or self.token_lr:
            self.text_encoder = private_copy(pipe.text_encoder, device, trainable=self.train_text)
        else:
            self.text_encoder = pipe.text_encoder
            self._frozen = FrozenText(pipe.tokenizer, pipe.text_encoder)
        if self.token_lr:
            self.token_rows = TokenRows(self.text_encoder, text_token_ids(pipe.tokenizer, options.identifier() or ""))
        if options.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if self.train_text:
                self.text_encoder.gradient_checkpointing_enable()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.param_groups() for p in group["params"]]

    def param_groups(self) -> list[dict[str, Any]]:
        """The UNet at the request's rate; the text encoder, when trained, at its own (if given); the
        identifier's rows, if trained apart, at theirs (no weight decay)."""
        groups = [param_group(self.unet.parameters())]
        if self.train_text:
            groups.append(param_group(self.text_encoder.parameters(), self.text_lr))
        if self.token_rows is not None:
            groups.append(param_group([self.token_rows.rows], self.token_lr, weight_decay=0.0))
        return groups

    def encode(self, prompts: list[str]) -> torch.Tensor:
        if not self.train_text and self.token_rows is None:
            return self._frozen.encode(prompts)
        ids = torch.tensor([prompt_ids(self.pipe.tokenizer, text) for text in prompts])
        return encode_ids(self.text_encoder, ids)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {f"unet.{k}": v.detach().cpu().clone() for k, v in self.unet.state_dict().items()}
        if self.train_text:
            state.update({f"text_encoder.{k}": v.detach().cpu().clone() for k, v in self.text_encoder.state_dict().items()})
        if self.token_rows is not None:
            state["token_rows"] = self.token_rows.rows.detach().cpu().clone()
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
        if self.train_text:
            self.text_encoder.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("text_encoder.")})
        if self.token_rows is not None:
            with torch.no_grad():
                self.token_rows.rows.copy_(state["token_rows"])

    def sample_parts(self):
        return self.unet, self.text_encoder, None

    def train_mode(self, on: bool) -> None:
        self.unet.train(on)
        if self.train_text:
            self.text_encoder.train(on)

    def estimate_bytes(self) -> int:
        modules = (self.unet, self.text_encoder, self.pipe.vae)
        return sum(p.numel() * 2 for m in modules for p in m.state_dict().values())  # written in fp16

    def write(self, path: Path, metadata: dict[str, str]) -> None:
        from safetensors.torch import save_file

        if self.token_rows is not None:
            self.token_rows.sync()
        state = pipeline_to_ldm(self.unet, self.pipe.vae, self.text_encoder)
        tensors = {k: (v.detach().cpu().to(torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
                   for k, v in state.items()}
        save_file(tensors, str(path), metadata=metadata)

    def close(self) -> None:
        if self.token_rows is not None:
            self.token_rows.close()
