"""ExportedProgram -> .onnx file, through torch's dynamo-based exporter."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch.export import ExportedProgram

OPSET = 18


def save_onnx(
    program: ExportedProgram,
    path: Path,
    *,
    weights: Callable[[object], None] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dim_names: Mapping[str, Mapping[int, str]] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Translate an exported program to ONNX (opset 18; the models' own ops as `export.onnx_ops`
    translates them) and write it to `path`.

    The onnxscript graph optimizer is skipped: its pattern rewriter is superlinear in graph size,
    and ONNX Runtime optimizes the graph at session creation anyway. RMS norms are written in the
    form its optimizer fuses (`_rms_norms_as_division`).

    Args:
        weights: gives the onnx_ir model its weights before it is written (see
            `export.onnx_weights.attach_weights`); default: the program's own, inside the .onnx file.
        input_names, output_names: names of the flattened inputs and outputs; default torch's.
        dim_names: {input name: {axis: name}} for the dynamic axes. The exporter names them after
            its symbols (`s29`); they are renamed in every shape of the graph, so that an output
            reads e.g. `sequence_length - 512`.
        metadata: the model's `metadata_props`: facts the shapes cannot carry (the bounds of the
            dynamic dimensions), which the runtime checks the manifest against.
    """
    _require_onnxscript()
    from export.onnx_ops import TRANSLATIONS

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program = torch.onnx.export(
        program,
        dynamo=True,
        opset_version=OPSET,
        optimize=False,
        verbose=False,
        input_names=input_names,
        output_names=output_names,
        custom_translation_table=TRANSLATIONS,
    )
    if dim_names:
        _rename_dims(onnx_program.model, dim_names)
    onnx_program.model.metadata_props.update(metadata or {})
    _rms_norms_as_division(onnx_program.model)
    if weights is None:
        onnx_program.save(str(path))
    else:
        import onnx_ir as ir

        weights(onnx_program.model)
        ir.save(onnx_program.model, path)
    return path


def _rms_norms_as_division(model) -> None:
    """Mul(x, Reciprocal(Sqrt(v))) -> Div(x, Sqrt(v)), in place (onnx_ir model).

    torch's exporter writes an RMS norm's rsqrt as Reciprocal(Sqrt) and a Mul; ONNX Runtime's
    optimizer fuses Pow, ReduceMean, Add, Sqrt, Div, Mul into one SimplifiedLayerNormalization
    when a session opens, and the Reciprocal form not at all: seven nodes a norm, 65 norms a 7B
    decode step (README). The graph stays standard ONNX; a runtime that does not fuse divides.
    """
    import onnx_ir as ir

    graph = model.graph
    for node in list(graph):
        sqrt = node.inputs[0].producer() if node.op_type == "Reciprocal" else None
        uses = node.outputs[0].uses() if sqrt is not None and sqrt.op_type == "Sqrt" else []
        if len(uses) != 1 or uses[0].node.op_type != "Mul":
            continue
        mul = uses[0].node
        x = mul.inputs[1 - uses[0].idx]
        division = ir.Node("", "Div", [x, node.inputs[0]], name=f"{mul.name}_div")
        ir.convenience.replace_nodes_and_values(graph, mul, [mul, node], [division], mul.outputs, division.outputs)


def _require_onnxscript() -> None:
    try:
        import onnxscript  # noqa: F401  (torch's exporter imports it lazily; fail early with a hint)
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export needs onnxscript and onnx: run `make setup`") from error


def _rename_dims(model, dim_names: Mapping[str, Mapping[int, str]]) -> None:
    """Rename the exporter's symbols of the dynamic input axes in every value's shape (onnx_ir model)."""
    import onnx_ir as ir

    graph = model.graph
    renames = {}
    for value in graph.inputs:
        for axis, name in dim_names.get(value.name, {}).items():
            dim = value.shape[axis] if value.shape is not None else None
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
                renames[dim.value] = name
    if not renames:
        return
    pattern = re.compile(r"\b(" + "|".join(re.escape(symbol) for symbol in renames) + r")\b")

    def rename(value: ir.Value) -> None:
        if value.shape is None:
            return
        dims = [
            ir.SymbolicDim(pattern.sub(lambda m: renames[m.group(0)], dim.value))
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None
            else dim
            for dim in value.shape
        ]
        value.shape = ir.Shape(dims)

    for value in (*graph.inputs, *graph.outputs):
        rename(value)
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for value in node.outputs:
            rename(value)
