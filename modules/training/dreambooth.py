"""Full DreamBooth: every UNet weight (and the text encoder's, when asked) is trained.

The job trains private fp32 copies of the UNet and text encoder, so the cached model that
generation uses is never touched. The result is one original-layout (LDM / A1111) single-file
``.safetensors`` in fp16 (``modules.ldm_export``), with the base's VAE, loadable like any
downloaded checkpoint.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from modules.ldm_export import pipeline_to_ldm
from modules.training.config import TrainOptions
from modules.training.loop import TrainingMethod, encode_ids, prompt_ids


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


class FullDreamBooth(TrainingMethod):
    name = "dreambooth"

    def __init__(self, pipe: Any, options: TrainOptions, device: str) -> None:
        self.pipe = pipe
        self.unet = private_copy(pipe.unet, device, trainable=True)
        self.train_text = options.train_text_encoder
        if self.train_text:
            self.text_encoder = private_copy(pipe.text_encoder, device, trainable=True)
        else:
            self.text_encoder = pipe.text_encoder
            self._frozen = FrozenText(pipe.tokenizer, pipe.text_encoder)
        if options.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if self.train_text:
                self.text_encoder.gradient_checkpointing_enable()

    def parameters(self) -> list[torch.nn.Parameter]:
        params = list(self.unet.parameters())
        return params + list(self.text_encoder.parameters()) if self.train_text else params

    def encode(self, prompts: list[str]) -> torch.Tensor:
        if not self.train_text:
            return self._frozen.encode(prompts)
        ids = torch.tensor([prompt_ids(self.pipe.tokenizer, text) for text in prompts])
        return encode_ids(self.text_encoder, ids)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {f"unet.{k}": v.detach().cpu().clone() for k, v in self.unet.state_dict().items()}
        if self.train_text:
            state.update({f"text_encoder.{k}": v.detach().cpu().clone() for k, v in self.text_encoder.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
        if self.train_text:
            self.text_encoder.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("text_encoder.")})

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

        state = pipeline_to_ldm(self.unet, self.pipe.vae, self.text_encoder)
        tensors = {k: (v.detach().cpu().to(torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
                   for k, v in state.items()}
        save_file(tensors, str(path), metadata=metadata)
