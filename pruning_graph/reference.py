"""VLM-Pruner token selection, written to be read: the ground truth of the parity tests.

A direct transcription of `docs/vlm_pruner_spec.md` sections 2-5 with Python lists and loops.
The similarity and distance matrices come from `definitions.py`; every decision (argmax, order,
threshold, budget, fusion target) is made here, one token at a time, in float64 tensor arithmetic
with ties broken by the lowest token index; the fused states are summed in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
from pruning_graph.validation import Grid, check_features, check_grid_and_keep


def reference_select(
    keys: Tensor,
    hidden: Tensor,
    grid: Grid,
    keep: int,
    config: VLMPrunerConfig = VLMPrunerConfig(),
) -> tuple[Tensor, Tensor]:
    """Select `keep` of the N image tokens and fuse the others into them.

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
    similarity, selected = _selection(keys, hidden, grid, keep, config)
    kept = sorted(selected)
    fused = _fuse(hidden.float(), similarity, kept, config.beta)
    return torch.tensor(kept, dtype=torch.int64), fused.to(hidden.dtype)


def reference_order(
    keys: Tensor,
    hidden: Tensor,
    grid: Grid,
    keep: int,
    config: VLMPrunerConfig = VLMPrunerConfig(),
) -> Tensor:
    """`reference_select`'s kept tokens in selection order: int64 [R]. The pivots in the order
    of their sampling, then each pass's accepted tokens block by block; the tokens one block
    accepts join S together and are listed in the block's (near-to-far) order."""
    return torch.tensor(_selection(keys, hidden, grid, keep, config)[1], dtype=torch.int64)


def _selection(
    keys: Tensor, hidden: Tensor, grid: Grid, keep: int, config: VLMPrunerConfig
) -> tuple[Tensor, list[int]]:
    """Stages 1-2: (the similarity matrix float64 [N, N], the selected tokens in selection order)."""
    n = check_features(keys, hidden)
    views = check_grid_and_keep(grid, keep, n)
    keys, exact = keys.to(DECISION_DTYPE), hidden.to(DECISION_DTYPE)
    similarity = cosine_similarity_matrix(exact[:, _screened_channels(exact, config.q)])
    distance = grid_distance(views)

    selected = _pivots(keys, min(config.kappa, keep))
    _greedy_fill(selected, similarity, distance, keep, config)
    return similarity, selected


def _screened_channels(states: Tensor, q: int) -> list[int]:
    """The q highest-variance channels (all when d <= q); ties: lower channel first."""
    spread = channel_spread(states).tolist()
    ranked = sorted(range(len(spread)), key=lambda c: (-spread[c], c))
    return sorted(ranked[:q])


def _argmax_lowest(scores: dict[int, float]) -> int:
    best = max(scores.values())
    return min(j for j, s in scores.items() if s == best)


def _pivots(keys: Tensor, count: int) -> list[int]:
    """Stage 1: the largest-L1-norm key, then farthest-point sampling in key space."""
    selected = [_argmax_lowest(dict(enumerate(l1_norms(keys).tolist())))]
    nearest = l2_norms(keys - keys[selected[0]])
    while len(selected) < count:
        candidates = {j: float(nearest[j]) for j in range(len(keys)) if j not in selected}
        selected.append(_argmax_lowest(candidates))
        nearest = torch.minimum(nearest, l2_norms(keys - keys[selected[-1]]))
    return selected


def _redundancy(i: int, selected: list[int], similarity: Tensor, distance: Tensor, lam: float) -> Tensor:
    """m_i(S) = max_{j in S} M_ij * (1 + lam * delta_i(S)), a float64 scalar.

    delta_i(S) = min D_ij / D_max over the j in S of i's own view, 1 when S has none there
    (`distance` is +inf between views).
    """
    delta = torch.minimum(distance[i, selected].min(), constant(1.0, distance))
    return similarity[i, selected].max() * (1 + constant(lam, delta) * delta)


def _greedy_fill(
    selected: list[int], similarity: Tensor, distance: Tensor, keep: int, config: VLMPrunerConfig
) -> int:
    """Stage 2: near-to-far parallel greedy passes with rising thresholds, until |S| == keep.

    Extends `selected` in place; returns the number of passes that ran.
    """
    n = similarity.shape[0]
    for passes, tau in enumerate(config.thresholds()):
        if len(selected) == keep:
            return passes
        threshold = constant(tau, similarity)
        frozen = list(selected)
        candidates = [i for i in range(n) if i not in frozen]
        start = {i: float(_redundancy(i, frozen, similarity, distance, config.lam)) for i in candidates}
        order = sorted(candidates, key=lambda i: (start[i], i))
        for b in range(0, len(order), config.block):
            block = order[b : b + config.block]
            m = {i: _redundancy(i, selected, similarity, distance, config.lam) for i in block}
            accepted = [i for i in block if bool(m[i] < threshold)]
            room = keep - len(selected)
            if len(accepted) > room:
                position = {i: p for p, i in enumerate(block)}
                chosen = set(sorted(accepted, key=lambda i: (float(m[i]), position[i]))[:room])
                accepted = [i for i in accepted if i in chosen]
            selected.extend(accepted)
            if len(selected) == keep:
                return passes + 1
    return len(config.thresholds())


def _fuse(states: Tensor, similarity: Tensor, kept: list[int], beta: float) -> Tensor:
    """Stage 3: each discarded token joins its most similar kept token, weighted by similarity."""
    kept_set = set(kept)
    total = {j: torch.zeros(states.shape[1]) for j in kept}
    weight = {j: torch.zeros(()) for j in kept}
    for u in range(states.shape[0]):
        if u in kept_set:
            continue
        target = _argmax_lowest({j: float(similarity[u, j]) for j in kept})
        w = similarity[u, target].float()
        total[target] = total[target] + w * states[u]
        weight[target] = weight[target] + w
    rows = []
    for j in kept:
        if weight[j] > 0:
            mean = total[j] / weight[j].clamp_min(1e-8)
            rows.append(beta * states[j] + (1 - beta) * mean)
        else:
            rows.append(states[j])
    return torch.stack(rows)
