"""Weight quantization of the language model's linears, with torchao: one set of integer weights for every backend.

    Quantization.INT4   4-bit weights, symmetric, one scale per group of 32 input channels (bfloat16 values)
    Quantization.INT8   8-bit weights, same grouping

The linears are quantized once, as torchao's `Int8DynamicActivationIntxWeightConfig` (8-bit dynamic
activations, "8da4w" / "8da8w", what ExecuTorch's XNNPACK runs). ONNX Runtime's MatMulNBits takes the
very same integer weights and scales, weight-only (`export.onnx_weights`); `weight_only` turns the
eager model into that weight-only form, so that both backends have an eager twin on identical weights.
The vision tower, the projector and the token embeddings stay float32, as in ExecuTorch's LLaVA example.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

import torch
from torch import nn

GROUP_SIZE = 32
# Blocks (`models.materialize.weight_blocks` names) whose linears are quantized: the decoder layers and the LM head.
QUANTIZED_BLOCKS = ("model.language_model.layers.", "lm_head")


class Quantization(str, Enum):
    """Weight format of the language model's linears."""

    NONE = "none"
    INT4 = "int4"
    INT8 = "int8"


def quantize_block(name: str, block: nn.Module, quantization: Quantization) -> None:
    """Quantize the linears of `block` in place when it is one of `QUANTIZED_BLOCKS` (a `materialize` transform)."""
    if quantization is Quantization.NONE or not name.startswith(QUANTIZED_BLOCKS):
        return
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_primitives import MappingType

    config = Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4 if quantization is Quantization.INT4 else torch.int8,
        weight_granularity=PerGroup(GROUP_SIZE),
        weight_mapping_type=MappingType.SYMMETRIC,
    )
    quantize_(block, config, filter_fn=lambda module, _: isinstance(module, nn.Linear))
    # XNNPACK keeps group scales in bfloat16: rounded here, every backend and the eager model
    # dequantize to the very same weights.
    for _, weight in quantized_weights(block):
        weight.scale.copy_(weight.scale.to(torch.bfloat16))


def materialized_bytes(model: nn.Module, quantization: Quantization) -> int:
    """Bytes `model`'s tensors take once materialized in float32 and quantized by `quantize_block`
    (works on the meta device). torchao keeps 4-bit codes one per int8, with a float32 scale and
    an int8 zero point per group."""
    quantized = quantized_linear_weights(model, quantization)
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in quantized:
            total += tensor.numel() + tensor.numel() // GROUP_SIZE * (4 + 1)
        else:
            total += tensor.numel() * (4 if tensor.is_floating_point() else tensor.element_size())
    return total


def quantized_linear_weights(model: nn.Module, quantization: Quantization) -> set[int]:
    """ids of the linear weights `quantize_block` quantizes in `model` (none for `Quantization.NONE`)."""
    if quantization is Quantization.NONE:
        return set()
    return {
        id(module.weight)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and f"{name}.".startswith(QUANTIZED_BLOCKS)
    }


def is_quantized(tensor: torch.Tensor) -> bool:
    """A weight `quantize_block` quantized (a torchao tensor holding integer codes)."""
    return hasattr(tensor, "qdata")


def quantized_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(parameter name, torchao weight) of every quantized linear."""
    for name, parameter in model.named_parameters():
        if is_quantized(parameter):
            yield name, parameter


@contextmanager
def weight_only(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the quantized linears skip the activation quantization: ONNX Runtime's MatMulNBits math."""
    weights = [weight for _, weight in quantized_weights(model)]
    saved = [weight.activation_quantization for weight in weights]
    for weight in weights:
        weight.activation_quantization = None
    try:
        yield model
    finally:
        for weight, mode in zip(weights, saved):
            weight.activation_quantization = mode
