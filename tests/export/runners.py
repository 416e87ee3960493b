"""Run an artifact's graphs directly on ONNX Runtime or the ExecuTorch runtime, numpy in and out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.contract import GRAPH_NAMES, PTE_PATH, onnx_file


class OnnxGraphs:
    """One ONNX Runtime session per graph, inputs given positionally in the contract's order."""

    def __init__(self, artifact_dir: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._sessions = {
            name: ort.InferenceSession(str(artifact_dir / onnx_file(name)), options) for name in GRAPH_NAMES
        }

    def run(self, graph: str, *inputs: np.ndarray) -> list[np.ndarray]:
        session = self._sessions[graph]
        return session.run(None, {value.name: x for value, x in zip(session.get_inputs(), inputs)})


class PteGraphs:
    """The .pte's methods on the ExecuTorch runtime."""

    def __init__(self, artifact_dir: Path):
        from executorch.runtime import Runtime

        self._program = Runtime.get().load_program(artifact_dir / PTE_PATH)
        self._methods = {}

    def run(self, graph: str, *inputs: np.ndarray) -> list[np.ndarray]:
        import torch

        if graph not in self._methods:
            self._methods[graph] = self._program.load_method(graph)
        outputs = self._methods[graph].execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        # Outputs may live in the method's planned memory, which its next call overwrites.
        return [output.numpy().copy() for output in outputs]


def open_graphs(artifact_dir: Path, backend: str) -> OnnxGraphs | PteGraphs:
    return OnnxGraphs(artifact_dir) if backend == "onnx" else PteGraphs(artifact_dir)

