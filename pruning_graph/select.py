"""VLM-Pruner token selection as static-shape torch ops, the form that is exported.

Same contract and same tokens as `reference.reference_select`. The keep count R and every loop
count are Python ints fixed before tracing, so the traced graph is a straight line: pivots (kappa
steps), then T greedy passes of ceil(N / B) blocks each (one `scan` over all their block steps),
then the fusion. Tokens are tracked with a boolean mask over the N image tokens; once R are
selected, later pass starts and blocks are skipped by a `cond`.

Memory and time stay linear in N per greedy step: S is held as its tokens in selection order
(R + 1 slots), and a block reads only the similarities and grid distances between its (at most B)
candidates and S, a pass start those between S and every token. Max and min are exact in any
order, so the nearest-token values equal the reference's recomputation over S bit for bit. The
only N x N tensor is the similarity (float32, see `definitions.similarity_float32`); the grid
distances are one small table per view size (`_Distances`); the pass order is a sort
(`static_ops.order_ascending`).

On ExecuTorch, whose portable kernels run everything here but the fusion's matmul (XNNPACK), the
cost is kernel work per element and per op: large inputs are widened to float64 by
`definitions.widen`, not `Tensor.to` (25x slower there), and each of the T * ceil(N / B) block
steps runs a few dozen ops on at most B x (R + 1) elements.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from pruning_graph.config import VLMPrunerConfig
from pruning_graph.definitions import (
    DECISION_DTYPE,
    Views,
    channel_spread,
    l1_norms,
    l2_norms,
    similarity_float32,
    view_distance_tables,
    widen,
)
from pruning_graph.static_ops import (
    argmax_lowest,
    argmax_lowest_rows,
    cond_branch,
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

    def fused_for(self, hidden: Tensor, indices: Tensor) -> Tensor:
        """The fused states of tokens chosen elsewhere: stage 3 alone, the discarded tokens merged
        into the kept ones `indices` (int64 [R], ascending) as `forward` merges them into its own.
        hidden [N, d] -> [R, d]. Eager only (`runtime.parity` holds two runs to one selection)."""
        if hidden.ndim != 2 or hidden.shape[0] != self.num_tokens:
            raise ValueError(f"hidden must be [{self.num_tokens}, d], got {list(hidden.shape)}")
        if indices.shape != (self.keep,):
            raise ValueError(f"indices must be [{self.keep}], got {list(indices.shape)}")
        similarity = similarity_float32(_screened_states(hidden, self.config.q))
        selected = torch.zeros(self.num_tokens, dtype=torch.bool, device=hidden.device).index_fill(0, indices, True)
        return _fuse(hidden.float(), similarity, selected, indices, self.config.beta).to(hidden.dtype)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, keep={self.keep}, config={self.config}"


def _select(
    keys: Tensor, hidden: Tensor, views: Views, keep: int, config: VLMPrunerConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """The three stages on validated inputs: (indices [R] ascending, fused [R, d], the indices in
    selection order). Decisions in float64, the fused sum in float32.

    Each stage's float64 copies of the inputs are freed before the next one starts.
    """
    distances = _Distances(views, keys.device)
    pivots = _pivots(keys, min(config.kappa, keep))
    similarity = similarity_float32(_screened_states(hidden, config.q))
    selected, order = _greedy_fill(pivots, similarity, distances, keep, config)
    indices = mask_to_indices(selected, keep)
    fused = _fuse(hidden.float(), similarity, selected, indices, config.beta)
    return indices, fused.to(hidden.dtype), order


def _screened_states(hidden: Tensor, q: int) -> Tensor:
    """The q highest-variance channels, in float64: [N, d] -> [N, min(q, d)].

    The spreads are float64 (`widen`), computed a block of channels at a time (`_widened_blocks`):
    each is a sum down one column, so the blocks change no value.
    """
    spread = _widened_blocks(channel_spread, hidden, 1)
    channels = mask_to_indices(top_k_mask(spread, q), min(q, hidden.shape[1]))
    return widen(hidden.index_select(1, channels))


# The most bytes of float64 that the pivots (rows of keys) and channel spreads (columns of states)
# widen at a time: 256 rows of 4096 keys, 83 channels of 12544 tokens; so that no float64 copy of
# all keys or states and its temporaries (1.2 GB each at N = 12544) meets the similarity. ONNX
# Runtime, opened without its arena, allocates a `scan` step's temporaries afresh at every step,
# and glibc maps large ones as new zeroed pages each time: blocks of 32 MiB made its selection at
# N = 2928 take 913 ms instead of 420. The steps cost that way too, so a copy of at most
# `WIDEN_WHOLE_BYTES` is made whole, in one step (N = 576 at width 4096: 104-119 ms in 3 blocks,
# 50-65 whole).
WIDEN_BLOCK_BYTES = 8 << 20
WIDEN_WHOLE_BYTES = 24 << 20


def _pivots(keys: Tensor, count: int) -> Tensor:
    """Stage 1: largest-L1 key, then farthest-point sampling. float [N, dk] -> int64 [count].

    Norms and distances are float64 (`widen`), computed a block of keys at a time
    (`_widened_blocks`): each is a sum along one row, so the blocks change no value.
    """
    n = keys.shape[0]
    picks = [argmax_lowest(_widened_blocks(l1_norms, keys, 0))]
    selected = one_hot(picks[0], n)[0]
    nearest = _distances_to(keys, picks[0])
    for _ in range(count - 1):
        # Distances are >= 0: -1 keeps already selected tokens out even when all are duplicates.
        picks.append(argmax_lowest(torch.where(selected, -1.0, nearest)))
        selected = selected | one_hot(picks[-1], n)[0]
        nearest = torch.minimum(nearest, _distances_to(keys, picks[-1]))
    return torch.cat(picks)


def _distances_to(keys: Tensor, pick: Tensor) -> Tensor:
    """Euclidean distance of every key to key `pick` (int64 [1]), settled: [N, dk] -> float64 [N]."""
    pivot = widen(keys.index_select(0, pick))
    return _widened_blocks(lambda rows: l2_norms(rows - pivot), keys, 0)


def _widened_blocks(reduce: Callable[[Tensor], Tensor], x: Tensor, dim: int) -> Tensor:
    """`reduce(widen(x))` for a `reduce` that maps each row (dim 0) or column (dim 1) of x to one
    value, computed as many rows or columns at a time as `WIDEN_BLOCK_BYTES` of float64 hold
    (all at once up to `WIDEN_WHOLE_BYTES`): [N, c] -> [N] or [c].

    The blocks are the steps of a `scan` that writes each block's values into its carry, so that
    one block's float64 copy exists at a time: unrolled, ExecuTorch's lowering ordered the graph so
    that every block's `index_select` ran, then every block's widening, and so on, all blocks alive
    at once (1.8 GB of the selection's plan at N = 12544). The last block is filled up with the
    last row or column again, written to the same place twice.
    """
    item = DECISION_DTYPE.itemsize  # what `widen` makes of each value
    if item * x.numel() <= WIDEN_WHOLE_BYTES:
        return reduce(widen(x))
    count = x.shape[dim]
    size = max(1, WIDEN_BLOCK_BYTES // (item * x.shape[1 - dim]))
    blocks = -(-count // size)
    # Blocks picked by index_select, not sliced: XNNPACK takes float32 slices, all of a graph's in
    # one call that outputs them at the same time.
    index = torch.arange(blocks * size, device=x.device).clamp_max(count - 1).reshape(blocks, size)

    def block(values: Tensor, picks: Tensor) -> tuple[Tensor, Tensor]:
        values = values.index_put((picks,), reduce(widen(x.index_select(dim, picks))))
        return values, values.clone()  # a scan step has an output

    start = torch.zeros(count, dtype=DECISION_DTYPE, device=x.device)
    return loop_scan(block, start, index)[0]


class _Distances:
    """delta's distances, `view_distance_tables` read as rows: token i's distance to each token j,
    1 where j is in another view, so that a min over S is delta_i(S) (1 while S has no token in
    i's view). Memory linear in N beyond the small tables.
    """

    def __init__(self, views: Views, device: torch.device):
        self.flat, self.row_start, self.position, self.view = view_distance_tables(views, device)

    def as_rows(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """What `pairs` reads of `tokens` (int64 [k]) as rows: their row starts and views."""
        return self.row_start.index_select(0, tokens), self.view.index_select(0, tokens)

    def as_columns(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """What `pairs` reads of `tokens` (int64 [c]) as columns: their positions and views."""
        return self.position.index_select(0, tokens), self.view.index_select(0, tokens)

    def rows(self, tokens: Tensor) -> Tensor:
        """From each of `tokens` (int64 [k]) to every token: float32 [k, N]."""
        return self.pairs(*self.as_rows(tokens), self.position, self.view)

    def pairs(self, starts: Tensor, views: Tensor, positions: Tensor, others: Tensor) -> Tensor:
        """From k tokens (`as_rows`, int64 [k] each) to c tokens (`as_columns`, int64 [c] each):
        float32 [k, c]. Reads only `flat` of the tables: a scan body may not take two aliases."""
        same = views[:, None] == others[None, :]
        # Another view's position may lie beyond this view's row: read entry 0 there instead.
        index = torch.where(same, starts[:, None] + positions[None, :], 0)
        values = self.flat.index_select(0, index.reshape(-1)).reshape(index.shape)
        return torch.where(same, values, 1.0)


def _entries(flat: Tensor, offsets: Tensor, columns: Tensor) -> Tensor:
    """flat[offsets[i] + columns[j]] at [i, j]: entries of rows of a flattened matrix, one gather
    (the matrix flattened outside any scan body: ExecuTorch reads zeros from a view made inside
    one; and ONNX Runtime runs a multi-index gather on the matrix itself as a transpose of all of
    it). float [M], int64 [k], int64 [c] -> [k, c]."""
    index = offsets[:, None] + columns[None, :]
    return flat.index_select(0, index.reshape(-1)).reshape(index.shape)


def _redundancy(nearest_sim: Tensor, nearest_dist: Tensor, lam: Tensor) -> Tensor:
    """m_i(S) from max_{j in S} M_ij and delta_i(S), float32 [k], [k] -> float64 [k].

    Both inputs are settled values, exact in float32; the arithmetic is float64. `lam` is a 0-d
    float64 tensor made outside any scan body (a scan body may not create constants).
    """
    return nearest_sim.to(DECISION_DTYPE) * (1 + lam * nearest_dist.to(DECISION_DTYPE))


# Tokens of S whose rows a pass start reads at a time: [256, N] (int64 indices of 26 MB at N =
# 12544). ExecuTorch plans a `cond` branch's memory beside the whole graph's, not inside it.
PASS_ROWS = 256


def _greedy_fill(
    pivots: Tensor, similarity: Tensor, distances: _Distances, keep: int, config: VLMPrunerConfig
) -> tuple[Tensor, Tensor]:
    """Stage 2: T passes with rising thresholds over ceil(N / B) blocks each, until R = `keep`
    tokens are selected. `similarity` is float32 [K, rows, N], `similarity_float32`.

    S is held as its tokens in selection order, int64 [R + 1]: the pivots, then each block's
    accepted tokens in block order, the free slots (and a spare one that rejected candidates write
    to) holding the first pivot, which changes no max or min over S. So each block reads only the
    similarities and distances between its B candidates and S, [B, R + 1], and each pass start
    those between S and every token, [R + 1, N]: no update of N running values per block.
    Max and min are exact in any order, so the values equal the reference's bit for bit.

    All passes are one `scan` over their T * ceil(N / B) block steps; a pass's first step orders
    the candidates, which the pass's steps then carry. One loop body instead of one per pass keeps
    the traced graph small: the export's passes walk every node, ExecuTorch's several times
    (a minute per selection with one scan per pass). Once R are selected, the steps that remain
    do nothing but two `cond`s (the first pass usually fills R: the other T - 1 passes then cost a
    few microseconds a block). The `cond`s hold no `scan`: ExecuTorch 1.4 computes a `scan`
    inside a `cond` wrongly, and cannot emit a `while_loop`.

    Returns bool [N] with R True, and S in selection order, int64 [R].
    """
    n = similarity.shape[2]
    blocks = -(-n // config.block)
    device = pivots.device
    spare = pivots[:1]
    chosen = torch.cat([pivots, spare.expand(keep + 1 - pivots.shape[0])])
    selected = torch.zeros(n, dtype=torch.bool, device=device).index_fill(0, pivots, True)
    room = torch.tensor(keep - pivots.shape[0], device=device)
    spares = spare.repeat(config.block)
    lam = torch.tensor(config.lam, dtype=DECISION_DTYPE, device=device)
    by_row = similarity.reshape(-1)  # M flattened: M_ij at i * N + j (the scan's only view of M)
    row_offsets = torch.arange(n, device=device) * n
    # Per step: its pass's threshold, whether it starts the pass, its block's positions in the order.
    thresholds = torch.tensor(config.thresholds(), dtype=DECISION_DTYPE, device=device)
    step_blocks = torch.arange(blocks, device=device).repeat(thresholds.shape[0])
    xs = (
        thresholds.repeat_interleave(blocks),
        step_blocks == 0,
        # Past the last token, the last of the order again: always an already selected token.
        (step_blocks[:, None] * config.block + torch.arange(config.block, device=device)).clamp_max(n - 1),
    )

    def pass_order(selected: Tensor, chosen: Tensor, order: Tensor) -> Tensor:
        """Candidates ascending by m_i(S) at the pass start, selected tokens last: int64 [N]."""
        parts = [chosen[start : start + PASS_ROWS] for start in range(0, chosen.shape[0], PASS_ROWS)]
        nearest_sim = functools.reduce(
            torch.maximum, [_entries(by_row, row_offsets, part).amax(dim=1) for part in parts]
        )
        nearest_dist = functools.reduce(torch.minimum, [distances.rows(part).amin(dim=0) for part in parts])
        return order_ascending(torch.where(selected, math.inf, _redundancy(nearest_sim, nearest_dist, lam)))

    def same_order(selected: Tensor, chosen: Tensor, order: Tensor) -> Tensor:
        return order.clone()  # a `cond` branch returns no alias of its inputs

    def accept(
        selected: Tensor, chosen: Tensor, room: Tensor, order: Tensor, threshold: Tensor, positions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One block (the tokens at `positions` of the pass order) against the current S: the new
        (selected, chosen, room)."""
        block = order.index_select(0, positions)
        sim = _entries(by_row, block * n, chosen).amax(dim=1)
        dist = distances.pairs(*distances.as_rows(block), *distances.as_columns(chosen)).amin(dim=1)
        m = _redundancy(sim, dist, lam)
        was_selected = selected.index_select(0, block)
        accepted = (m < threshold) & ~was_selected
        # Over budget: the accepted with the smallest m, ties by block order.
        accepted = accepted & (rank_ascending(torch.where(accepted, m, math.inf)) < room)
        taken = torch.cumsum(accepted.to(torch.int64), dim=0)
        slots = torch.where(accepted, keep - room + taken - 1, keep)
        chosen = chosen.index_put((slots,), torch.where(accepted, block, spares))
        selected = selected.index_put((block,), accepted | was_selected)
        return selected, chosen, room - accepted.sum()

    def step(carry: tuple[Tensor, ...], xs: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor]:
        selected, chosen, room, order = carry
        threshold, starts_pass, positions = xs
        order = cond_branch(starts_pass & (room > 0), pass_order, same_order, (selected, chosen, order))
        # Copied out of the `cond`'s memory, which ExecuTorch plans at the same offsets as the next
        # `cond`'s (each control-flow submodule's plan starts at 0 of one shared region).
        order = order.clone()
        selected, chosen, room = cond_branch(
            room > 0, accept, _unchanged, (selected, chosen, room, order, threshold, positions)
        )
        return (selected, chosen, room, order), room.clone()  # a scan step has an output

    unordered = torch.zeros(n, dtype=torch.int64, device=device)  # step 0 orders
    (selected, chosen, _, _), _ = loop_scan(step, (selected, chosen, room, unordered), xs)
    return selected, chosen[:keep]


def _unchanged(selected: Tensor, chosen: Tensor, room: Tensor, *block: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A block step once R are selected (a `cond` branch returns no alias of its inputs)."""
    return selected.clone(), chosen.clone(), room.clone()


def _fuse(states: Tensor, similarity: Tensor, selected: Tensor, indices: Tensor, beta: float) -> Tensor:
    """Stage 3: similarity-weighted merge of each discarded token into its most similar kept token.

    Args:
        states: float32 [N, d]; similarity: float32 [K, rows, N], `similarity_float32`; selected: bool [N];
            indices: int64 [R], ascending.
    Returns:
        float32 [R, d].
    """
    # [N, R]: M_uj for the kept j (then the padding rows of M, cut off)
    to_kept = similarity.index_select(2, indices).reshape(-1, indices.shape[0])[: states.shape[0]]
    target = argmax_lowest_rows(to_kept)  # [N], a position in `indices`
    weight = torch.where(selected, 0.0, to_kept.gather(1, target[:, None])[:, 0].to(states.dtype))  # [N]
    assign = one_hot(target, indices.shape[0]).to(states.dtype) * weight[:, None]  # [N, R]
    total_weight = assign.sum(dim=0)  # [R]
    # A batch of one: XNNPACK takes a bmm of two computed operands (an mm only with a constant one).
    merged = torch.bmm(assign.T[None], states[None])[0] / total_weight.clamp_min(1e-8)[:, None]  # [R, d]
    kept = states.index_select(0, indices)
    return torch.where((total_weight > 0)[:, None], beta * kept + (1 - beta) * merged, kept)
