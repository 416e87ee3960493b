"""save_onnx: contract names, renamed dynamic dimensions, the weights callback."""

from __future__ import annotations

from functools import partial

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.export import Dim

from export.onnx import save_onnx
from export.onnx_weights import WeightFile, attach_weights
from runtime.contract import ONNX_WEIGHTS_FILE


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


def test_weights_callback_gets_the_model_before_it_is_written(tmp_path):
    module = Scale().eval().requires_grad_(False)
    program = torch.export.export(module, (torch.randn(1, 5, 64),), strict=False)
    names = {name: name for name, _ in module.named_parameters()}
    with WeightFile(tmp_path) as store:
        path = save_onnx(
            program,
            tmp_path / "scale.onnx",
            weights=partial(attach_weights, weights=dict(module.named_parameters()), names=names, store=store),
        )
    assert path.stat().st_size < 64 * 64 * 4 <= (tmp_path / ONNX_WEIGHTS_FILE).stat().st_size
    session = ort.InferenceSession(str(path))
    x = np.random.default_rng(0).standard_normal((1, 5, 64), dtype=np.float32)
    (scaled, _) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(scaled, module(torch.from_numpy(x))[0].numpy(), atol=1e-6)


def test_weights_stay_inside_the_graph_by_default(tmp_path):
    path = save_onnx(_program(), tmp_path / "scale.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["scale.onnx"]
    assert path.stat().st_size >= 64 * 64 * 4


class NormedBlock(nn.Module):
    """A decoder layer's shape: RMS norm, linear, residual add, RMS norm (transformers' LlamaRMSNorm)."""

    def __init__(self):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        self.norms = nn.ModuleList(LlamaRMSNorm(64, eps=1e-5) for _ in range(2))
        self.linear = nn.Linear(64, 64, bias=False)
        for norm in self.norms:
            nn.init.uniform_(norm.weight, 0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [1, T, 64]
        h = x + self.linear(self.norms[0](x))
        return self.norms[1](h)


def test_rms_norms_are_fused_by_onnx_runtime(tmp_path):
    block = NormedBlock().eval()
    program = torch.export.export(block, (torch.randn(1, 5, 64),), dynamic_shapes=({1: Dim("T", min=2, max=64)},), strict=False)
    path = save_onnx(program, tmp_path / "block.onnx")
    assert not {"Reciprocal"} & {node.op_type for node in onnx.load(str(path)).graph.node}

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), options)
    optimized = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    assert optimized.count("SimplifiedLayerNormalization") == 2
    assert not {"Pow", "ReduceMean", "Sqrt", "Div"} & set(optimized)
    x = torch.randn(1, 7, 64, generator=torch.Generator().manual_seed(1))
    (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(output, block(x).detach().numpy(), atol=1e-5, rtol=0)
