"""Export-friendly building blocks with explicit lowest-index tie-breaking.

Every function has output shapes fixed by its input shapes and Python ints, and uses only ops that
torch.export, ONNX Runtime and the ExecuTorch portable kernels all run: no sort/argsort (no
ExecuTorch kernel), no nonzero/isin, no indexing with a 0-d tensor. Ties are resolved here, by
index arithmetic, never left to a kernel (ONNX TopK and PyTorch topk order ties differently).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch._higher_order_ops.scan import scan

# Rows of pairwise comparisons `rank_ascending` makes at a time: [1024, N] bool.
_RANK_ROWS = 1024


def argmax_lowest(scores: Tensor) -> Tensor:
    """Index of the largest score, the lowest index among equals: [N] -> int64 [1]."""
    n = scores.shape[0]
    index = torch.arange(n, device=scores.device)
    best = scores.max()
    return torch.where(scores == best, index, n).amin(dim=0, keepdim=True)


def argmax_lowest_rows(scores: Tensor) -> Tensor:
    """Row-wise `argmax_lowest`: [M, N] -> int64 [M]."""
    n = scores.shape[1]
    index = torch.arange(n, device=scores.device)
    best = scores.amax(dim=1, keepdim=True)
    return torch.where(scores == best, index, n).amin(dim=1)


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Mask of the k largest scores, the lower index first among equals: [N] -> bool [N].

    topk is used only for the k-th largest value, which does not depend on how the kernel orders
    ties; the tied entries at that value are then taken by ascending index.
    """
    if k >= scores.shape[0]:
        return torch.ones_like(scores, dtype=torch.bool)
    kth = torch.topk(scores, k).values[k - 1]
    above = scores > kth
    at = scores == kth
    room = k - above.sum()
    return above | (at & (torch.cumsum(at.to(torch.int64), dim=0) <= room))


def top_k_order(scores: Tensor, k: int) -> Tensor:
    """Indices of the k largest scores, largest first, the lowest index first among equals:
    [N] -> int64 [k], k <= N.

    k argmax passes, each taking the winner out with -inf: no rank matrix, so N may be a dynamic
    length (a sequence), where `order_ascending` needs a static one. Scores must be > -inf.
    """
    picks = []
    for _ in range(k):
        pick = argmax_lowest(scores)  # [1]
        picks.append(pick)
        scores = scores.index_fill(0, pick, -math.inf)
    return torch.cat(picks)


def mask_to_indices(mask: Tensor, count: int) -> Tensor:
    """Ascending indices of the True entries of a mask known to hold `count` of them.

    Args:
        mask: bool [N] with exactly `count` True entries.
    Returns:
        int64 [count].
    """
    return compact(torch.arange(mask.shape[0], device=mask.device), mask, count)


def compact(values: Tensor, mask: Tensor, count: int) -> Tensor:
    """The entries of `values` where `mask` is True, in order (a static boolean-mask gather).

    Args:
        values: int64 [P]. mask: bool [P] with exactly `count` True entries.
    Returns:
        int64 [count].
    """
    # The r-th True entry goes to slot r; the False ones all add into a spare slot `count`.
    slot = torch.where(mask, torch.cumsum(mask.to(torch.int64), dim=0) - 1, count)
    return torch.zeros(count + 1, dtype=torch.int64, device=mask.device).scatter_add(0, slot, values)[:count]


def rank_ascending(values: Tensor) -> Tensor:
    """Rank of each value in ascending order, ties by lower index: float [N] -> int64 [N].

    rank_i = #{j : v_j < v_i or (v_j == v_i and j < i)}, a permutation of 0..N-1. The pairwise
    comparisons are made for 1024 rows at a time (a bool count over a dim makes an int64 copy).
    """
    n = values.shape[0]
    index = torch.arange(n, device=values.device)
    ranks = []
    for start in range(0, n, _RANK_ROWS):
        v, i = values[start : start + _RANK_ROWS, None], index[start : start + _RANK_ROWS, None]
        before = (values[None, :] < v) | ((values[None, :] == v) & (index[None, :] < i))
        ranks.append(before.sum(dim=1))
    return torch.cat(ranks)


def order_ascending(values: Tensor) -> Tensor:
    """Indices that sort `values` ascending, ties by lower index (a stable argsort): [N] -> int64 [N].

    topk sorts the values; only the order of tied entries is the kernel's. Numbering the runs of
    equal sorted values (a dense rank) gives every entry the unique key (rank, index), whose
    sorted order is the stable one on every backend. Two sorts of N, no N x N comparisons.
    """
    n = values.shape[0]
    sorted_values, by_value = torch.topk(values, n, largest=False)
    first = torch.zeros(1, dtype=torch.bool, device=values.device)
    new_run = torch.cat([first, sorted_values[1:] != sorted_values[:-1]])
    key = torch.cumsum(new_run.to(torch.int64), dim=0) * n + by_value
    return by_value.index_select(0, torch.topk(key, n, largest=False).indices)


def order_lexicographic(primary: Tensor, secondary: Tensor) -> Tensor:
    """Indices that sort by (primary, secondary, index) ascending: float [N], [N] -> int64 [N].

    Two stable sorts, the minor key first (a radix sort of two digits).
    """
    by_secondary = order_ascending(secondary)
    return by_secondary.index_select(0, order_ascending(primary.index_select(0, by_secondary)))


def one_hot(index: Tensor, n: int) -> Tensor:
    """int64 [k] -> bool [k, n]."""
    return index[:, None] == torch.arange(n, device=index.device)[None, :]


def cond_branch(pred: Tensor, live: Callable, dead: Callable, operands: tuple[Tensor, ...]) -> object:
    """`torch.cond` when tracing for export; in eager, the Python `if` it means (the eager
    operator compiles its branches first). `pred` is a 0-d bool tensor."""
    if torch.compiler.is_compiling():
        return torch.cond(pred, live, dead, operands)
    return live(*operands) if pred else dead(*operands)


def loop_scan(
    step: Callable, carry: tuple[Tensor, ...], xs: Tensor | tuple[Tensor, ...]
) -> tuple[tuple[Tensor, ...], Tensor]:
    """`scan` when tracing for export; in eager, the Python loop it is documented to mean (the
    eager operator compiles its closure first: 1.9 s on the first call, 2-3x slower after).
    `xs` is one tensor or a tuple of them, scanned along dim 0 together."""
    if torch.compiler.is_compiling():
        return scan(step, carry, xs)
    ys = []
    for x in xs if isinstance(xs, Tensor) else zip(*xs):
        carry, y = step(carry, x)
        ys.append(y)
    return carry, torch.stack(ys)
