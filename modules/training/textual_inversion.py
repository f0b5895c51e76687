"""Textual inversion: only the new token's vectors are trained; the model stays as it is.

The embedding is used by its file name, as in A1111: while generating, ``modules.prompts`` finds
the name's tokens in the prompt and puts the embedding's vectors in their place (a forward hook
on the token-embedding layer, BOS ids as placeholders). Training does exactly the same, with the
vectors as the trained tensor, so what is learnt is what generation will see. The hook lives
only while the job runs and is removed however it ends; no token is added to the tokenizer.

The vectors start from the initializer word's embedding (the mean of its tokens' rows). The
result is ``embeddings/NAME.safetensors`` holding ``emb_params`` [vectors, width] (kohya's and
A1111's safetensors layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from modules.prompts import EmbeddingTable, TokenVector
from modules.schemas import RequestError
from modules.training.config import TrainRequest
from modules.training.loop import CHUNK_TOKENS, TrainingMethod, text_token_ids


class TextualInversion(TrainingMethod):
    name = "textual_inversion"

    def __init__(self, pipe: Any, options: TrainRequest, device: str) -> None:
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer
        self.text_encoder = pipe.text_encoder  # shared and frozen: only the hooked vectors get gradients
        self.unet = pipe.unet
        self.token = options.output_name
        layer = self.text_encoder.get_input_embeddings()
        init_ids = self.tokenizer(options.initializer_token, add_special_tokens=False).input_ids
        if not init_ids:
            raise RequestError(f"initializer_token: {options.initializer_token!r} has no tokens; give a word such as 'shape'")
        with torch.no_grad():
            start = layer.weight[init_ids].float().mean(0).to(device)
        self.vectors = torch.nn.Parameter(start.repeat(options.num_vectors, 1).clone())
        self._table = EmbeddingTable(self.tokenizer, {self.token: torch.zeros(options.num_vectors, 1)})
        for prompt in options.instance_prompts():
            if not self._table.names_in(text_token_ids(self.tokenizer, prompt)):
                raise RequestError(f"instance_prompt: the embedding's name {self.token!r} is not found in "
                                   f"{prompt!r} as a word of its own")
        self._positions: list[tuple[int, int, int]] = []  # (row, column, vector index) for the running batch
        self._handle = layer.register_forward_hook(self._put_vectors)
        self._checkpointing_was = bool(getattr(self.unet, "is_gradient_checkpointing", False))
        if options.gradient_checkpointing and not self._checkpointing_was:
            self.unet.enable_gradient_checkpointing()  # undone in close()

    def _put_vectors(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not self._positions:
            return output
        rows = torch.tensor([r for r, _, _ in self._positions], device=output.device)
        columns = torch.tensor([c for _, c, _ in self._positions], device=output.device)
        index = torch.tensor([i for _, _, i in self._positions], device=self.vectors.device)
        output = output.clone()
        output[rows, columns] = self.vectors[index].to(output.device, output.dtype)
        return output

    def _ids(self, text: str, row: int) -> list[int]:
        """77 ids as generation builds them; the embedding's places hold BOS and are recorded."""
        tokens = self._table.substitute(text_token_ids(self.tokenizer, text))[:CHUNK_TOKENS]
        ids = []
        for column, token in enumerate(tokens, start=1):
            if isinstance(token, TokenVector):
                self._positions.append((row, column, token.index))
                ids.append(self.tokenizer.bos_token_id)
            else:
                ids.append(token)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return [self.tokenizer.bos_token_id, *ids, *[pad] * (CHUNK_TOKENS + 1 - len(ids))]

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.vectors]

    def encode(self, prompts: list[str]) -> torch.Tensor:
        self._positions = []
        ids = torch.tensor([self._ids(text, row) for row, text in enumerate(prompts)])
        try:
            return self.text_encoder(input_ids=ids.to(self.text_encoder.device)).last_hidden_state
        finally:
            self._positions = []

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {"vectors": self.vectors.detach().cpu().clone()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.vectors.copy_(state["vectors"].to(self.vectors.device))

    def sample_parts(self):
        return self.unet, self.text_encoder, {self.token: self.vectors.detach().float().cpu()}

    def estimate_bytes(self) -> int:
        return self.vectors.numel() * 4 + 65536

    def write(self, path: Path, metadata: dict[str, str]) -> None:
        from safetensors.torch import save_file

        save_file({"emb_params": self.vectors.detach().float().cpu().contiguous()}, str(path), metadata=metadata)

    def close(self) -> None:
        self._handle.remove()
        if not self._checkpointing_was and getattr(self.unet, "is_gradient_checkpointing", False):
            self.unet.disable_gradient_checkpointing()
