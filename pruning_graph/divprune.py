"""DivPrune (Alvar et al., CVPR 2025): keep a maximally diverse subset of the visual tokens.

Spec (baselines_spec.md, DivPrune): with d_ij = 1 - cos(v_i, v_j), the first token is the most
isolated one, argmax_i min_{j != i} d_ij; each next one is argmax_{i not in S} min_{s in S} d_is,
until R are chosen; ties to the lowest index. The static twin runs the R - 1 greedy steps as a
`scan` (one step traced once, not R times; see README "Loops as scan"). Selection order: the
greedy's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pruning_graph.definitions import DECISION_DTYPE, constant, cosine_similarity_matrix
from pruning_graph.static_ops import argmax_lowest, loop_scan, mask_to_indices, one_hot
from pruning_graph.validation import check_finite, check_keep, check_matrix


def cosine_distances(embeds: Tensor) -> Tensor:
    """d_ij = 1 - cos(v_i, v_j) in float64 from the settled similarity: float [N, d] -> float64 [N, N]."""
    similarity = cosine_similarity_matrix(embeds.to(DECISION_DTYPE))
    return constant(1.0, similarity) - similarity


def divprune_reference(embeds: Tensor, keep: int) -> Tensor:
    """DivPrune, written to be read.

    Args:
        embeds: float [N, d], the projected visual tokens (the vision encoder's output).
        keep: R, 1 <= R <= N.
    Returns:
        int64 [R], the kept tokens, ascending.
    """
    return divprune_reference_order(embeds, keep).sort().values


def divprune_reference_order(embeds: Tensor, keep: int) -> Tensor:
    """`divprune_reference`'s tokens in selection order (the greedy's): int64 [R]."""
    _check(embeds, keep)
    distance = cosine_distances(embeds).tolist()
    isolation = {i: min(row[:i] + row[i + 1 :], default=math.inf) for i, row in enumerate(distance)}
    selected = [_argmax_lowest(isolation)]
    # nearest[i] = min_{s in S} d_is for every token i not in S.
    nearest = {i: row[selected[0]] for i, row in enumerate(distance) if i != selected[0]}
    while len(selected) < keep:
        pick = _argmax_lowest(nearest)
        selected.append(pick)
        del nearest[pick]
        for i in nearest:
            nearest[i] = min(nearest[i], distance[i][pick])
    return torch.tensor(selected, dtype=torch.int64)


def divprune_select(embeds: Tensor, keep: int) -> Tensor:
    """DivPrune as static-shape ops: same contract and tokens as `divprune_reference`."""
    _check(embeds, keep)
    return _select(embeds, keep)[0]


class DivPruneSelect(nn.Module):
    """`divprune_select` for one keep count, as a module to export.

    forward(embeds [N, d]) -> indices int64 [R].
    """

    def __init__(self, keep: int):
        super().__init__()
        check_keep(keep)
        self.keep = keep

    def forward(self, embeds: Tensor) -> Tensor:
        return self.ordered(embeds)[0]

    def ordered(self, embeds: Tensor) -> tuple[Tensor, Tensor]:
        """forward's indices, and the same tokens in selection order (`divprune_reference_order`)."""
        _check(embeds, self.keep)
        return _select(embeds, self.keep)

    def extra_repr(self) -> str:
        return f"keep={self.keep}"


def _check(embeds: Tensor, keep: int) -> None:
    check_matrix("embeds", embeds, "[N, d]")
    check_keep(keep, embeds.shape[0])
    check_finite(embeds=embeds)


def _argmax_lowest(scores: dict[int, float]) -> int:
    best = max(scores.values())
    return min(i for i, s in scores.items() if s == best)


def _select(embeds: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """On validated inputs: (kept int64 [R] ascending, the same in selection order)."""
    distance = cosine_distances(embeds)  # [N, N]
    n = distance.shape[0]
    diagonal = one_hot(torch.arange(n, device=distance.device), n)
    first = argmax_lowest(torch.where(diagonal, math.inf, distance).amin(dim=1))  # [1]
    selected = one_hot(first, n)[0]
    nearest = distance.index_select(1, first)[:, 0]  # min_{s in S} d_is

    def step(carry: tuple[Tensor, Tensor], _: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        selected, nearest = carry
        # Distances are finite: -inf keeps the selected tokens out.
        pick = argmax_lowest(torch.where(selected, -math.inf, nearest))
        nearest = torch.minimum(nearest, distance.index_select(1, pick)[:, 0])
        return (selected | one_hot(pick, n)[0], nearest), pick

    if keep == 1:
        return first, first.clone()
    (selected, _), picks = loop_scan(step, (selected, nearest), torch.arange(keep - 1, device=distance.device))
    # picks: [R - 1, 1]. (A reshape of the scan output failed ExecuTorch's emitter: "Guard
    # shape_dynamism_eq_base failed"; column indexing emits.)
    return mask_to_indices(selected, keep), torch.cat([first, picks[:, 0]])
