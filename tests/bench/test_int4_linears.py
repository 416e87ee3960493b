"""make bench-linears measures the toolchain's own quantized linears: each backend's graph computes
what the eager quantized module computes (ONNX Runtime exact: weight-only, bit-close; fast: int8
activations, close; ExecuTorch: 8da4w)."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from bench.int4_linears import PROFILES, Linears, executorch_run, onnx_runs
from models.quantize import is_quantized, weight_only
from models.registry import get_spec


def test_each_backend_computes_the_quantized_linears(tmp_path):
    module = Linears(get_spec("tiny-llava").text, layers=2).eval().requires_grad_(False)
    runs = onnx_runs(module, tmp_path)
    assert all(is_quantized(p) for p in module.parameters())
    # Per layer: q, k, v joined into one MatMulNBits, o, gate and up joined, down; none across layers.
    for profile in PROFILES.values():
        graph = onnx.load(str(tmp_path / f"{profile}.onnx"), load_external_data=False).graph
        assert [node.op_type for node in graph.node].count("MatMulNBits") == 2 * 4
    inputs = module.example_inputs()
    exact_label, fast_label = PROFILES
    with weight_only(module):
        weight_only_outputs = module(*inputs)
    dynamic_outputs = module(*inputs)
    assert len(weight_only_outputs) == 2 * 7
    for exact, fast, expected in zip(runs[exact_label](), runs[fast_label](), weight_only_outputs):
        np.testing.assert_allclose(exact, expected.numpy(), atol=1e-5, rtol=1e-5)
        # int8 activations per block: within a few percent of the largest output, not equal.
        assert 0 < np.abs(fast - expected.numpy()).max() < 0.05 * np.abs(expected.numpy()).max()
    for got, expected in zip(executorch_run(module, tmp_path)(), dynamic_outputs):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
