"""select_tokens (static shapes) against reference_select (readable), on the generated cases."""

from __future__ import annotations

import pytest
import torch

from pruning_graph import VLMPrunerConfig, VLMPrunerSelect, reference_order, reference_select, select_tokens
from pruning_graph.definitions import channel_spread, cosine_similarity_matrix, grid_distance, similarity_float32
from pruning_graph.reference import _greedy_fill, _pivots, _screened_channels
from pruning_graph.static_ops import order_ascending
from pruning_graph.validation import check_grid_and_keep
from tests.pruning_graph.cases import all_cases, multi_view_cases

CASES = all_cases()
MULTI_VIEW_CASES = multi_view_cases()


def test_case_count():
    assert len(CASES) >= 200


@pytest.mark.parametrize("case", CASES + MULTI_VIEW_CASES, ids=lambda c: c.name)
def test_static_matches_reference(case):
    ref_indices, ref_fused = reference_select(case.keys, case.hidden, case.grid, case.keep, case.config)
    indices, fused = select_tokens(case.keys, case.hidden, case.grid, case.keep, case.config)
    assert indices.dtype == torch.int64 and indices.shape == (case.keep,)
    assert torch.equal(indices, ref_indices)
    # rtol: torch's float32 default. At keep 1 a fused state sums ~575 states, in another order than
    # the reference's (1.0e-5 apart at magnitude 5 on an AVX-512/AMX machine).
    torch.testing.assert_close(fused, ref_fused, atol=1e-5, rtol=1.3e-6)
    _, _, order = VLMPrunerSelect(case.grid, case.keep, case.config).ordered(case.keys, case.hidden)
    assert torch.equal(order, reference_order(case.keys, case.hidden, case.grid, case.keep, case.config))


def _passes_run(case) -> int:
    keys, states = case.keys.double(), case.hidden.double()
    similarity = cosine_similarity_matrix(states[:, _screened_channels(states, case.config.q)])
    distance = grid_distance(check_grid_and_keep(case.grid, case.keep))
    selected = _pivots(keys, min(case.config.kappa, case.keep))
    return _greedy_fill(selected, similarity, distance, case.keep, case.config)


def test_cases_exercise_several_passes():
    """The suite means something only if later passes, and the final +inf pass, really run."""
    default = [_passes_run(c) for c in CASES if c.keep in (64, 128, 192) and c.config == VLMPrunerConfig()]
    assert max(default) >= 4
    assert sum(p >= 3 for p in default) >= 10
    coarse = next(c for c in CASES if c.config.tau_step == 1.0 and c.keep == 192)
    assert len(coarse.config.thresholds()) == 2
    assert _passes_run(coarse) == 2  # the +inf pass ran


def test_channel_spread_ranks_like_unbiased_variance():
    hidden = torch.randn(50, 300, generator=torch.Generator().manual_seed(0))
    assert torch.equal(channel_spread(hidden).argsort(), hidden.var(dim=0, correction=1).argsort())


def test_blocked_similarity_and_order_match_at_video_size():
    """Beyond 1024 tokens the similarity and the pass order are computed in blocks of rows."""
    g = torch.Generator().manual_seed(0)
    states = torch.randn(2500, 64, generator=g, dtype=torch.float64)
    matrix = similarity_float32(states).reshape(-1, 2500)  # 3 blocks of 834 rows: 2 rows of padding
    assert matrix.shape == (2502, 2500) and not matrix[2500:].any()
    assert torch.equal(matrix[:2500].double(), cosine_similarity_matrix(states))
    values = torch.randint(0, 50, (2500,), generator=g).double()  # many ties
    assert torch.equal(order_ascending(values), torch.sort(values, stable=True).indices)


@pytest.mark.parametrize(
    "views",
    [((12, 12),), ((24, 24), (48, 49)), ((3, 5), (3, 5), (4, 4), (3, 5)), ((14, 14),) * 5 + ((1, 1),)],
    ids=["one", "llava-next", "sizes-interleaved", "frames-newline"],
)
def test_view_tables_are_the_clamped_grid_distance(views):
    """The selection reads the distances from one small table per view size: every entry equals
    `grid_distance` clamped at 1 (delta while S has no token in the view), as rows and as pairs."""
    from pruning_graph.select import _Distances

    n = sum(h * w for h, w in views)
    expected = grid_distance(views).clamp_max(1.0).float()
    distances = _Distances(views, torch.device("cpu"))
    tokens = torch.arange(n)
    assert torch.equal(distances.rows(tokens), expected)
    rows, columns = tokens.flip(0)[::3], tokens[1::2]
    pairs = distances.pairs(*distances.as_rows(rows), *distances.as_columns(columns))
    assert torch.equal(pairs, expected[rows][:, columns])


def test_half_precision_inputs():
    case = next(c for c in all_cases() if c.grid == (12, 12) and c.keep == 64)
    indices, fused = select_tokens(case.keys.half(), case.hidden.half(), case.grid, case.keep)
    assert fused.dtype == torch.float16 and indices.dtype == torch.int64


def test_work_in_blocks(monkeypatch):
    """The pivots and the channel spreads widen `WIDEN_BLOCK_BYTES` of keys and states at a time
    (beyond `WIDEN_WHOLE_BYTES`) and a pass start reads S's rows `PASS_ROWS` tokens at a time
    (8 MiB, 24 MiB, 256): in blocks of 2 KiB (a few rows or columns) and 5 tokens too, the same
    tokens, fused states and order as the reference."""
    from pruning_graph import select

    monkeypatch.setattr(select, "WIDEN_BLOCK_BYTES", 2048)
    monkeypatch.setattr(select, "WIDEN_WHOLE_BYTES", 2048)
    monkeypatch.setattr(select, "PASS_ROWS", 5)
    for case in MULTI_VIEW_CASES[:4] + CASES[::50]:
        indices, fused, order = VLMPrunerSelect(case.grid, case.keep, case.config).ordered(case.keys, case.hidden)
        ref_indices, ref_fused = reference_select(case.keys, case.hidden, case.grid, case.keep, case.config)
        assert torch.equal(indices, ref_indices), case.name
        assert torch.equal(order, reference_order(case.keys, case.hidden, case.grid, case.keep, case.config)), case.name
        torch.testing.assert_close(fused, ref_fused, atol=1e-5, rtol=1.3e-6)
