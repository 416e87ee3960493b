"""FastV (Chen et al., ECCV 2024): keep the image tokens the last prompt token attends to most.

Spec (baselines_spec.md, FastV): the score of image token i is the attention probability from the
last prompt token to i in layer K-1, averaged over the query heads; the R highest scores are kept,
ties to the lowest index. The reference ranks with Python's sort; the static twin is a
tie-explicit top-k mask. Both read the same settled float64 scores. Selection order: by rank,
the highest score first.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pruning_graph.definitions import DECISION_DTYPE, column_sums, constant, settle
from pruning_graph.static_ops import mask_to_indices, order_ascending, top_k_mask
from pruning_graph.validation import check_finite, check_keep, check_matrix


def fastv_scores(attention: Tensor) -> Tensor:
    """Mean over the heads, in float64, settled: float [heads, N] -> float64 [N]."""
    exact = attention.to(DECISION_DTYPE)
    return settle(column_sums(exact) / constant(exact.shape[0], exact))


def fastv_reference(attention: Tensor, keep: int) -> Tensor:
    """FastV, written to be read.

    Args:
        attention: float [heads, N], the last prompt token's attention probabilities to the N
            image tokens in layer K-1 (one row per query head).
        keep: R, 1 <= R <= N.
    Returns:
        int64 [R], the kept tokens, ascending.
    """
    return fastv_reference_order(attention, keep).sort().values


def fastv_reference_order(attention: Tensor, keep: int) -> Tensor:
    """`fastv_reference`'s tokens in selection order (by rank): int64 [R]."""
    _check(attention, keep)
    scores = fastv_scores(attention).tolist()
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return torch.tensor(ranked[:keep], dtype=torch.int64)


def fastv_select(attention: Tensor, keep: int) -> Tensor:
    """FastV as static-shape ops: same contract and tokens as `fastv_reference`."""
    _check(attention, keep)
    return _select(attention, keep)[0]


class FastVSelect(nn.Module):
    """`fastv_select` for one keep count, as a module to export.

    forward(attention [heads, N]) -> indices int64 [R].
    """

    def __init__(self, keep: int):
        super().__init__()
        check_keep(keep)
        self.keep = keep

    def forward(self, attention: Tensor) -> Tensor:
        return self.ordered(attention)[0]

    def ordered(self, attention: Tensor) -> tuple[Tensor, Tensor]:
        """forward's indices, and the same tokens in selection order (`fastv_reference_order`)."""
        _check(attention, self.keep)
        return _select(attention, self.keep)

    def extra_repr(self) -> str:
        return f"keep={self.keep}"


def _check(attention: Tensor, keep: int) -> None:
    check_matrix("attention", attention, "[heads, N]")
    check_keep(keep, attention.shape[1])
    check_finite(attention=attention)


def _select(attention: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """(kept int64 [R] ascending, the same in selection order)."""
    scores = fastv_scores(attention)
    kept = mask_to_indices(top_k_mask(scores, keep), keep)
    # Ties by position in `kept`, i.e. by the lower index.
    return kept, kept.index_select(0, order_ascending(-scores.index_select(0, kept)))
