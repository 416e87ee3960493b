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
first. The profile (`runtime.contract.ONNX_PROFILES`) sets its `accuracy_level`: "exact" 0, float32
compute on the dequantized weights, the math of `models.quantize.weight_only`; "fast" 4, int8
compute on activations quantized per block on the fly (1.3x faster prefill at LLaVA-1.5-7B's
widths, logits no longer bit-close).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

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
    for node in list(graph):
        weight = _linear_weight(node)
        if weight is None or weight.name not in names:
            continue
        tensor = weights[names[weight.name]]
        if is_quantized(tensor):
            _to_matmul_nbits(model, node, weight, tensor, names[weight.name], store, ACCURACY_LEVELS[profile])

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


def _to_matmul_nbits(
    model: ir.Model, node: ir.Node, weight: ir.Value, tensor: torch.Tensor, key: str, store: WeightFile, accuracy_level: int
) -> None:
    graph = model.graph
    bits = 4 if tensor.target_dtype == torch.int4 else 8
    out_features, in_features = tensor.shape
    if tensor.block_size != (1, GROUP_SIZE) or torch.any(tensor.zero_point != 0):
        raise ValueError(f"{key}: MatMulNBits takes symmetric weights in groups of {GROUP_SIZE} input channels")

    def packed() -> np.ndarray:
        codes = (tensor.qdata.to(torch.int16) + (1 << (bits - 1))).to(torch.uint8).numpy()
        codes = codes.reshape(out_features, in_features // GROUP_SIZE, GROUP_SIZE)
        return codes if bits == 8 else codes[..., 0::2] | (codes[..., 1::2] << 4)

    blob = store.tensor(f"{key}.q{bits}", f"{weight.name}.q{bits}", packed)
    scales = store.tensor(f"{key}.scales", f"{weight.name}.scales", lambda: tensor.scale.float().reshape(-1).numpy())
    inputs = []
    for value_tensor in (blob, scales):
        # A weight that two linears share has one initializer.
        value = graph.initializers.get(value_tensor.name)
        if value is None:
            value = ir.Value(name=value_tensor.name, shape=value_tensor.shape, type=ir.TensorType(value_tensor.dtype))
            value.const_value = value_tensor
            graph.register_initializer(value)
        inputs.append(value)
    replacement = ir.Node(
        MS_DOMAIN,
        "MatMulNBits",
        [node.inputs[0], *inputs],
        attributes=[
            ir.AttrInt64("K", in_features),
            ir.AttrInt64("N", out_features),
            ir.AttrInt64("bits", bits),
            ir.AttrInt64("block_size", GROUP_SIZE),
            ir.AttrInt64("accuracy_level", accuracy_level),
        ],
        name=f"{node.name}_nbits",
    )
    transpose = node.inputs[1].producer() if node.op_type == "MatMul" else None
    ir.convenience.replace_nodes_and_values(
        graph, node, [node], [replacement], list(node.outputs), list(replacement.outputs)
    )
    if transpose is not None and not transpose.outputs[0].uses():
        graph.remove(transpose, safe=True)
    model.opset_imports.setdefault(MS_DOMAIN, 1)
