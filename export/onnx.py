"""ExportedProgram -> .onnx file, through torch's dynamo-based exporter."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.export import ExportedProgram

OPSET = 18


def save_onnx(program: ExportedProgram, path: Path, *, external_data: bool = False) -> Path:
    """Translate an exported program to ONNX (opset 18) and write it to `path`.

    The onnxscript graph optimizer is skipped: its pattern rewriter is superlinear in graph size,
    and ONNX Runtime optimizes the graph at session creation anyway.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program = torch.onnx.export(program, dynamo=True, opset_version=OPSET, optimize=False, verbose=False)
    onnx_program.save(str(path), external_data=external_data)
    return path
