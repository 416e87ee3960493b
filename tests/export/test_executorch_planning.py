"""The .pte's memory plan (export/executorch.py): a `scan` body's carries and captured inputs are the
caller's tensors, not planned a second time; the program computes what eager does."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch._higher_order_ops.scan import scan

from export.executorch import save_pte

ROWS, WIDTH = 64, 256  # the captured matrix: 64 KiB of float32


class RunningMax(nn.Module):
    """For each step's index, the running maximum over the rows of a captured matrix it names:
    a scan with a carry [WIDTH], xs [steps] and the matrix [ROWS, WIDTH] as an additional input."""

    def forward(self, matrix: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
        def step(best: Tensor, row: Tensor) -> tuple[Tensor, Tensor]:
            best = torch.maximum(best, matrix.index_select(0, row.reshape(1))[0])
            return best.clone(), best * 2

        return scan(step, torch.full((WIDTH,), -1e9), order)


def planned_bytes(path) -> int:
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(path.read_bytes()).program
    return sum(program.execution_plan[0].non_const_buffer_sizes)


def test_scan_inputs_are_not_planned_twice(tmp_path, monkeypatch):
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.runtime import Runtime

    import export.executorch as executorch_export

    matrix, order = torch.randn(ROWS, WIDTH), torch.tensor([3, 17, 5, 63, 0, 17])
    program = torch.export.export(RunningMax(), (matrix, order), strict=False)
    ours = save_pte(program, tmp_path / "ours.pte")
    monkeypatch.setattr(executorch_export, "_scan_aware_planning", lambda: MemoryPlanningPass(share_mutable_buffers=True))
    stock = save_pte(program, tmp_path / "stock.pte")
    # The stock plan holds the matrix once more, for the body's placeholder (give or take how the
    # greedy placement packs the rest).
    assert planned_bytes(stock) - planned_bytes(ours) >= 0.9 * matrix.nbytes

    expected = RunningMax()(matrix, order)
    for path in (ours, stock):
        outputs = Runtime.get().load_program(path).load_method("forward").execute([matrix, order])
        for got, want in zip(outputs, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
