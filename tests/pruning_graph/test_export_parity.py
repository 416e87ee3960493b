"""The exported VLMPrunerSelect, run by ONNX Runtime and by the ExecuTorch runtime, against eager.

One export per shape (grid, widths, keep, config); every generated image of that shape runs
through it (`VLMPrunerSelect.ordered`). Indices and selection order must be identical, fused
states within 1e-5. ONNX Runtime runs every shape; ExecuTorch, whose lowering takes 15-20 s per
shape, runs the shapes of `EXECUTORCH_SHAPES` (the paper's headline keep, the extreme keep counts,
the config whose final pass runs, two views): the op set is the same for every shape, only the
constants differ. One shape more is exported with the selection's blocks made small
(`BLOCKED`), so that the blocked paths that real sizes take (thousands of tokens) run on both
backends here.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.executorch import save_pte
from export.onnx import save_onnx
from pruning_graph import VLMPrunerConfig, VLMPrunerSelect
from tests.pruning_graph.cases import CONFIGS, MULTI_VIEWS, all_cases, multi_view_cases
from tests.pruning_graph.ordered import Ordered

# (grid, d, keep, config): the LLaVA-1.5 grid at every keep count of the paper and the extremes,
# the other grids once each, the config whose final +inf pass runs, and LLaVA-NeXT's two views.
SHAPES = [((24, 24), 384, keep, VLMPrunerConfig()) for keep in (1, 4, 64, 128, 192, 575, 576)] + [
    ((12, 12), 96, 64, VLMPrunerConfig()),
    ((16, 20), 384, 192, VLMPrunerConfig()),
    ((7, 13), 96, 90, VLMPrunerConfig()),
    ((24, 24), 384, 192, CONFIGS[0]),
    (MULTI_VIEWS[0], 96, 64, VLMPrunerConfig()),
]
ALL_CASES = all_cases() + multi_view_cases()
# keep 1, 64 and 575 on LLaVA-1.5's grid, the config whose final +inf pass runs, two views.
EXECUTORCH_SHAPES = [SHAPES[i] for i in (0, 2, 5, 10, 11)]
# Two views exported with float64 blocks of 2 KiB (2 keys, a few channels) and pass-start blocks of
# 5 tokens (by default 8 MiB blocks beyond 24 MiB, and 256 tokens).
BLOCKED = (MULTI_VIEWS[0], 96, 64, VLMPrunerConfig())
BLOCK_SIZES = {"WIDEN_BLOCK_BYTES": 2048, "WIDEN_WHOLE_BYTES": 2048, "PASS_ROWS": 5}


def _cases(shape):
    grid, d, keep, config = shape
    return [c for c in ALL_CASES if (c.grid, c.hidden.shape[1], c.keep, c.config) == (grid, d, keep, config)]


def _shape_id(shape) -> str:
    grid, d, keep, config = shape
    views = grid if isinstance(grid[0], tuple) else (grid,)
    return f"{'+'.join(f'{h}x{w}' for h, w in views)}-d{d}-keep{keep}-tau_step{config.tau_step}"


def _program(shape) -> tuple[list, torch.export.ExportedProgram]:
    grid, d, keep, config = shape
    cases = _cases(shape)
    module = Ordered(VLMPrunerSelect(grid, keep, config)).eval()
    return cases, torch.export.export(module, (cases[0].keys, cases[0].hidden), strict=False)


def _blocked_program() -> tuple[list, torch.export.ExportedProgram]:
    from pruning_graph import select

    with pytest.MonkeyPatch.context() as patch:
        for name, size in BLOCK_SIZES.items():
            patch.setattr(select, name, size)
        return _program(BLOCKED)


@pytest.fixture(scope="module", params=SHAPES, ids=_shape_id)
def exported_onnx(request, tmp_path_factory):
    cases, program = _program(request.param)
    return cases, save_onnx(program, tmp_path_factory.mktemp("select") / "select.onnx")


@pytest.fixture(scope="module", params=EXECUTORCH_SHAPES, ids=_shape_id)
def exported_pte(request, tmp_path_factory):
    cases, program = _program(request.param)
    return cases, save_pte(program, tmp_path_factory.mktemp("select") / "select.pte")


def _check(case, indices, fused, order):
    expected_indices, expected_fused, expected_order = VLMPrunerSelect(case.grid, case.keep, case.config).ordered(
        case.keys, case.hidden
    )
    assert torch.equal(torch.as_tensor(indices), expected_indices), case.name
    assert torch.equal(torch.as_tensor(order), expected_order), case.name
    torch.testing.assert_close(torch.as_tensor(fused), expected_fused, atol=1e-5, rtol=0, msg=case.name)


def test_onnx_runtime_matches_eager(exported_onnx):
    cases, path = exported_onnx
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for case in cases:
        indices, fused, order = session.run(None, dict(zip(names, (case.keys.numpy(), case.hidden.numpy()))))
        assert indices.dtype == order.dtype == np.int64 and indices.shape == order.shape == (case.keep,)
        _check(case, indices, fused, order)


def test_executorch_matches_eager(exported_pte):
    from executorch.runtime import Runtime

    cases, path = exported_pte
    method = Runtime.get().load_program(path).load_method("forward")
    for case in cases:
        _check(case, *method.execute([case.keys, case.hidden]))


def test_blocks_on_both_backends(tmp_path):
    """The blocked paths exported to both backends give eager's unblocked result: the blocks change
    no value (`test_parity.test_work_in_blocks` holds eager's blocks to the reference)."""
    from executorch.runtime import Runtime

    cases, program = _blocked_program()
    session = ort.InferenceSession(str(save_onnx(program, tmp_path / "select.onnx")), providers=["CPUExecutionProvider"])
    method = Runtime.get().load_program(save_pte(program, tmp_path / "select.pte")).load_method("forward")
    names = [i.name for i in session.get_inputs()]
    for case in cases:
        _check(case, *session.run(None, dict(zip(names, (case.keys.numpy(), case.hidden.numpy())))))
        _check(case, *method.execute([case.keys, case.hidden]))


def test_graph_is_static(exported_onnx):
    """Nothing in the exported graph depends on data for its shape: R is a constant."""
    cases, path = exported_onnx
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    keep = cases[0].keep
    assert session.get_outputs()[0].shape == [keep]
