"""VLM-Pruner token selection as static-shape torch ops, the form that is exported.

Same contract and same tokens as `reference.reference_select`. The keep count R and every loop
count are Python ints fixed before tracing, so the traced graph is a straight line: pivots (kappa
steps), then T greedy passes of ceil(N / B) blocks each, then the fusion. Tokens are tracked with
a boolean mask over the N image tokens; once R are selected, later blocks accept nothing.

Memory and time stay linear in N per greedy step: beside the mask, every token carries its
similarity to the nearest selected token and its distance to the nearest selected token of its
view, updated from the (at most B) tokens each block accepts. Max and min are exact in any order,
so these running values equal the reference's recomputation over S bit for bit. The only N x N
tensors are the similarity (float32, see `definitions.similarity_columns`), the grid distances
up to `DISTANCE_TABLE_MAX_N` tokens (float32, `_Distances`) and the pairwise comparisons that
order the candidates at the start of each pass.
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
    l1_norms,
    l2_norms,
    similarity_columns,
    token_layout,
)
from pruning_graph.static_ops import (
    argmax_lowest,
    argmax_lowest_rows,
    compact,
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
_TABLE_ROWS = 256  # rows of the table computed at a time

# Greedy state: selected bool [N]; nearest_sim float64 [N], max_{j in S} M_ij; nearest_dist
# float64 [N], delta_i(S) (1 while S has no token in i's view).
_State = tuple[Tensor, Tensor, Tensor]


def _select(
    keys: Tensor, hidden: Tensor, views: Views, keep: int, config: VLMPrunerConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """The three stages on validated inputs: (indices [R] ascending, fused [R, d], the indices in
    selection order). Decisions in float64, the fused sum in float32.

    Each stage's float64 copies of the inputs are freed before the next one starts.
    """
    distances = _Distances(token_layout(views, keys.device))
    pivots = _pivots(keys.to(DECISION_DTYPE), min(config.kappa, keep))
    similarity = similarity_columns(_screened_states(hidden, config.q))

    n = keys.shape[0]
    state = (
        torch.zeros(n, dtype=torch.bool, device=keys.device),
        torch.full((n,), -math.inf, dtype=DECISION_DTYPE, device=keys.device),
        torch.ones(n, dtype=DECISION_DTYPE, device=keys.device),
    )
    state = _absorb(state, pivots, torch.ones_like(pivots, dtype=torch.bool), similarity, distances)
    selected, accepted = _greedy_fill(state, similarity, distances, keep - pivots.shape[0], config)
    indices = mask_to_indices(selected, keep)
    fused = _fuse(hidden.float(), similarity, selected, indices, config.beta)
    return indices, fused.to(hidden.dtype), torch.cat([pivots, accepted])


def _screened_states(hidden: Tensor, q: int) -> Tensor:
    """The q highest-variance channels, in float64: [N, d] -> [N, min(q, d)]."""
    exact = hidden.to(DECISION_DTYPE)
    channels = mask_to_indices(top_k_mask(channel_spread(exact), q), min(q, exact.shape[1]))
    return exact.index_select(1, channels)


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
    """`grid_distance_rows` of one layout: float64 [k, N] for k tokens.

    Up to `DISTANCE_TABLE_MAX_N` tokens they are read from a float32 [N, N] table made once
    (settled values: float32 holds them exactly), beyond it computed per call (memory linear in N).
    The table is what keeps the greedy fast on ExecuTorch, whose portable kernels spent ~0.5 ms of
    each block step computing the distances (measured at N = 576: 175 of the greedy's 242 ms).
    """

    def __init__(self, layout: TokenLayout):
        self.layout = layout
        n = layout.x.shape[0]
        self.table = None
        if n <= DISTANCE_TABLE_MAX_N:
            index = torch.arange(n, device=layout.x.device)
            blocks = range(0, n, _TABLE_ROWS)  # no float64 N x N temporary
            self.table = torch.cat([grid_distance_rows(layout, index[r : r + _TABLE_ROWS]).float() for r in blocks])

    def rows(self, tokens: Tensor) -> Tensor:
        if self.table is None:
            return grid_distance_rows(self.layout, tokens)
        return self.table.index_select(0, tokens).to(DECISION_DTYPE)


def _absorb(state: _State, tokens: Tensor, accepted: Tensor, similarity: Tensor, distances: _Distances) -> _State:
    """Add the accepted ones of `tokens` (int64 [k], bool [k]) to S and update the running values."""
    selected, nearest_sim, nearest_dist = state
    # Settled similarities are float32 numbers: their float32 max is the float64 one.
    sim = torch.where(accepted[:, None], similarity.index_select(0, tokens), -math.inf).amax(dim=0)
    dist = torch.where(accepted[:, None], distances.rows(tokens), math.inf).amin(dim=0)
    selected = selected.index_put((tokens,), accepted | selected.index_select(0, tokens))
    return selected, torch.maximum(nearest_sim, sim.to(DECISION_DTYPE)), torch.minimum(nearest_dist, dist)


def _redundancy(nearest_sim: Tensor, nearest_dist: Tensor, lam: Tensor) -> Tensor:
    """m_i(S) from the running values, elementwise: float64 [k], [k] -> [k].

    `lam` is a 0-d tensor made outside any scan body (a scan body may not create constants).
    """
    return nearest_sim * (1 + lam * nearest_dist)


def _greedy_fill(
    state: _State, similarity: Tensor, distances: _Distances, to_accept: int, config: VLMPrunerConfig
) -> tuple[Tensor, Tensor]:
    """Stage 2: T passes with rising thresholds, each a `scan` over its ceil(N / B) blocks, until
    `to_accept` = R - |S| more tokens are selected.

    Returns bool [N] with R True, and the tokens the passes accepted in the order they did, int64
    [to_accept] (a block's in block order). Once R are selected, later blocks accept nothing. (Skipping the
    passes that start with a full budget under a `cond` made ONNX Runtime 3.5x faster, but
    ExecuTorch 1.4 computes a `scan` inside a `cond` wrongly, and cannot emit a `while_loop`.)
    """
    n = similarity.shape[0]
    blocks = -(-n // config.block)
    room = torch.tensor(to_accept, device=similarity.device)
    # Every pass's candidates in its order, and whether each was accepted: [passes * blocks * B] each.
    candidates: list[Tensor] = []
    accepted_flags: list[Tensor] = []
    lam = constant(config.lam, state[1])
    for tau in config.thresholds():
        if not torch.compiler.is_compiling() and not room:
            break  # eager only: a pass that starts with a full budget accepts nothing
        threshold = constant(tau, state[1])
        selected, nearest_sim, nearest_dist = state
        # Pass order: candidates ascending by m_i(S) at the pass start, selected tokens last.
        order = order_ascending(torch.where(selected, math.inf, _redundancy(nearest_sim, nearest_dist, lam)))
        # Pad to whole blocks with the last token of the order, always an already selected one.
        order = torch.cat([order, order[-1:].expand(blocks * config.block - n)]).reshape(blocks, config.block)

        def step(carry: tuple[Tensor, ...], block: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
            selected, nearest_sim, nearest_dist, room = carry
            m = _redundancy(nearest_sim.index_select(0, block), nearest_dist.index_select(0, block), lam)
            was_selected = selected.index_select(0, block)
            accepted = (m < threshold) & ~was_selected
            # Over budget: the accepted with the smallest m, ties by block order.
            accepted = accepted & (rank_ascending(torch.where(accepted, m, math.inf)) < room)
            state = _absorb((selected, nearest_sim, nearest_dist), block, accepted, similarity, distances)
            return (*state, room - accepted.sum()), accepted

        (*state, room), accepted = loop_scan(step, (*state, room), order)
        candidates.append(order.reshape(-1))
        # A copy: a view of a scan output fails ExecuTorch's emitter ("Guard shape_dynamism_eq_base").
        accepted_flags.append(accepted.clone().reshape(-1))
    if not candidates:  # eager, the pivots filled S
        return state[0], torch.zeros(0, dtype=torch.int64, device=similarity.device)
    return state[0], compact(torch.cat(candidates), torch.cat(accepted_flags), to_accept)


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
    merged = (assign.T @ states) / total_weight.clamp_min(1e-8)[:, None]  # [R, d]
    kept = states.index_select(0, indices)
    return torch.where((total_weight > 0)[:, None], beta * kept + (1 - beta) * merged, kept)
