"""Weights into hollow ONNX graphs: quantized linears as MatMulNBits, one shared data file, each tensor once.

Each graph is traced from a hollow module (storage allocated, never written) wrapped as
export.graphs wraps the model, and gets the weights of a materialized twin, as in
`ExportPipeline.to_onnx`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.export import Dim

from export.onnx import save_onnx
from export.onnx_weights import ALIGNMENT, WeightFile, attach_weights
from runtime.contract import ONNX_WEIGHTS_FILE
from models.quantize import GROUP_SIZE, Quantization, quantize_block, weight_only
from tests.quantization import BITS

QUANTIZED = (Quantization.INT4, Quantization.INT8)


class TwoLinears(nn.Module):
    """Two linears, K = 64 and 96 (multiples of the group size)."""

    def __init__(self, bias: bool):
        super().__init__()
        self.fc1 = nn.Linear(2 * GROUP_SIZE, 3 * GROUP_SIZE, bias=bias)
        self.fc2 = nn.Linear(3 * GROUP_SIZE, 32, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class Graph(nn.Module):
    """The model under another attribute name, as export.graphs' modules hold it: other initializer names."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.inner(*inputs)


@dataclass(frozen=True)
class Case:
    """A linear layout: 3-D input with bias (the exporter writes MatMul(x, Transpose(W))), 2-D without (Gemm)."""

    name: str
    bias: bool
    shape: tuple[int, ...]
    ops: list[str]

    def example(self, seed: int) -> torch.Tensor:
        return torch.randn(*self.shape, generator=torch.Generator().manual_seed(seed)) * 3

    @property
    def dynamic_shapes(self) -> tuple[dict[int, Dim], ...] | None:
        return ({1: Dim("T", min=2, max=64)},) if len(self.shape) == 3 else None


MATMUL = Case(
    "matmul", bias=True, shape=(1, 5, 2 * GROUP_SIZE), ops=["Transpose", "MatMul", "Add", "Relu", "Transpose", "MatMul"]
)
GEMM = Case("gemm", bias=False, shape=(3, 2 * GROUP_SIZE), ops=["Gemm", "Relu", "Gemm"])
CASES = (MATMUL, GEMM)


def named_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]


def model_pair(
    case: Case, quantization: Quantization, module: Callable[[bool], nn.Module] = TwoLinears
) -> tuple[nn.Module, nn.Module]:
    """(materialized `module(case.bias)`, its linears quantized as the LM head's; hollow twin)."""
    torch.manual_seed(0)
    real = module(case.bias).eval().requires_grad_(False)
    quantize_block("lm_head", real, quantization)
    with torch.device("meta"):
        hollow = module(case.bias)
    return real, hollow.to_empty(device="cpu").eval().requires_grad_(False)


def export_graph(
    real: nn.Module,
    hollow: nn.Module,
    case: Case,
    path: Path,
    store: WeightFile | None,
    *,
    inputs: int = 1,
    profile: str = "exact",
) -> Path:
    """The hollow model's graph with the real model's weights in `store` (None: the exporter's own
    weights), taking `inputs` inputs shaped like `case.example`."""
    graph = Graph(hollow)
    example = tuple(case.example(0) for _ in range(inputs))  # distinct tensors: one alias is one input
    dims = (case.dynamic_shapes * inputs,) if case.dynamic_shapes else None  # one entry: Graph's *inputs
    program = torch.export.export(graph, example, dynamic_shapes=dims, strict=False)
    if store is None:
        return save_onnx(program, path)
    canonical = {id(tensor): name for name, tensor in named_tensors(hollow)}
    names = {name: canonical[id(tensor)] for name, tensor in named_tensors(graph)}
    weights = partial(attach_weights, weights=dict(named_tensors(real)), names=names, store=store, profile=profile)
    return save_onnx(program, path, weights=weights)


def run(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path))
    (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return output


def external_entries(path: Path) -> dict[str, dict[str, str]]:
    """{initializer name: its external data entry} of the graph at `path`; {} for an embedded one."""
    model = onnx.load(str(path), load_external_data=False)
    return {
        tensor.name: {entry.key: entry.value for entry in tensor.external_data}
        for tensor in model.graph.initializer
    }


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_exporter_writes_linears_as_matmul_or_gemm(case, tmp_path):
    real, hollow = model_pair(case, Quantization.NONE)
    path = export_graph(real, hollow, case, tmp_path / "plain.onnx", store=None)
    assert [node.op_type for node in onnx.load(str(path)).graph.node] == case.ops


@pytest.mark.parametrize("quantization", QUANTIZED)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_quantized_linears_become_matmul_nbits(case, quantization, tmp_path):
    real, hollow = model_pair(case, quantization)
    with WeightFile(tmp_path) as store:
        path = export_graph(real, hollow, case, tmp_path / "model.onnx", store)

    model = onnx.load(str(path), load_external_data=False)
    nbits = [node for node in model.graph.node if node.op_type == "MatMulNBits"]
    assert [node.domain for node in nbits] == ["com.microsoft"] * 2
    attributes = [{a.name: a.i for a in node.attribute} for node in nbits]
    common = {"bits": BITS[quantization], "block_size": GROUP_SIZE, "accuracy_level": 0}
    assert attributes == [{"K": 64, "N": 96, **common}, {"K": 96, "N": 32, **common}]
    assert not {"MatMul", "Gemm", "Transpose"} & {node.op_type for node in model.graph.node}
    entries = external_entries(path)
    assert not {"inner.fc1.weight", "inner.fc2.weight"} & set(entries)
    assert all(entry["location"] == ONNX_WEIGHTS_FILE for entry in entries.values())

    x = case.example(1)
    with weight_only(real):
        expected = real(x).numpy()
    np.testing.assert_allclose(run(path, x), expected, atol=1e-5 * np.abs(expected).max(), rtol=0)


class SharedLinear(TwoLinears):
    """fc1 applied twice (as FastV reapplies layer K-1's q_proj to the last token)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))) + self.fc2(self.fc1(x[..., -1:, :]))


@pytest.mark.parametrize("quantization", QUANTIZED)
def test_a_quantized_weight_used_twice_has_one_initializer(quantization, tmp_path):
    real, hollow = model_pair(MATMUL, quantization, SharedLinear)
    with WeightFile(tmp_path) as store:
        path = export_graph(real, hollow, MATMUL, tmp_path / "model.onnx", store)

    model = onnx.load(str(path), load_external_data=False)
    assert sum(node.op_type == "MatMulNBits" for node in model.graph.node) == 4
    names = [tensor.name for tensor in model.graph.initializer]
    assert len(names) == len(set(names)) and sum(".q" in name for name in names) == 2
    x = MATMUL.example(1)
    with weight_only(real):
        expected = real(x).numpy()
    np.testing.assert_allclose(run(path, x), expected, atol=1e-5 * np.abs(expected).max(), rtol=0)


@pytest.mark.parametrize("quantization", QUANTIZED)
def test_matmul_nbits_holds_the_torchao_codes_and_scales(quantization, tmp_path):
    real, hollow = model_pair(GEMM, quantization)
    with WeightFile(tmp_path) as store:
        path = export_graph(real, hollow, GEMM, tmp_path / "model.onnx", store)
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor, base_dir=str(tmp_path)) for tensor in graph.initializer}
    weight = real.fc2.weight
    packed = initializers[f"inner.fc2.weight.q{BITS[quantization]}"]
    assert packed.dtype == np.uint8 and packed.shape == (32, 3, GROUP_SIZE * BITS[quantization] // 8)
    if quantization is Quantization.INT4:  # two codes a byte, low nibble first
        packed = np.stack([packed & 0x0F, packed >> 4], axis=-1)
    codes = packed.reshape(32, 96).astype(np.int16) - (1 << (BITS[quantization] - 1))
    np.testing.assert_array_equal(codes, weight.qdata.numpy())
    np.testing.assert_array_equal(initializers["inner.fc2.weight.scales"], weight.scale.reshape(-1).numpy())


def test_graphs_sharing_a_weight_file_store_each_tensor_once(tmp_path):
    real, hollow = model_pair(MATMUL, Quantization.INT4)
    with WeightFile(tmp_path / "one") as store:
        export_graph(real, hollow, MATMUL, tmp_path / "one" / "a.onnx", store)
    with WeightFile(tmp_path / "two") as store:
        first = export_graph(real, hollow, MATMUL, tmp_path / "two" / "a.onnx", store)
        second = export_graph(real, hollow, MATMUL, tmp_path / "two" / "b.onnx", store)

    assert (tmp_path / "two" / ONNX_WEIGHTS_FILE).stat().st_size == (tmp_path / "one" / ONNX_WEIGHTS_FILE).stat().st_size
    assert external_entries(first) == external_entries(second)
    x = MATMUL.example(1)
    np.testing.assert_array_equal(run(first, x), run(second, x))


def test_float_weights_are_external_and_exact(tmp_path):
    real, hollow = model_pair(MATMUL, Quantization.NONE)
    with WeightFile(tmp_path) as store:
        path = export_graph(real, hollow, MATMUL, tmp_path / "model.onnx", store)

    entries = external_entries(path)
    assert set(entries) == {"inner.fc1.weight", "inner.fc1.bias", "inner.fc2.weight"}
    assert all(entry["location"] == ONNX_WEIGHTS_FILE for entry in entries.values())
    assert all(int(entry.get("offset", 0)) % ALIGNMENT == 0 for entry in entries.values())
    weight_bytes = sum(tensor.numel() * 4 for _, tensor in named_tensors(real))
    assert path.stat().st_size < weight_bytes <= (tmp_path / ONNX_WEIGHTS_FILE).stat().st_size
    x = MATMUL.example(1)
    np.testing.assert_allclose(run(path, x), real(x).numpy(), atol=1e-6, rtol=0)


def test_weight_file_writes_a_key_once_at_aligned_offsets(tmp_path):
    calls = []

    def make(array: np.ndarray):
        def produce() -> np.ndarray:
            calls.append(array)
            return array

        return produce

    a, b = np.arange(10, dtype=np.float32), np.arange(6, dtype=np.uint8).reshape(2, 3)
    with WeightFile(tmp_path) as store:
        first = store.tensor("a", "graph1.a", make(a))
        again = store.tensor("a", "graph2.a", make(a))
        other = store.tensor("b", "graph1.b", make(b))
    assert len(calls) == 2
    assert (first.offset, again.offset, other.offset) == (0, 0, ALIGNMENT)
    assert (first.name, again.name) == ("graph1.a", "graph2.a")
    assert (tmp_path / ONNX_WEIGHTS_FILE).stat().st_size == ALIGNMENT + b.nbytes
    np.testing.assert_array_equal(again.numpy(), a)
    np.testing.assert_array_equal(other.numpy(), b)
    assert tuple(other.shape) == (2, 3)


class Projections(nn.Module):
    """q, k, v of one input, as an attention block reads its normed input; `apart`: each of its own
    input (three graph inputs, fed the same values), so that the exporter cannot join them."""

    def __init__(self, bias: bool, apart: bool = False):
        super().__init__()
        self.q = nn.Linear(2 * GROUP_SIZE, 3 * GROUP_SIZE, bias=bias)
        self.k = nn.Linear(2 * GROUP_SIZE, GROUP_SIZE, bias=False)
        self.v = nn.Linear(2 * GROUP_SIZE, GROUP_SIZE, bias=bias)
        self.inputs = 3 if apart else 1

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(linear(inputs[i % len(inputs)]) for i, linear in enumerate((self.q, self.k, self.v)))


def export_projections(case: Case, quantization: Quantization, profile: str, apart: bool, folder: Path) -> Path:
    real, hollow = model_pair(case, quantization, partial(Projections, apart=apart))
    with WeightFile(folder) as store:
        return export_graph(real, hollow, case, folder / "model.onnx", store, inputs=hollow.inputs, profile=profile)


@pytest.mark.parametrize("profile", ["exact", "fast"])
@pytest.mark.parametrize("quantization", QUANTIZED)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_linears_reading_one_input_become_one_matmul_nbits_bit_for_bit(case, quantization, profile, tmp_path):
    joined = export_projections(case, quantization, profile, apart=False, folder=tmp_path / "joined")
    apart = export_projections(case, quantization, profile, apart=True, folder=tmp_path / "apart")

    nodes = onnx.load(str(joined), load_external_data=False).graph.node
    nbits = [node for node in nodes if node.op_type == "MatMulNBits"]
    assert len(nbits) == 1 and {a.name: a.i for a in nbits[0].attribute}["N"] == 5 * GROUP_SIZE
    assert [node.op_type for node in nodes].count("Split") == 1
    assert sum(node.op_type == "MatMulNBits" for node in onnx.load(str(apart), load_external_data=False).graph.node) == 3
    entries = external_entries(joined)
    codes = f".q{BITS[quantization]}"
    assert {name for name in entries if name.endswith(codes)} == {f"inner.q.weight+inner.k.weight+inner.v.weight{codes}"}

    # At accuracy level 4 ONNX Runtime folds a bias Add into the MatMulNBits before it (its own order
    # of sums, last bits), which it cannot after the Split: q and v, with bias, are only close there.
    close = {"q", "v"} if case.bias and profile == "fast" else set()
    for rows in (1, 5) if case.dynamic_shapes else (case.shape[0],):
        x = torch.randn(*case.shape[:-2], rows, case.shape[-1], generator=torch.Generator().manual_seed(1)) * 3
        sessions = [ort.InferenceSession(str(path)) for path in (joined, apart)]
        outputs = [session.run(None, {i.name: x.numpy() for i in session.get_inputs()}) for session in sessions]
        for name, fused, alone in zip("qkv", *outputs):
            if name in close:
                np.testing.assert_allclose(fused, alone, rtol=0, atol=1e-6 * np.abs(alone).max())
            else:
                np.testing.assert_array_equal(fused, alone)
