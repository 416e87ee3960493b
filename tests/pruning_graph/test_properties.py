"""Properties every selection must have, whatever the input."""

from __future__ import annotations

import math

import pytest
import torch

from pruning_graph import VLMPrunerConfig, VLMPrunerSelect, reference_select, select_tokens
from pruning_graph.definitions import grid_distance, settle
from pruning_graph.reference import _pivots
from pruning_graph.synthetic import make_image
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


@pytest.mark.parametrize("select", [select_tokens, reference_select])
def test_one_view_list_is_the_pair(select):
    keys, hidden = make_image("objects", (12, 12), 64, 96, seed=3)
    pair = select(keys, hidden, (12, 12), 64)
    listed = select(keys, hidden, [(12, 12)], 64)
    assert torch.equal(pair[0], listed[0]) and torch.equal(pair[1], listed[1])
    assert VLMPrunerSelect([(12, 12)], 64).grid == VLMPrunerSelect((12, 12), 64).grid == (12, 12)


def test_views_have_their_own_geometry():
    """LLaVA-NeXT, 2 x 2 tiles: the 24 x 24 base view, then 48 rows of 48 tokens + 1 newline."""
    distance = grid_distance(((24, 24), (48, 49)))  # [2928, 2928]
    base, tiles = 24 * 24, math.sqrt(48**2 + 49**2)
    one = torch.ones((), dtype=torch.float64)
    assert distance[0, 575] == settle(one * math.sqrt(2 * 23**2) / math.sqrt(2 * 24**2))
    assert distance[base + 48, base] == settle(one * 48 / tiles)  # a row's newline to its first token
    assert distance[base + 49, base] == settle(one / tiles)  # the next row starts below
    assert torch.isinf(distance[:base, base:]).all() and torch.isinf(distance[base:, :base]).all()
    assert distance[base:, base:].max() < 1
