"""VLM-Pruner token selection as static-shape torch ops, the form that is exported.

Same contract and same tokens as `reference.reference_select`. The keep count R and every loop
count are Python ints fixed before tracing, so the traced graph is a straight line: pivots (kappa
steps), then T greedy passes of ceil(N / B) blocks each, then the fusion. Tokens are tracked with
a boolean mask over the N image tokens; once R are selected, later blocks accept nothing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pruning_graph.config import VLMPrunerConfig
from pruning_graph.definitions import (
    DECISION_DTYPE,
    channel_spread,
    constant,
    cosine_similarity_matrix,
    grid_distance,
    l1_norms,
    l2_norms,
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
from pruning_graph.validation import check_features, check_grid_and_keep


def select_tokens(
    keys: Tensor,
    hidden: Tensor,
    grid: tuple[int, int],
    keep: int,
    config: VLMPrunerConfig = VLMPrunerConfig(),
) -> tuple[Tensor, Tensor]:
    """Select `keep` of the N image tokens and fuse the others into them (static shapes).

    Args:
        keys: float [N, dk], layer K-1's post-RoPE keys of the image tokens.
        hidden: float [N, d], layer K-1's output hidden states of the image tokens.
        grid: (H, W) with H * W == N, the row-major layout of the tokens.
        keep: R, number of tokens kept, 1 <= R <= N.
    Returns:
        indices: int64 [R], the kept tokens, ascending.
        fused: [R, d] in hidden's dtype, the kept tokens' states after fusion.
    """
    n = check_features(keys, hidden)
    check_grid_and_keep(grid, keep, n)
    return _select(keys, hidden, tuple(grid), keep, config)


class VLMPrunerSelect(nn.Module):
    """`select_tokens` for one fixed grid and keep count, as a module to export.

    forward(keys [N, dk], hidden [N, d]) -> (indices int64 [R], fused [R, d]).
    """

    def __init__(self, grid: tuple[int, int], keep: int, config: VLMPrunerConfig = VLMPrunerConfig()):
        super().__init__()
        self.num_tokens = check_grid_and_keep(grid, keep)
        self.grid = tuple(grid)
        self.keep = keep
        self.config = config

    def forward(self, keys: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        n = check_features(keys, hidden)
        if n != self.num_tokens:
            raise ValueError(f"this selector was built for grid {self.grid} ({self.num_tokens} tokens), got {n} tokens")
        return _select(keys, hidden, self.grid, self.keep, self.config)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, keep={self.keep}, config={self.config}"


def _select(
    keys: Tensor, hidden: Tensor, grid: tuple[int, int], keep: int, config: VLMPrunerConfig
) -> tuple[Tensor, Tensor]:
    """The three stages on validated inputs. Decisions in float64, the fused sum in float32."""
    keys, exact = keys.to(DECISION_DTYPE), hidden.to(DECISION_DTYPE)
    screened = top_k_mask(channel_spread(exact), config.q)
    channels = mask_to_indices(screened, min(config.q, exact.shape[1]))
    similarity = cosine_similarity_matrix(exact.index_select(1, channels))
    distance = grid_distance(grid, keys.device)

    selected = _pivots(keys, min(config.kappa, keep))
    selected = _greedy_fill(selected, similarity, distance, keep, config)
    indices = mask_to_indices(selected, keep)
    fused = _fuse(hidden.float(), similarity, selected, indices, config.beta)
    return indices, fused.to(hidden.dtype)


def _pivots(keys: Tensor, count: int) -> Tensor:
    """Stage 1 as a mask: largest-L1 key, then farthest-point sampling. [N, dk] -> bool [N]."""
    n = keys.shape[0]
    first = argmax_lowest(l1_norms(keys))
    selected = one_hot(first, n)[0]
    nearest = l2_norms(keys - keys.index_select(0, first))
    for _ in range(count - 1):
        # Distances are >= 0: -1 keeps already selected tokens out even when all are duplicates.
        pick = argmax_lowest(torch.where(selected, -1.0, nearest))
        selected = selected | one_hot(pick, n)[0]
        nearest = torch.minimum(nearest, l2_norms(keys - keys.index_select(0, pick)))
    return selected


def _redundancy(rows: Tensor, similarity: Tensor, distance: Tensor, selected: Tensor, lam: Tensor) -> Tensor:
    """m_i(S) for the tokens `rows` (int64 [k]) against the selected mask S: float [k].

    `lam` is a 0-d tensor made outside any scan body (a scan body may not create constants).
    """
    sim = similarity.index_select(0, rows)
    dist = distance.index_select(0, rows)
    nearest_sim = torch.where(selected[None, :], sim, -math.inf).amax(dim=1)
    nearest_dist = torch.where(selected[None, :], dist, math.inf).amin(dim=1)
    return nearest_sim * (1 + lam * nearest_dist)


def _greedy_fill(
    selected: Tensor, similarity: Tensor, distance: Tensor, keep: int, config: VLMPrunerConfig
) -> Tensor:
    """Stage 2: T passes with rising thresholds, each a `scan` over its ceil(N / B) blocks.

    Returns bool [N] with R True. Once R are selected, later blocks accept nothing. (Skipping the
    passes that start with a full budget under a `cond` made ONNX Runtime 3.5x faster, but
    ExecuTorch 1.4 computes a `scan` inside a `cond` wrongly, and cannot emit a `while_loop`.)
    """
    n = similarity.shape[0]
    blocks = -(-n // config.block)
    everyone = torch.arange(n, device=similarity.device)
    room = keep - selected.sum()
    lam = constant(config.lam, similarity)
    for tau in config.thresholds():
        if not torch.compiler.is_compiling() and not room:
            break  # eager only: a pass that starts with a full budget accepts nothing
        threshold = constant(tau, similarity)
        # Pass order: candidates ascending by m_i(S) at the pass start, selected tokens last.
        start = _redundancy(everyone, similarity, distance, selected, lam)
        order = order_ascending(torch.where(selected, math.inf, start))
        # Pad to whole blocks with the last token of the order, always an already selected one.
        order = torch.cat([order, order[-1:].expand(blocks * config.block - n)]).reshape(blocks, config.block)

        def step(carry: tuple[Tensor, Tensor], block: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
            selected, room = carry
            m = _redundancy(block, similarity, distance, selected, lam)
            was_selected = selected.index_select(0, block)
            accepted = (m < threshold) & ~was_selected
            # Over budget: the accepted with the smallest m, ties by block order.
            accepted = accepted & (rank_ascending(torch.where(accepted, m, math.inf)) < room)
            return (selected.index_put((block,), accepted | was_selected), room - accepted.sum()), accepted

        (selected, room), _ = loop_scan(step, (selected, room), order)
    return selected


def _fuse(states: Tensor, similarity: Tensor, selected: Tensor, indices: Tensor, beta: float) -> Tensor:
    """Stage 3: similarity-weighted merge of each discarded token into its most similar kept token.

    Args:
        states: float32 [N, d]; similarity: float64 [N, N]; selected: bool [N]; indices: int64 [R],
            ascending.
    Returns:
        float32 [R, d].
    """
    to_kept = similarity.index_select(1, indices)  # [N, R]
    target = argmax_lowest_rows(to_kept)  # [N], a position in `indices`
    weight = torch.where(selected, 0.0, to_kept.gather(1, target[:, None])[:, 0].to(states.dtype))  # [N]
    assign = one_hot(target, indices.shape[0]).to(states.dtype) * weight[:, None]  # [N, R]
    total_weight = assign.sum(dim=0)  # [R]
    merged = (assign.T @ states) / total_weight.clamp_min(1e-8)[:, None]  # [R, d]
    kept = states.index_select(0, indices)
    return torch.where((total_weight > 0)[:, None], beta * kept + (1 - beta) * merged, kept)
