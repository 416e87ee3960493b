"""save_onnx: contract names, renamed dynamic dimensions, external weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.export import Dim

from export.onnx import save_onnx


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # x [1, T, 64]
        return self.linear(x), x[:, 1:]


def _program():
    example = torch.randn(1, 5, 64)
    return torch.export.export(Scale().eval(), (example,), dynamic_shapes=({1: Dim("T", min=3, max=64)},), strict=False)


def _dims(value):
    return [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in value.type.tensor_type.shape.dim]


def test_names_and_dimension_names(tmp_path):
    path = save_onnx(
        _program(),
        tmp_path / "scale.onnx",
        input_names=["hidden"],
        output_names=["scaled", "tail"],
        dim_names={"hidden": {1: "sequence_length"}},
    )
    model = onnx.load(str(path))
    assert [(value.name, _dims(value)) for value in model.graph.input] == [("hidden", [1, "sequence_length", 64])]
    assert [(value.name, _dims(value)) for value in model.graph.output] == [
        ("scaled", [1, "sequence_length", 64]),
        ("tail", [1, "sequence_length - 1", 64]),
    ]


def test_external_data_is_written_beside_the_graph_and_loads(tmp_path):
    program = _program()
    path = save_onnx(program, tmp_path / "scale.onnx", external_data=True)
    assert (tmp_path / "scale.onnx.data").stat().st_size >= 64 * 64 * 4
    session = ort.InferenceSession(str(path))
    x = np.random.default_rng(0).standard_normal((1, 7, 64), dtype=np.float32)
    (scaled, _) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(scaled, program.module()(torch.from_numpy(x))[0].detach().numpy(), atol=1e-6)
