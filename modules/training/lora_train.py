"""DreamBooth-LoRA: low-rank adapters (peft) on the UNet's attention projections, and optionally
on the text encoder's; the base weights stay frozen.

The adapters go into private copies of the UNet (and text encoder), never into the cached model.
The result is written in the kohya/A1111 format that ``modules.lora`` (and A1111, ComfyUI, ...)
read: ``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` for
``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of every attention block (or, with ``lora_targets``
``cross_attention_kv``, only ``attn2.to_k`` / ``attn2.to_v``: the text's keys and values), and
``lora_te_text_model_encoder_layers_<i>_self_attn_<q|k|v|out>_proj...`` for the text encoder.
diffusers' ``convert_state_dict_to_kohya`` names the SD 1.x text encoder ``lora_te1_`` (SDXL's
convention) and writes alpha = rank, so the few lines of renaming are done here instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from modules.training.config import TrainOptions
from modules.training.dreambooth import FrozenText, private_copy
from modules.training.loop import TrainingMethod, encode_ids, param_group, prompt_ids

UNET_TARGETS: dict[str, list[str] | str] = {
    "attention": ["to_q", "to_k", "to_v", "to_out.0"],
    "cross_attention_kv": r".*\.attn2\.(to_k|to_v)",  # peft: a string is a regular expression of module paths
}
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
ADAPTER = "easel_train"


class InitLoraError(ValueError):
    """The LoRA to continue from does not fit the adapter being trained."""


def kohya_name(component: str, module: str) -> str:
    """``lora_unet_down_blocks_0_..._to_q`` / ``lora_te_text_model_encoder_layers_0_self_attn_q_proj``."""
    if component == "unet":
        return "lora_unet_" + module.replace(".", "_")
    return "lora_te_text_model_" + module.removeprefix("text_model.").replace(".", "_")


def lora_modules(model: torch.nn.Module) -> dict[str, Any]:
    """The peft LoRA layers of ``model`` by module path."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def kohya_state(component: str, model: torch.nn.Module, alpha: float) -> dict[str, torch.Tensor]:
    """The adapter of ``model`` as kohya tensors (CPU, fp32)."""
    out: dict[str, torch.Tensor] = {}
    for module, layer in lora_modules(model).items():
        key = kohya_name(component, module)
        out[f"{key}.lora_down.weight"] = layer.lora_A[ADAPTER].weight.detach().float().cpu().contiguous()
        out[f"{key}.lora_up.weight"] = layer.lora_B[ADAPTER].weight.detach().float().cpu().contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(alpha))
    return out


class LoraMethod(TrainingMethod):
    name = "lora"

    def __init__(self, pipe: Any, options: TrainOptions, device: str, init: dict[str, torch.Tensor] | None = None) -> None:
        from peft import LoraConfig

        self.pipe = pipe
        self.rank = options.lora_rank
        self.alpha = options.lora_alpha or float(options.lora_rank)
        self.targets = options.lora_targets
        self.train_text = options.train_text_encoder
        self.text_lr = options.text_encoder_learning_rate
        with torch.random.fork_rng(devices=[]):  # the adapter's random init is seeded, the global RNG untouched
            torch.manual_seed(options.seed)
            self.unet = private_copy(pipe.unet, device, trainable=False)
            self.unet.add_adapter(LoraConfig(r=self.rank, lora_alpha=self.alpha, init_lora_weights="gaussian",
                                             target_modules=UNET_TARGETS[options.lora_targets]), adapter_name=ADAPTER)
            if self.train_text:
                self.text_encoder = private_copy(pipe.text_encoder, device, trainable=False)
                self.text_encoder.add_adapter(LoraConfig(r=self.rank, lora_alpha=self.alpha, init_lora_weights="gaussian",
                                                         target_modules=TEXT_TARGETS), adapter_name=ADAPTER)
            else:
                self.text_encoder = pipe.text_encoder
                self._frozen = FrozenText(pipe.tokenizer, pipe.text_encoder)
        if options.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if self.train_text:
                self.text_encoder.gradient_checkpointing_enable()
        if init is not None:
            self.load_kohya(init)

    def _components(self) -> list[tuple[str, torch.nn.Module]]:
        return [("unet", self.unet)] + ([("text_encoder", self.text_encoder)] if self.train_text else [])

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.param_groups() for p in group["params"]]

    def param_groups(self) -> list[dict[str, Any]]:
        """The UNet's adapter at the request's rate, the text encoder's (when trained) at its own if given."""
        return [param_group((p for p in m.parameters() if p.requires_grad), self.text_lr if name == "text_encoder" else None)
                for name, m in self._components()]

    def encode(self, prompts: list[str]) -> torch.Tensor:
        if not self.train_text:
            return self._frozen.encode(prompts)
        ids = torch.tensor([prompt_ids(self.pipe.tokenizer, text) for text in prompts])
        return encode_ids(self.text_encoder, ids)

    def kohya(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for component, model in self._components():
            state.update(kohya_state(component, model, self.alpha))
        return state

    def load_kohya(self, state: dict[str, torch.Tensor]) -> None:
        """Start from a kohya LoRA (``init_lora``) of the same layers and rank."""
        layers = {kohya_name(c, module): layer
                  for c, model in self._components() for module, layer in lora_modules(model).items()}
        unknown = sorted({k.split(".")[0] for k in state} - set(layers))
        if unknown:
            unet_layers = "to_q/to_k/to_v/to_out.0" if self.targets == "attention" else "cross-attention to_k/to_v"
            raise InitLoraError(f"init_lora: layer {unknown[0]} is not one this trainer trains (UNet {unet_layers}"
                                f"{', text encoder q/k/v/out_proj' if self.train_text else ''}, diffusers names)")
        for key, layer in layers.items():
            down, up = state.get(f"{key}.lora_down.weight"), state.get(f"{key}.lora_up.weight")
            if down is None or up is None:
                continue
            if down.shape != layer.lora_A[ADAPTER].weight.shape:
                raise InitLoraError(f"init_lora: {key} has rank {down.shape[0]} and shape {tuple(down.shape)}; "
                                    f"set lora_rank to {down.shape[0]} for this base model")
            alpha = float(state.get(f"{key}.alpha", torch.tensor(float(down.shape[0]))))
            scale = (alpha / down.shape[0]) / (self.alpha / self.rank)  # keep the file's effective scale
            with torch.no_grad():
                layer.lora_A[ADAPTER].weight.copy_(down)
                layer.lora_B[ADAPTER].weight.copy_(up * scale)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.kohya().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_kohya(state)

    def sample_parts(self):
        return self.unet, self.text_encoder, None

    def train_mode(self, on: bool) -> None:
        self.unet.train(on)
        if self.train_text:
            self.text_encoder.train(on)

    def estimate_bytes(self) -> int:
        return sum(p.numel() * 4 for p in self.parameters()) + 65536

    def write(self, path: Path, metadata: dict[str, str]) -> None:
        from safetensors.torch import save_file

        save_file(self.kohya(), str(path), metadata={
            **metadata, "ss_network_module": "networks.lora", "ss_network_dim": str(self.rank),
            "ss_network_alpha": str(self.alpha), "easel_train_text_encoder": str(self.train_text)})
