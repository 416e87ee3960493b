"""What the tests ask of quantized models."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn

from models.quantize import Quantization, quantized_weights

BITS = {Quantization.INT4: 4, Quantization.INT8: 8}
# MatMulNBits nodes per decoder layer in an ONNX graph: q, k, v joined; o; gate, up joined; down
# (`export.onnx_weights`). The LM head adds one per graph.
MATMUL_NBITS_PER_LAYER = 4


def model_quantization(model: nn.Module) -> Quantization:
    """The `Quantization` of a model's linears (NONE when none is quantized)."""
    for _, weight in quantized_weights(model):
        return Quantization.INT4 if weight.target_dtype == torch.int4 else Quantization.INT8
    return Quantization.NONE


def matmul_nbits(path: Path) -> list[onnx.NodeProto]:
    """The MatMulNBits nodes of the ONNX graph at `path` (its weights not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    return [node for node in model.graph.node if node.op_type == "MatMulNBits"]


def accuracy_levels(folder: Path) -> set[int]:
    """The MatMulNBits `accuracy_level`s of the language model's graphs."""
    nodes = [node for graph in ("prefill", "decode") for node in matmul_nbits(folder / "onnx" / f"{graph}.onnx")]
    return {{a.name: a.i for a in node.attribute}["accuracy_level"] for node in nodes}
