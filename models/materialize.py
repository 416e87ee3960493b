"""Give a model's weights real storage one block at a time, so that peak memory stays one block above the result.

A float32 LLaVA-1.5-7B is 26.3 GiB: more than a 24 GiB machine holds. Built on the meta device and
filled block by block (a decoder layer, the embedding table, ...), each block can be transformed,
e.g. quantized, before the next one takes memory.

    weight_blocks(model)          the blocks, in a fixed order
    materialize(model, fill, transform)
        fill_random(seed)         transformers' initialisation, seeded per block (order-independent)
        keep_loaded               weights already loaded (a checkpoint): only cast and transform
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel

# fill(model, name, block, recurse): give `block` its weights (all of them, or only its own with recurse=False).
Fill = Callable[[PreTrainedModel, str, nn.Module, bool], None]
# transform(name, block): change a block after it was filled (e.g. quantize its linears).
Transform = Callable[[str, nn.Module], None]


def weight_blocks(model: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """(name, module, recurse) covering every parameter and buffer of `model` exactly once.

    Each entry of a `ModuleList` (a transformer layer) is one block with its children; every other
    module holding tensors of its own is a block by itself (recurse False). The latter come children
    first, because an initialisation may rewrite its children (CLIP's embeddings do).
    """
    blocks, inside = [], set()
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            for index, child in enumerate(module):
                blocks.append((f"{name}.{index}", child, True))
                inside.update(id(m) for m in child.modules())
    rest = [
        (name, module, False)
        for name, module in model.named_modules()
        if id(module) not in inside and (module._parameters or module._buffers)
    ]
    return blocks + rest[::-1]


def fill_random(seed: int) -> Fill:
    """transformers' initialisation of each block on the CPU, from a seed derived from (seed, block name).

    The same (model, seed) always gives the same weights, whatever else the process draws.
    """

    def fill(model: PreTrainedModel, name: str, block: nn.Module, recurse: bool) -> None:
        block.to_empty(device="cpu", recurse=recurse)
        owner = _initialising_model(model, name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(f"{seed}/{name}".encode()))
            if recurse:
                block.apply(owner._init_weights)  # children first: CLIP's attention re-initialises its linears
            else:
                owner._init_weights(block)

    return fill


def keep_loaded(model: PreTrainedModel, name: str, block: nn.Module, recurse: bool) -> None:
    """A `Fill` for weights that are already there (a loaded checkpoint)."""


def materialize(
    model: PreTrainedModel,
    fill: Fill,
    *,
    dtype: torch.dtype = torch.float32,
    transform: Transform | None = None,
) -> PreTrainedModel:
    """Fill, cast to `dtype` and transform `model` block by block, in place; returns it in eval mode.

    Peak memory: the blocks done so far (after `transform`) plus one block in `dtype`.
    """
    for name, block, recurse in weight_blocks(model):
        fill(model, name, block, recurse)
        _cast(block, dtype, recurse)
        if transform is not None:
            transform(name, block)
    return model.eval().requires_grad_(False)


def _cast(block: nn.Module, dtype: torch.dtype, recurse: bool) -> None:
    modules = block.modules() if recurse else (block,)
    for module in modules:
        for key, tensor in module._parameters.items():
            if tensor is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                module._parameters[key] = nn.Parameter(tensor.to(dtype), requires_grad=False)
        for key, tensor in module._buffers.items():
            if tensor is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                module._buffers[key] = tensor.to(dtype)


def _initialising_model(model: PreTrainedModel, name: str) -> PreTrainedModel:
    """The innermost `PreTrainedModel` around module `name`: its `_init_weights` knows the module."""
    owners = [
        (prefix, module)
        for prefix, module in model.named_modules()
        if isinstance(module, PreTrainedModel) and (not prefix or name == prefix or name.startswith(prefix + "."))
    ]
    return max(owners, key=lambda owner: len(owner[0]))[1]
