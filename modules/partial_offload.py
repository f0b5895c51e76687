"""Partial placement of a torch module: as many blocks on the device as a byte budget allows, the rest
run from the CPU (each such block's weights visit the device only for its own forward).

This is ComfyUI's "lowvram" partial loading, and what diffusers' ``enable_sequential_cpu_offload``
does for every layer. A *block* is a module whose forward is called as a whole: the module is cut
into its children while it is a container (``ModuleList``, ``ModuleDict``, ``Sequential``) or larger
than ``1/16`` of the whole and holding no parameters of its own. For a UNet these are
``conv_in``, the time embedding, each resnet, each transformer and each sampler of every down,
mid and up block, ``conv_out``...

The offloaded blocks get a forward pre-hook that copies their tensors to the device (reading
them at call time, so LoRA layers added later come along) and a forward hook that puts the CPU
tensors back: the device copy is freed after each block, nothing is copied back.
"""

from __future__ import annotations

from typing import Any

import torch

SPLIT_FRACTION = 16  # a block larger than 1/16 of the module is cut into its children (when it can be)
_HOOKS = "_easel_offload_hooks"  # attribute holding a block's hook handles


def _tensors(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.Tensor]]:
    """(owner, name, tensor) for every parameter and buffer of ``module``, each once."""
    seen: set[int] = set()
    found = []
    for owner in module.modules():
        for name, tensor in [*owner.named_parameters(recurse=False), *owner.named_buffers(recurse=False)]:
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                found.append((owner, name, tensor))
    return found


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared tensors once)."""
    return sum(t.numel() * t.element_size() for _, _, t in _tensors(module))


def _subtree_bytes(module: torch.nn.Module) -> dict[int, int]:
    """id(m) -> bytes of the tensors of every submodule ``m`` of ``module`` (one pass, bottom up)."""
    sizes: dict[int, int] = {}

    def visit(m: torch.nn.Module) -> int:
        own = sum(t.numel() * t.element_size()
                  for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)) if t is not None)
        sizes[id(m)] = own + sum(visit(child) for child in m.children())
        return sizes[id(m)]

    visit(module)
    return sizes


def blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks of ``module`` in registration order (see the module docstring)."""
    sizes = _subtree_bytes(module)
    limit = max(1, sizes[id(module)] // SPLIT_FRACTION)
    found: list[torch.nn.Module] = []

    def visit(m: torch.nn.Module) -> None:
        children = list(m.children())
        container = isinstance(m, (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Sequential))
        own = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        if children and not own and (container or sizes[id(m)] > limit or m is module):
            for child in children:
                visit(child)
        elif sizes[id(m)] > 0:
            found.append(m)

    visit(module)
    return found


def min_device_bytes(module: torch.nn.Module) -> int:
    """The least a partial placement needs on the device: the largest block."""
    return max((tensor_bytes(b) for b in blocks(module)), default=0)


def remove_offload(module: torch.nn.Module) -> None:
    """Take the offload hooks off every block of ``module`` (their tensors stay on the CPU)."""
    for m in module.modules():
        for handle in getattr(m, _HOOKS, ()):
            handle.remove()
        if hasattr(m, _HOOKS):
            delattr(m, _HOOKS)


def _offload_block(block: torch.nn.Module, device: torch.device) -> None:
    """Run ``block`` from the CPU: its tensors go to ``device`` for its forward only."""
    on_cpu: dict[int, torch.Tensor] = {}

    def before(m: torch.nn.Module, args: Any) -> None:
        for _, _, tensor in _tensors(m):
            on_cpu[id(tensor)] = tensor.data
            tensor.data = tensor.data.to(device, non_blocking=True)

    def after(m: torch.nn.Module, args: Any, output: Any) -> None:
        for _, _, tensor in _tensors(m):
            if id(tensor) in on_cpu:
                tensor.data = on_cpu.pop(id(tensor))

    setattr(block, _HOOKS, [block.register_forward_pre_hook(before), block.register_forward_hook(after)])


def place(module: torch.nn.Module, device: str, max_bytes: int | None = None) -> int:
    """Put ``module`` on ``device``: wholly (``max_bytes`` None), or its leading blocks up to ``max_bytes``
    there and the rest run from the CPU (on "cpu" too, where the hooks move nothing: for tests). Returns
    the bytes it holds on the device ("cpu" wholly: 0)."""
    remove_offload(module)
    target = torch.device(device)
    if max_bytes is None:
        module.to(target)
        return 0 if target.type == "cpu" else tensor_bytes(module)
    module.to("cpu")
    placed = 0
    budget_left = True
    for block in blocks(module):
        size = tensor_bytes(block)
        if budget_left and placed + size <= max_bytes:
            block.to(target)
            placed += size
        else:
            budget_left = False  # keep the device part a prefix: the order blocks run in, mostly
            _offload_block(block, target)
    return placed
