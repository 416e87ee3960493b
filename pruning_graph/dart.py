"""DART (Wen et al., EMNLP 2025): keep the image tokens least similar to a few pivot tokens.

Spec (baselines_spec.md, DART): pivots are the P = min(4, R) image tokens and the 4 text tokens
after the image with the largest key L1 norms (descending, ties to the lowest index). The image
pivots are kept. Then, for each of the 8 pivots in that order, the Q_p pool tokens (image tokens
not yet kept) with the lowest cosine similarity to the pivot's normalised state are kept too, ties
to the lowest index. Budget (project's choice): Q_p = floor((R - P) / 8), plus one for each of
the first (R - P) mod 8 pivots, so exactly R tokens are kept. Selection order: the image pivots,
then each pivot's tokens from the least similar, pivot by pivot.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pruning_graph.definitions import DECISION_DTYPE, cosine_similarity, l1_norms
from pruning_graph.static_ops import mask_to_indices, one_hot, order_lexicographic, top_k_mask, top_k_order
from pruning_graph.validation import check_finite, check_keep, check_matrix, check_same_size

PIVOTS = 4  # per group: image pivots, then text pivots


def dart_budgets(keep: int) -> list[int]:
    """Q_p for the 2 * PIVOTS pivots in order; they sum to R - min(PIVOTS, R)."""
    share, extra = divmod(keep - min(PIVOTS, keep), 2 * PIVOTS)
    return [share + (p < extra) for p in range(2 * PIVOTS)]


def dart_reference(
    image_keys: Tensor, image_states: Tensor, text_keys: Tensor, text_states: Tensor, keep: int
) -> Tensor:
    """DART, written to be read.

    Args:
        image_keys: float [N, dk], layer K-1's post-RoPE keys of the image tokens (heads concatenated).
        image_states: float [N, d], layer K-1's output states of the image tokens, final-normed.
        text_keys: float [M, dk], the same for the M >= 4 text tokens after the image.
        text_states: float [M, d].
        keep: R, 1 <= R <= N.
    Returns:
        int64 [R], the kept tokens, ascending.
    """
    return dart_reference_order(image_keys, image_states, text_keys, text_states, keep).sort().values


def dart_reference_order(
    image_keys: Tensor, image_states: Tensor, text_keys: Tensor, text_states: Tensor, keep: int
) -> Tensor:
    """`dart_reference`'s tokens in selection order: int64 [R]."""
    n = _check(image_keys, image_states, text_keys, text_states, keep)
    image_norms = l1_norms(image_keys.to(DECISION_DTYPE)).tolist()
    text_norms = l1_norms(text_keys.to(DECISION_DTYPE)).tolist()
    image_pivots = sorted(range(n), key=lambda i: (-image_norms[i], i))[: min(PIVOTS, keep)]
    text_pivots = sorted(range(len(text_norms)), key=lambda j: (-text_norms[j], j))[:PIVOTS]

    states = image_states.to(DECISION_DTYPE)
    pivot_states = torch.cat([states[image_pivots], text_states.to(DECISION_DTYPE)[text_pivots]])
    # One row per pivot, in order. (With fewer than 4 image pivots, R = P and every budget is 0.)
    similarity = cosine_similarity(pivot_states, states).tolist()
    kept = list(image_pivots)
    pool = set(range(n)) - set(kept)
    for row, budget in zip(similarity, dart_budgets(keep)):
        least_similar = sorted(pool, key=lambda i: (row[i], i))[:budget]
        kept.extend(least_similar)
        pool.difference_update(least_similar)
    return torch.tensor(kept, dtype=torch.int64)


def dart_select(
    image_keys: Tensor, image_states: Tensor, text_keys: Tensor, text_states: Tensor, keep: int
) -> Tensor:
    """DART as static-shape ops: same contract and tokens as `dart_reference`."""
    _check(image_keys, image_states, text_keys, text_states, keep)
    return _select(image_keys, image_states, text_keys, text_states, keep)[0]


class DARTSelect(nn.Module):
    """`dart_select` for one keep count, as a module to export.

    forward(image_keys [N, dk], image_states [N, d], text_keys [M, dk], text_states [M, d])
    -> indices int64 [R].
    """

    def __init__(self, keep: int):
        super().__init__()
        check_keep(keep)
        self.keep = keep

    def forward(self, image_keys: Tensor, image_states: Tensor, text_keys: Tensor, text_states: Tensor) -> Tensor:
        return self.ordered(image_keys, image_states, text_keys, text_states)[0]

    def ordered(
        self, image_keys: Tensor, image_states: Tensor, text_keys: Tensor, text_states: Tensor
    ) -> tuple[Tensor, Tensor]:
        """forward's indices, and the same tokens in selection order (`dart_reference_order`)."""
        _check(image_keys, image_states, text_keys, text_states, self.keep)
        return _select(image_keys, image_states, text_keys, text_states, self.keep)

    def extra_repr(self) -> str:
        return f"keep={self.keep}"


def _check(image_keys: Tensor, image_states: Tensor, text_keys: Tensor, text_states: Tensor, keep: int) -> int:
    """Validate the inputs; returns N."""
    tensors = dict(image_keys=image_keys, image_states=image_states, text_keys=text_keys, text_states=text_states)
    for (name, x), shape in zip(tensors.items(), ("[N, dk]", "[N, d]", "[M, dk]", "[M, d]")):
        check_matrix(name, x, shape)
    check_same_size(0, "tokens", image_keys=image_keys, image_states=image_states)
    check_same_size(0, "tokens", text_keys=text_keys, text_states=text_states)
    check_same_size(1, "features", image_keys=image_keys, text_keys=text_keys)
    check_same_size(1, "features", image_states=image_states, text_states=text_states)
    if text_keys.shape[0] < PIVOTS:
        raise ValueError(
            f"DART needs at least {PIVOTS} text tokens after the image (its text pivots), got {text_keys.shape[0]}"
        )
    check_keep(keep, image_keys.shape[0])
    check_finite(**tensors)
    return image_keys.shape[0]


def dart_text_pivots(keys: Tensor, after_image: Tensor | None = None) -> Tensor:
    """The text pivots: the `PIVOTS` tokens with the largest key L1 norms, descending, ties to the
    lowest index, among the tokens marked `after_image` (default all).

    Args:
        keys: float [M, dk]; M may be a dynamic length (the model passes every prompt token).
        after_image: bool [M], the text tokens after the image; at least `PIVOTS` of them.
    Returns:
        int64 [PIVOTS], rows of `keys`.
    """
    norms = l1_norms(keys.to(DECISION_DTYPE))
    # Norms are >= 0: -1 puts every other token behind the candidates.
    return top_k_order(norms if after_image is None else torch.where(after_image, norms, -1.0), PIVOTS)


def dart_select_pivoted(
    image_keys: Tensor, image_states: Tensor, text_pivot_states: Tensor, keep: int
) -> tuple[Tensor, Tensor]:
    """DART once its text pivots are chosen (`dart_text_pivots`), on validated inputs.

    Args:
        image_keys: float [N, dk]. image_states: float [N, d], final-normed.
        text_pivot_states: float [PIVOTS, d], the text pivots' final-normed states, in pivot order.
        keep: R.
    Returns:
        kept: int64 [R], ascending; order: int64 [R], the same in selection order.
    """
    n = image_keys.shape[0]
    image_pivots = top_k_order(l1_norms(image_keys.to(DECISION_DTYPE)), min(PIVOTS, keep))
    states = image_states.to(DECISION_DTYPE)
    pivot_states = torch.cat([states.index_select(0, image_pivots), text_pivot_states.to(DECISION_DTYPE)])
    similarity = cosine_similarity(pivot_states, states)  # [P + 4, N], one row per pivot, in order
    pivots = one_hot(image_pivots, n)  # [P, N]
    kept = pivots.any(dim=0)
    # The selection order's keys: the step that kept a token (-1: an image pivot), then its
    # similarity to that step's pivot (an image pivot: its place among the pivots).
    step = torch.where(kept, -1.0, math.inf).to(DECISION_DTYPE)
    rank = (pivots * torch.arange(pivots.shape[0], device=image_keys.device)[:, None]).sum(dim=0).to(DECISION_DTYPE)
    for p, budget in enumerate(dart_budgets(keep)):
        if budget:
            # The pool is every token not kept yet; kept tokens score -inf and are never taken again.
            taken = top_k_mask(torch.where(kept, -math.inf, -similarity[p]), budget)
            kept = kept | taken
            step = torch.where(taken, float(p), step)
            rank = torch.where(taken, similarity[p], rank)
    indices = mask_to_indices(kept, keep)
    order = order_lexicographic(step.index_select(0, indices), rank.index_select(0, indices))
    return indices, indices.index_select(0, order)


def _select(
    image_keys: Tensor, image_states: Tensor, text_keys: Tensor, text_states: Tensor, keep: int
) -> tuple[Tensor, Tensor]:
    """On validated inputs."""
    text_pivot_states = text_states.index_select(0, dart_text_pivots(text_keys))
    return dart_select_pivoted(image_keys, image_states, text_pivot_states, keep)
