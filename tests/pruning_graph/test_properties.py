"""Properties every selection must have, whatever the input."""

from __future__ import annotations

import pytest
import torch

from pruning_graph import VLMPrunerConfig, select_tokens
from pruning_graph.reference import _pivots
from tests.pruning_graph.cases import all_cases

CASES = [c for c in all_cases() if c.keep not in (1, c.grid[0] * c.grid[1])][::3]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_pivots_kept_and_indices_distinct(case):
    indices, _ = select_tokens(case.keys, case.hidden, case.grid, case.keep)
    assert indices.unique().numel() == case.keep
    assert torch.all(indices[1:] > indices[:-1])
    pivots = _pivots(case.keys.double(), min(VLMPrunerConfig().kappa, case.keep))
    assert set(pivots) <= set(indices.tolist())


@pytest.mark.parametrize("grid", [(24, 24), (7, 13)])
def test_keep_all_returns_every_token_unchanged(grid):
    case = next(c for c in all_cases() if c.grid == grid and c.keep == grid[0] * grid[1])
    indices, fused = select_tokens(case.keys, case.hidden, case.grid, case.keep)
    assert torch.equal(indices, torch.arange(case.keep))
    assert torch.equal(fused, case.hidden)


def test_first_pivot_is_largest_l1_key():
    keys = torch.randn(144, 32, generator=torch.Generator().manual_seed(1))
    keys[77] *= 10
    indices, _ = select_tokens(keys, torch.randn(144, 40), (12, 12), 1)
    assert indices.tolist() == [77]


def test_identical_tokens_break_ties_by_lowest_index():
    """All tokens equal: the pivots are tokens 0..3 (every key ties); the next token is the nearest
    to them on the grid, with ties (4 and 12..15 are all at distance 1) to the lowest index."""
    keys = torch.ones(144, 16)
    hidden = torch.ones(144, 24)
    for keep in (1, 4, 5):
        indices, fused = select_tokens(keys, hidden, (12, 12), keep)
        assert indices.tolist() == list(range(keep))
        torch.testing.assert_close(fused, hidden[:keep], atol=1e-6, rtol=0)


def test_half_precision_inputs_return_input_dtype():
    case = next(c for c in all_cases() if c.grid == (12, 12) and c.keep == 64)
    indices, fused = select_tokens(case.keys.half(), case.hidden.half(), case.grid, case.keep)
    assert fused.dtype == torch.float16 and indices.dtype == torch.int64
