"""Weight quantization of the language model's linears (and optionally the vision tower's), with torchao:
one set of integer weights for every backend.

    Quantization.INT4   4-bit weights, symmetric, one scale per group of 32 input channels (bfloat16 values)
    Quantization.INT8   8-bit weights, same grouping

The linears are quantized once, as torchao's `Int8DynamicActivationIntxWeightConfig` (8-bit dynamic
activations, "8da4w" / "8da8w", what ExecuTorch's XNNPACK runs). ONNX Runtime's MatMulNBits takes the
very same integer weights and scales, weight-only (`export.onnx_weights`); `weight_only` turns the
eager model into that weight-only form, so that both backends have an eager twin on identical weights.
The vision tower, the projector and the token embeddings stay float32, as in ExecuTorch's LLaVA example,
unless `vision` asks for the tower's layers in int8 (`VISION_QUANTIZATIONS`): 8da8w with one float32
scale per output channel, what XNNPACK runs in int8 (its grouped weights are 4-bit only). That is an
ExecuTorch-only choice (`export.config.ExportConfig.vision_quantization`): 1.7x faster CLIP ViT-L on
XNNPACK, vision features no longer float32's.
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
# The vision towers' transformer layers in transformers' naming (CLIP and SigLIP: LLaVA-1.5, LLaVA-NeXT,
# LLaVA-Video; Qwen2-VL's ViT). Patch embeddings, projector and merger stay float32.
VISION_BLOCKS = ("model.vision_tower.encoder.layers.", "model.visual.blocks.")


class Quantization(str, Enum):
    """Weight format of the language model's linears."""

    NONE = "none"
    INT4 = "int4"
    INT8 = "int8"


# The vision tower's weight formats: float32, or 8da8w per output channel.
VISION_QUANTIZATIONS = (Quantization.NONE, Quantization.INT8)


def quantize_block(
    name: str, block: nn.Module, quantization: Quantization, vision: Quantization = Quantization.NONE
) -> None:
    """Quantize the linears of `block` in place: `quantization` when it is one of `QUANTIZED_BLOCKS`,
    `vision` (one of `VISION_QUANTIZATIONS`) when it is one of `VISION_BLOCKS` (a `materialize` transform).

    Raises:
        ValueError: `vision` not one of `VISION_QUANTIZATIONS`.
    """
    if vision not in VISION_QUANTIZATIONS:
        choices = ", ".join(q.value for q in VISION_QUANTIZATIONS)
        raise ValueError(f"the vision tower's weights can be {choices}, not {vision.value}")
    if name.startswith(VISION_BLOCKS) and vision is Quantization.INT8:
        _quantize_linears(block, torch.int8, per_group=None)
    if quantization is Quantization.NONE or not name.startswith(QUANTIZED_BLOCKS):
        return
    _quantize_linears(block, torch.int4 if quantization is Quantization.INT4 else torch.int8, per_group=GROUP_SIZE)
    # XNNPACK keeps group scales in bfloat16: rounded here, every backend and the eager model
    # dequantize to the very same weights.
    for _, weight in quantized_weights(block):
        weight.scale.copy_(weight.scale.to(torch.bfloat16))


def _quantize_linears(block: nn.Module, dtype: torch.dtype, *, per_group: int | None) -> None:
    """Every linear of `block` as torchao's 8-bit dynamic activations and symmetric `dtype` weights,
    one scale per `per_group` input channels, or per output channel when None."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_primitives import MappingType

    config = Int8DynamicActivationIntxWeightConfig(
        weight_dtype=dtype,
        weight_granularity=PerAxis(0) if per_group is None else PerGroup(per_group),
        weight_mapping_type=MappingType.SYMMETRIC,
    )
    quantize_(block, config, filter_fn=lambda module, _: isinstance(module, nn.Linear))


def materialized_bytes(model: nn.Module, quantization: Quantization) -> int:
    """Bytes `model`'s tensors take once materialized in float32 and its language model quantized by
    `quantize_block` (works on the meta device; an int8 vision tower is counted in float32, which errs
    high by 0.9 GB at CLIP ViT-L). torchao keeps 4-bit codes one per int8, with a float32 scale and
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
