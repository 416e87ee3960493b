"""Checks of the exported graphs against the artifact contract (export/ARTIFACTS.md).

Run after every export: the interface (names, input and output counts), the static keep count R
of `kept_indices` and `selection_order`, and the presence of the selection where its method loops (VLM-Pruner's greedy
passes in the prefill, DivPrune's in the vision encoder, are `scan` loops: torch's higher-order
`scan`, ONNX `Scan`; `SelectionMethod.loops`), and no loop elsewhere. No numerics here: those are the parity
check's (`runtime.parity`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.export import ExportedProgram

from export.graphs import GraphSpec
from runtime.contract import PTE_METADATA, SELECTION_OUTPUTS

# ONNX ops that can carry the selection's loops.
_ONNX_LOOP_OPS = frozenset({"Scan", "Loop"})
# ExecuTorch's ScalarType code of int64.
_ET_INT64 = 4


class ExportCheckError(RuntimeError):
    """An exported graph that does not match the artifact contract."""


def count_scans(program: ExportedProgram) -> int:
    """Number of higher-order `scan` calls in the top-level graph of `program`."""
    return sum(
        1
        for node in program.graph.nodes
        if node.op == "call_function" and node.target is torch.ops.higher_order.scan
    )


def check_program(program: ExportedProgram, graph: GraphSpec, *, loops: bool) -> None:
    """The traced program of `graph`: it holds the selection's scans if `loops`, none otherwise."""
    scans = count_scans(program)
    if loops and scans == 0:
        raise ExportCheckError(f"the {graph.name} program holds no scan: the selection is not in the graph")
    if not loops and scans:
        raise ExportCheckError(f"{graph.name} holds {scans} scans, expected none (no selection loop)")


def check_onnx(path: Path, graph: GraphSpec, *, keep: int, loops: bool) -> None:
    """ONNX checker, input and output names, static [R] selection outputs, loops in a pruned prefill."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as error:
        raise ExportCheckError(f"{path} is not a valid ONNX model: {error}") from None
    model = onnx.load(str(path), load_external_data=False)
    inputs = tuple(value.name for value in model.graph.input)
    outputs = tuple(value.name for value in model.graph.output)
    if inputs != graph.input_names:
        raise ExportCheckError(f"{path}: inputs {list(inputs)}, the contract says {list(graph.input_names)}")
    if outputs != graph.output_names:
        raise ExportCheckError(f"{path}: outputs {list(outputs)}, the contract says {list(graph.output_names)}")
    count = sum(1 for node in model.graph.node if node.op_type in _ONNX_LOOP_OPS)
    if loops and count == 0:
        raise ExportCheckError(f"{path}: no Scan/Loop node: the selection is missing")
    if not loops and count:
        raise ExportCheckError(f"{path}: {count} Scan/Loop nodes, expected none (no selection loop)")
    for value in model.graph.output:
        if value.name not in SELECTION_OUTPUTS:
            continue
        dims = [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in value.type.tensor_type.shape.dim]
        if dims != [keep] or value.type.tensor_type.elem_type != onnx.TensorProto.INT64:
            raise ExportCheckError(
                f"{path}: {value.name} is {dims} of type {value.type.tensor_type.elem_type}, expected int64 [{keep}]"
            )


def check_pte(path: Path, graphs: tuple[GraphSpec, ...], *, keep: int) -> None:
    """The .pte loads, has exactly the methods of `graphs` and the runner metadata methods, the
    contract's input and output counts, and static int64 [R] selection outputs wherever the
    contract has them."""
    from executorch.runtime import Runtime

    try:
        program = Runtime.get().load_program(path)
    except Exception as error:  # the pybindings raise RuntimeError or ValueError
        raise ExportCheckError(f"ExecuTorch cannot load {path}: {error}") from None
    expected_methods = {graph.name for graph in graphs} | set(PTE_METADATA)
    if set(program.method_names) != expected_methods:
        raise ExportCheckError(f"{path}: methods {sorted(program.method_names)}, the contract says {sorted(expected_methods)}")
    for graph in graphs:
        meta = program.metadata(graph.name)
        counts = (meta.num_inputs(), meta.num_outputs())
        expected = (len(graph.input_names), len(graph.output_names))
        if counts != expected:
            raise ExportCheckError(
                f"{path}: method {graph.name} takes {counts[0]} and returns {counts[1]} tensors, "
                f"the contract says {expected[0]} and {expected[1]}"
            )
    for graph in graphs:
        for name in set(SELECTION_OUTPUTS) & set(graph.output_names):
            meta = program.metadata(graph.name).output_tensor_meta(graph.output_names.index(name))
            if tuple(meta.sizes()) != (keep,) or meta.dtype() != _ET_INT64:
                raise ExportCheckError(f"{path}: {graph.name}'s {name} is {meta}, expected int64 [{keep}]")

