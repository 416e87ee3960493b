"""Weights into weight-free ONNX graphs: quantized linears as MatMulNBits, every tensor stored once for all graphs.

The ONNX graphs are traced from a hollow model (`export.pipeline`: storage allocated, never
written), so tracing costs no memory. Their initializers are then pointed at one external-data
file, `onnx/weights.data`, written here tensor by tensor from the materialized model; prefill and
decode share the language model's weights instead of each carrying a copy.

A linear whose weight torchao quantized (`models.quantize`) becomes ONNX Runtime's MatMulNBits
(com.microsoft), weight-only, with the same integer weights and scales:

    MatMul(x, Transpose(W, perm=[1, 0]))  or  Gemm(x, W, transB=1)   W float [N, K]
        -> MatMulNBits(x, B uint8 [N, K/32, 32 * bits / 8], scales float [N * K/32])

B holds q + 2^(bits-1) (MatMulNBits' default zero point), two 4-bit values per byte, low nibble
first. Linears reading the same input (a layer's q, k, v; gate, up) become one MatMulNBits on their
weights concatenated along N, then a Split: a decode step makes four int4 calls a layer instead of
seven, each output column computed bit for bit as alone (tested). Written here because neither
onnxscript's rewriter nor ONNX Runtime's optimizer joins parallel MatMulNBits. The profile
(`runtime.contract.ONNX_PROFILES`) sets its `accuracy_level`: "exact" 0, float32 compute on the
dequantized weights, the math of `models.quantize.weight_only`; "fast" 4, int8 compute on
activations quantized per block on the fly (1.3x faster prefill at LLaVA-1.5-7B's widths, logits
no longer bit-close).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx_ir as ir
import torch

from models.quantize import GROUP_SIZE, is_quantized
from runtime.contract import ONNX_WEIGHTS_FILE

# Tensor offsets in the data file: page-aligned, so that a runtime can map them from disk.
ALIGNMENT = 4096
ACCURACY_LEVELS = {"exact": 0, "fast": 4}
MS_DOMAIN = "com.microsoft"


class WeightFile:
    """The append-only external-data file of an artifact's ONNX graphs; each tensor stored once.

    Use as a context manager, or call `close`.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / ONNX_WEIGHTS_FILE
        self._file = open(self.path, "wb")
        self._stored: dict[str, tuple[int, int, ir.DataType, tuple[int, ...]]] = {}

    def __enter__(self) -> WeightFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def tensor(self, key: str, name: str, make: callable) -> ir.ExternalTensor:
        """An external tensor called `name` holding `make()` (a numpy array), written on the first request of `key`."""
        if key not in self._stored:
            array = np.ascontiguousarray(make())
            offset = -(-self._file.tell() // ALIGNMENT) * ALIGNMENT
            self._file.seek(offset)
            array.tofile(self._file)
            self._stored[key] = (offset, array.nbytes, ir.DataType.from_numpy(array.dtype), array.shape)
        offset, length, dtype, shape = self._stored[key]
        return ir.ExternalTensor(
            ONNX_WEIGHTS_FILE, offset, length, dtype, shape=ir.Shape(shape), name=name, base_dir=self.directory
        )


def attach_weights(
    model: ir.Model,
    weights: Mapping[str, torch.Tensor],
    names: Mapping[str, str],
    store: WeightFile,
    profile: str = "exact",
) -> None:
    """Give `model` its weights, in place; quantized linears become MatMulNBits computing as `profile` says.

    Args:
        model: an ONNX model exported from a hollow module.
        weights: {canonical name: tensor} of the materialized model (torchao weights for quantized linears).
        names: {initializer name in `model`: canonical name} for the module's parameters and buffers;
            initializers not in it (constants made by the traced code) keep their values.
        store: the shared data file.
    """
    graph = model.graph
    for linears in _quantized_linears(graph, weights, names):
        _to_matmul_nbits(model, linears, store, ACCURACY_LEVELS[profile])

    for name, value in list(graph.initializers.items()):
        if name not in names:
            continue
        key = names[name]
        if not value.uses():
            graph.initializers.pop(name)
        elif is_quantized(weights[key]):
            raise ValueError(
                f"{key} is quantized, but the graph uses it other than as MatMul(x, Transpose(W)) or "
                "Gemm(x, W, transB=1) without bias, the linears MatMulNBits replaces"
            )
        else:
            value.const_value = store.tensor(key, name, lambda: weights[key].detach().contiguous().numpy())


def _linear_weight(node: ir.Node) -> ir.Value | None:
    """W of `x @ W.T` written as MatMul(x, Transpose(W)) or Gemm(x, W, transB=1), else None."""
    if node.op_type == "MatMul" and node.domain == "":
        transpose = node.inputs[1].producer()
        if transpose is not None and transpose.op_type == "Transpose":
            perm = transpose.attributes.get("perm")
            if perm is not None and list(perm.value) == [1, 0]:
                return transpose.inputs[0]
    if node.op_type == "Gemm" and node.domain == "" and len(node.inputs) == 2:
        attrs = {key: attr.value for key, attr in node.attributes.items()}
        if attrs.get("transB") == 1 and not attrs.get("transA") and attrs.get("alpha", 1.0) == 1.0:
            return node.inputs[1]
    return None


class _Linear(NamedTuple):
    """A quantized linear of the graph: its MatMul or Gemm node, the W it reads, W's canonical name and tensor."""

    node: ir.Node
    weight: ir.Value
    key: str
    tensor: torch.Tensor


def _quantized_linears(graph: ir.Graph, weights: Mapping[str, torch.Tensor], names: Mapping[str, str]) -> list[list[_Linear]]:
    """The graph's quantized linears in groups that become one MatMulNBits each: those reading the same
    input with the same K and bits (a layer's q, k, v; gate, up), in graph order. A weight read by
    linears of two groups (FastV's second use of a layer's q_proj) is stored once per group."""
    groups: dict[tuple[ir.Value, int, torch.dtype], list[_Linear]] = {}
    for node in graph:
        weight = _linear_weight(node)
        if weight is None or weight.name not in names or not is_quantized(tensor := weights[names[weight.name]]):
            continue
        linear = _Linear(node, weight, names[weight.name], tensor)
        groups.setdefault((node.inputs[0], tensor.shape[1], tensor.target_dtype), []).append(linear)
    return list(groups.values())


def _to_matmul_nbits(model: ir.Model, linears: list[_Linear], store: WeightFile, accuracy_level: int) -> None:
    """Replace `linears` (one group of `_quantized_linears`) by one MatMulNBits, split into their outputs
    if several: their weights concatenated along N, so that a decode step makes one call instead of three
    (q, k, v) or two (gate, up). Each output column is computed as alone, bit for bit."""
    graph = model.graph
    first = linears[0]
    bits = 4 if first.tensor.target_dtype == torch.int4 else 8
    in_features = first.tensor.shape[1]
    for linear in linears:
        if linear.tensor.block_size != (1, GROUP_SIZE) or torch.any(linear.tensor.zero_point != 0):
            raise ValueError(f"{linear.key}: MatMulNBits takes symmetric weights in groups of {GROUP_SIZE} input channels")
    widths = [linear.tensor.shape[0] for linear in linears]

    def packed() -> np.ndarray:
        codes = torch.cat([linear.tensor.qdata for linear in linears]).to(torch.int16) + (1 << (bits - 1))
        codes = codes.to(torch.uint8).numpy().reshape(sum(widths), in_features // GROUP_SIZE, GROUP_SIZE)
        return codes if bits == 8 else codes[..., 0::2] | (codes[..., 1::2] << 4)

    def scales() -> np.ndarray:
        return torch.cat([linear.tensor.scale.float().reshape(-1) for linear in linears]).numpy()

    key = "+".join(linear.key for linear in linears)
    name = "+".join(linear.weight.name for linear in linears)
    inputs = []
    for value_tensor in (
        store.tensor(f"{key}.q{bits}", f"{name}.q{bits}", packed),
        store.tensor(f"{key}.scales", f"{name}.scales", scales),
    ):
        # A weight (or group) that two places of the graph read has one initializer.
        value = graph.initializers.get(value_tensor.name)
        if value is None:
            value = ir.Value(name=value_tensor.name, shape=value_tensor.shape, type=ir.TensorType(value_tensor.dtype))
            value.const_value = value_tensor
            graph.register_initializer(value)
        inputs.append(value)
    nbits = ir.Node(
        MS_DOMAIN,
        "MatMulNBits",
        [first.node.inputs[0], *inputs],
        attributes=[
            ir.AttrInt64("K", in_features),
            ir.AttrInt64("N", sum(widths)),
            ir.AttrInt64("bits", bits),
            ir.AttrInt64("block_size", GROUP_SIZE),
            ir.AttrInt64("accuracy_level", accuracy_level),
        ],
        name=f"{first.node.name}_nbits",
    )
    new_nodes = [nbits]
    if len(linears) > 1:
        sizes = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(widths, dtype=ir.DataType.INT64))])
        split = ir.Node(
            "",
            "Split",
            [nbits.outputs[0], sizes.outputs[0]],
            [ir.AttrInt64("axis", -1)],
            num_outputs=len(linears),
            name=f"{first.node.name}_split",
        )
        new_nodes += [sizes, split]
    old_nodes = [linear.node for linear in linears]
    transposes = dict.fromkeys(node.inputs[1].producer() for node in old_nodes if node.op_type == "MatMul")
    ir.convenience.replace_nodes_and_values(
        graph, first.node, old_nodes, new_nodes, [node.outputs[0] for node in old_nodes], list(new_nodes[-1].outputs)
    )
    for transpose in transposes:
        if not transpose.outputs[0].uses():
            graph.remove(transpose, safe=True)
    model.opset_imports.setdefault(MS_DOMAIN, 1)
