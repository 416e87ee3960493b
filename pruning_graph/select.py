"""VLM-Pruner token selection as static-shape torch ops, the form that is exported.

Same contract and same tokens as `reference.reference_select`. The keep count R and every loop
count are Python ints fixed before tracing, so the traced graph is a straight line: pivots (kappa
steps), then T greedy passes of ceil(N / B) blocks each, then the fusion. Tokens are tracked with
a boolean mask over the N image tokens; once R are selected, later blocks accept nothing.

Memory and time stay linear in N per greedy step: S is held as its tokens in selection order
(R + 1 slots), and a block reads only the similarities and grid distances between its (at most B)
candidates and S, a pass start those between S and every token. Max and min are exact in any
order, so the nearest-token values equal the reference's recomputation over S bit for bit. The
only N x N tensors are the similarity (float32, see `definitions.similarity_columns`) and the grid
distances up to `DISTANCE_TABLE_MAX_N` tokens (float32, `_Distances`); the pass order is a sort
(`static_ops.order_ascending`).

On ExecuTorch, whose portable kernels run everything here but the fusion's matmul (XNNPACK), the
cost is kernel work per element and per op: large inputs are widened to float64 by
`definitions.widen`, not `Tensor.to` (25x slower there), and each of the T * ceil(N / B) block
steps runs a few dozen ops on at most B x (R + 1) elements.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pruning_graph.config import VLMPrunerConfig
from pruning_graph.definitions import (
    DECISION_DTYPE,
    TokenLayout,
    Views,
    channel_spread,
    constant,
    grid_distance_rows,
    grid_distance_table,
    l1_norms,
    l2_norms,
    similarity_columns,
    token_layout,
    widen,
)
from pruning_graph.static_ops import (
    argmax_lowest,
    argmax_lowest_rows,
    loop_scan,
    mask_to_indices,
    one_hot,
    order_ascending,
    rank_ascending,
    top_k_mask,
)
from pruning_graph.validation import Grid, check_features, check_grid_and_keep


def select_tokens(
    keys: Tensor,
    hidden: Tensor,
    grid: Grid,
    keep: int,
    config: VLMPrunerConfig = VLMPrunerConfig(),
) -> tuple[Tensor, Tensor]:
    """Select `keep` of the N image tokens and fuse the others into them (static shapes).

    Args:
        keys: float [N, dk], layer K-1's post-RoPE keys of the image tokens.
        hidden: float [N, d], layer K-1's output hidden states of the image tokens.
        grid: (H, W) with H * W == N, the row-major layout of the tokens; or views
            [(H1, W1), (H2, W2), ...] with sum(H_v * W_v) == N, in sequence order, each row-major.
        keep: R, number of tokens kept, 1 <= R <= N.
    Returns:
        indices: int64 [R], the kept tokens, ascending.
        fused: [R, d] in hidden's dtype, the kept tokens' states after fusion.
    """
    n = check_features(keys, hidden)
    views = check_grid_and_keep(grid, keep, n)
    return _select(keys, hidden, views, keep, config)[:2]


class VLMPrunerSelect(nn.Module):
    """`select_tokens` for one fixed grid (one view or several) and keep count, as a module to export.

    forward(keys [N, dk], hidden [N, d]) -> (indices int64 [R], fused [R, d]).
    """

    def __init__(self, grid: Grid, keep: int, config: VLMPrunerConfig = VLMPrunerConfig()):
        super().__init__()
        self.views = check_grid_and_keep(grid, keep)
        self.grid = self.views[0] if len(self.views) == 1 else self.views
        self.num_tokens = sum(height * width for height, width in self.views)
        self.keep = keep
        self.config = config

    def forward(self, keys: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        return self.ordered(keys, hidden)[:2]

    def ordered(self, keys: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """forward's (indices, fused), and the kept tokens in selection order, int64 [R]
        (`reference.reference_order`)."""
        n = check_features(keys, hidden)
        if n != self.num_tokens:
            raise ValueError(f"this selector was built for grid {self.grid} ({self.num_tokens} tokens), got {n} tokens")
        return _select(keys, hidden, self.views, self.keep, self.config)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, keep={self.keep}, config={self.config}"


# Largest N whose grid distances the selection tabulates (`_Distances`): float32 [N, N], 64 MiB.
DISTANCE_TABLE_MAX_N = 4096


def _select(
    keys: Tensor, hidden: Tensor, views: Views, keep: int, config: VLMPrunerConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """The three stages on validated inputs: (indices [R] ascending, fused [R, d], the indices in
    selection order). Decisions in float64, the fused sum in float32.

    Each stage's float64 copies of the inputs are freed before the next one starts.
    """
    distances = _Distances(token_layout(views, keys.device), views)
    pivots = _pivots(widen(keys), min(config.kappa, keep))
    similarity = similarity_columns(_screened_states(hidden, config.q))
    selected, order = _greedy_fill(pivots, similarity, distances, keep, config)
    indices = mask_to_indices(selected, keep)
    fused = _fuse(hidden.float(), similarity, selected, indices, config.beta)
    return indices, fused.to(hidden.dtype), order


def _screened_states(hidden: Tensor, q: int) -> Tensor:
    """The q highest-variance channels, in float64: [N, d] -> [N, min(q, d)]."""
    channels = mask_to_indices(top_k_mask(channel_spread(widen(hidden)), q), min(q, hidden.shape[1]))
    return widen(hidden.index_select(1, channels))


def _pivots(keys: Tensor, count: int) -> Tensor:
    """Stage 1: largest-L1 key, then farthest-point sampling. float64 [N, dk] -> int64 [count]."""
    n = keys.shape[0]
    picks = [argmax_lowest(l1_norms(keys))]
    selected = one_hot(picks[0], n)[0]
    nearest = l2_norms(keys - keys.index_select(0, picks[0]))
    for _ in range(count - 1):
        # Distances are >= 0: -1 keeps already selected tokens out even when all are duplicates.
        picks.append(argmax_lowest(torch.where(selected, -1.0, nearest)))
        selected = selected | one_hot(picks[-1], n)[0]
        nearest = torch.minimum(nearest, l2_norms(keys - keys.index_select(0, picks[-1])))
    return torch.cat(picks)


class _Distances:
    """delta's distances: `grid_distance_rows` of one layout clamped at 1, in float32 (settled
    values: float32 holds them exactly), so that a min over S is delta_i(S) (1 while S has no token
    in i's view).

    Up to `DISTANCE_TABLE_MAX_N` tokens they are read from a [N, N] table made once
    (`grid_distance_table`), beyond it computed per call (memory linear in N).
    """

    def __init__(self, layout: TokenLayout, views: Views):
        self.layout = layout
        self.table = self.flat = self.row = None
        if layout.x.shape[0] <= DISTANCE_TABLE_MAX_N:
            self.table, self.row = grid_distance_table(views, layout.x.device)
            self.flat = self.table.reshape(-1)

    def rows(self, tokens: Tensor) -> Tensor:
        """From each of `tokens` (int64 [k]) to every token: float32 [k, N]."""
        if self.table is None:
            return grid_distance_rows(self.layout, tokens).clamp_max(1.0).float()
        return self.table.index_select(0, self.row.index_select(0, tokens))

    def offsets(self, tokens: Tensor) -> Tensor:
        """Where the rows of `tokens` (int64 [k]) start in the flattened table, int64 [k] (the
        tokens themselves when there is no table)."""
        return tokens if self.table is None else self.row.index_select(0, tokens) * self.table.shape[1]

    def pairs(self, tokens: Tensor, offsets: Tensor, others: Tensor) -> Tensor:
        """From each of `tokens` (int64 [k], at `offsets`) to each of `others` (int64 [c]):
        float32 [k, c]. Reads only `flat` of the table: a scan body may not take two aliases."""
        if self.flat is None:
            return grid_distance_rows(self.layout, tokens, others).clamp_max(1.0).float()
        return _entries(self.flat, offsets, others)


def _entries(flat: Tensor, offsets: Tensor, columns: Tensor) -> Tensor:
    """flat[offsets[i] + columns[j]] at [i, j]: entries of rows of a flattened matrix, one gather
    (the matrix flattened outside any scan body: ExecuTorch reads zeros from a view made inside
    one). float [M], int64 [k], int64 [c] -> [k, c]."""
    index = offsets[:, None] + columns[None, :]
    return flat.index_select(0, index.reshape(-1)).reshape(index.shape)


def _redundancy(nearest_sim: Tensor, nearest_dist: Tensor, lam: Tensor) -> Tensor:
    """m_i(S) from max_{j in S} M_ij and delta_i(S), float32 [k], [k] -> float64 [k].

    Both inputs are settled values, exact in float32; the arithmetic is float64. `lam` is a 0-d
    float64 tensor made outside any scan body (a scan body may not create constants).
    """
    return nearest_sim.to(DECISION_DTYPE) * (1 + lam * nearest_dist.to(DECISION_DTYPE))


def _greedy_fill(
    pivots: Tensor, similarity: Tensor, distances: _Distances, keep: int, config: VLMPrunerConfig
) -> tuple[Tensor, Tensor]:
    """Stage 2: T passes with rising thresholds, each a `scan` over its ceil(N / B) blocks, until
    R = `keep` tokens are selected.

    S is held as its tokens in selection order, int64 [R + 1]: the pivots, then each block's
    accepted tokens in block order, the free slots (and a spare one that rejected candidates write
    to) holding the first pivot, which changes no max or min over S. So each block reads only the
    similarities and distances between its B candidates and S, [B, R + 1], and each pass start
    those between S and every token, [R + 1, N]: no update of N running values per block.
    Max and min are exact in any order, so the values equal the reference's bit for bit.

    Returns bool [N] with R True, and S in selection order, int64 [R]. Once R are selected, later
    blocks accept nothing. (Skipping the passes that start with a full budget under a `cond` made
    ONNX Runtime 3.5x faster, but ExecuTorch 1.4 computes a `scan` inside a `cond` wrongly, and
    cannot emit a `while_loop`.)
    """
    n = similarity.shape[0]
    blocks = -(-n // config.block)
    spare = pivots[:1]
    chosen = torch.cat([pivots, spare.expand(keep + 1 - pivots.shape[0])])
    selected = torch.zeros(n, dtype=torch.bool, device=pivots.device).index_fill(0, pivots, True)
    room = torch.tensor(keep - pivots.shape[0], device=pivots.device)
    spares = spare.repeat(config.block)
    lam = torch.tensor(config.lam, dtype=DECISION_DTYPE, device=pivots.device)
    by_row = similarity.T.reshape(-1)  # M, flattened: M_ij at i * N + j
    for tau in config.thresholds():
        if not torch.compiler.is_compiling() and not room:
            break  # eager only: a pass that starts with a full budget accepts nothing
        threshold = constant(tau, lam)
        # Pass order: candidates ascending by m_i(S) at the pass start, selected tokens last.
        nearest_sim = similarity.index_select(0, chosen).amax(dim=0)
        nearest_dist = distances.rows(chosen).amin(dim=0)
        order = order_ascending(torch.where(selected, math.inf, _redundancy(nearest_sim, nearest_dist, lam)))
        # Pad to whole blocks with the last token of the order, always an already selected one.
        order = torch.cat([order, order[-1:].expand(blocks * config.block - n)]).reshape(blocks, config.block)
        # Each block's rows in M and in the distance table, made once a pass.
        xs = (order, order * n, distances.offsets(order.reshape(-1)).reshape(blocks, config.block))

        def step(carry: tuple[Tensor, ...], xs: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor]:
            (selected, chosen, room), (block, sim_offsets, dist_offsets) = carry, xs
            sim = _entries(by_row, sim_offsets, chosen).amax(dim=1)
            dist = distances.pairs(block, dist_offsets, chosen).amin(dim=1)
            m = _redundancy(sim, dist, lam)
            was_selected = selected.index_select(0, block)
            accepted = (m < threshold) & ~was_selected
            # Over budget: the accepted with the smallest m, ties by block order.
            accepted = accepted & (rank_ascending(torch.where(accepted, m, math.inf)) < room)
            taken = torch.cumsum(accepted.to(torch.int64), dim=0)
            slots = torch.where(accepted, keep - room + taken - 1, keep)
            chosen = chosen.index_put((slots,), torch.where(accepted, block, spares))
            selected = selected.index_put((block,), accepted | was_selected)
            return (selected, chosen, room - accepted.sum()), accepted  # a scan step has an output

        (selected, chosen, room), _ = loop_scan(step, (selected, chosen, room), xs)
    return selected, chosen[:keep]


def _fuse(states: Tensor, similarity: Tensor, selected: Tensor, indices: Tensor, beta: float) -> Tensor:
    """Stage 3: similarity-weighted merge of each discarded token into its most similar kept token.

    Args:
        states: float32 [N, d]; similarity: float32 [N, N], `similarity_columns`; selected: bool [N];
            indices: int64 [R], ascending.
    Returns:
        float32 [R, d].
    """
    to_kept = similarity.index_select(0, indices).T  # [N, R]: M_uj for the kept j
    target = argmax_lowest_rows(to_kept)  # [N], a position in `indices`
    weight = torch.where(selected, 0.0, to_kept.gather(1, target[:, None])[:, 0].to(states.dtype))  # [N]
    assign = one_hot(target, indices.shape[0]).to(states.dtype) * weight[:, None]  # [N, R]
    total_weight = assign.sum(dim=0)  # [R]
    # A batch of one: XNNPACK takes a bmm of two computed operands (an mm only with a constant one).
    merged = torch.bmm(assign.T[None], states[None])[0] / total_weight.clamp_min(1e-8)[:, None]  # [R, d]
    kept = states.index_select(0, indices)
    return torch.where((total_weight > 0)[:, None], beta * kept + (1 - beta) * merged, kept)
