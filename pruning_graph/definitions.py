"""The two matrices the selection is defined on (spec section 3), shared by every implementation.

Both implementations read the same similarity and distance values, so that a comparison between
them tests the selection procedure itself and not the rounding of two ways to compute a cosine.

Numerics, so that eager PyTorch, ONNX Runtime and ExecuTorch make the same decisions:
- Every quantity a decision reads (norms, distances, channel spreads, similarities) is computed in
  float64, then rounded to float32 precision ("settled") and kept in float64. In plain float32 the
  similarities of a near-uniform image differ by less than the format resolves, and each
  backend's matmul rounding decided differently which kept token a discarded one merged into
  (measured: fused states 3.5e-4 apart in ONNX Runtime). In float64 the backends agree to ~1e-15,
  and settling turns that last-bit noise between, e.g., two exact duplicate tokens back into the
  exact tie it is, which the lowest index then breaks the same way everywhere.
- The arithmetic after settling (m_i = M * (1 + lam * delta), comparisons) is elementwise float64,
  correctly rounded on every backend.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from pruning_graph.static_ops import loop_scan

_NORM_EPS = 1e-12
# Rows of the similarity matrix computed per matmul: a 1024 x N float64 block at a time.
_SIMILARITY_ROWS = 1024
# Views [(H1, W1), (H2, W2), ...] of the image tokens, in sequence order.
Views = tuple[tuple[int, int], ...]
DECISION_DTYPE = torch.float64

# ExecuTorch's portable kernels, measured in float64: a sum over a dim accumulates at float32
# precision (3.8e-6 off on 32 values) and a Python scalar operand is rounded to float32, while mm,
# sqrt and tensor-tensor arithmetic are exact. So reductions are matmuls with a ones vector and
# constants are float64 tensors. Their dtype conversion (`Tensor.to`) takes ~11 ns an element
# (27 ms for a 576 x 4096 matrix), so large inputs are widened by `widen`.


def constant(value: float, like: Tensor) -> Tensor:
    """A 0-d tensor of `like`'s dtype and device, so no backend rounds it to float32."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def widen(x: Tensor) -> Tensor:
    """x in float64, exactly: [N, ...] -> [N, ...].

    Concatenated with a float64 row of zeros, which is then cut off: ExecuTorch's portable `cat`
    converts at ~0.4 ns an element, 25x faster than its `Tensor.to`. (The row must not be empty:
    the edge lowering drops empty `cat` inputs, and with them the float64 result type.)
    """
    pad = torch.zeros((1, *x.shape[1:]), dtype=DECISION_DTYPE, device=x.device)
    return torch.cat([x, pad])[: x.shape[0]]


def narrow(x: Tensor) -> Tensor:
    """x rounded to float32 (any shape): a copy into a float32 tensor, which ExecuTorch's portable
    kernels convert at twice the speed of `Tensor.to`."""
    return torch.empty(x.shape, dtype=torch.float32, device=x.device).copy_(x)


def settle(x: Tensor) -> Tensor:
    """Round float64 values to float32 precision, keeping the float64 dtype."""
    return x.to(torch.float32).to(x.dtype)


def row_sums(x: Tensor) -> Tensor:
    """[N, c] -> [N], as a matrix-matrix product (ExecuTorch's matrix-vector one is inexact)."""
    return (x @ torch.ones(x.shape[1], 1, dtype=x.dtype, device=x.device))[:, 0]


def column_sums(x: Tensor) -> Tensor:
    """[N, c] -> [c], as a matmul."""
    return torch.ones(x.shape[0], dtype=x.dtype, device=x.device) @ x


def l2_norms(x: Tensor) -> Tensor:
    """Euclidean norm of each row, settled: [N, c] -> [N]."""
    return settle(torch.sqrt(row_sums(x * x)))


def l1_norms(x: Tensor) -> Tensor:
    """L1 norm of each row, settled: [N, c] -> [N]."""
    return settle(row_sums(x.abs()))


def _unit_rows(x: Tensor) -> Tensor:
    """Each row divided by its Euclidean norm, clamped at 1e-12 (a zero row stays zero): [N, c] -> [N, c]."""
    norms = torch.maximum(torch.sqrt(row_sums(x * x)), constant(_NORM_EPS, x))
    return x / norms[:, None]


def cosine_similarity_matrix(x: Tensor) -> Tensor:
    """Pairwise cosine similarity, settled; a zero vector is 0-similar to everything.

    Args:
        x: float64 [N, c].
    Returns:
        float64 [N, N].
    """
    unit = _unit_rows(x)
    return settle(unit @ unit.T)


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of every row of `a` to every row of `b`, settled, as above.

    Args:
        a: float64 [A, c]; b: float64 [B, c].
    Returns:
        float64 [A, B].
    """
    return settle(_unit_rows(a) @ _unit_rows(b).T)


def similarity_float32(x: Tensor) -> Tensor:
    """`cosine_similarity_matrix(x)` in float32, computed in blocks of at most 1024 rows: float64
    [N, c] -> float32 [K, rows, N], row i of M at [i // rows, i % rows], K * rows >= N (the rows of
    padding are 0).

    Settled values are float32 numbers, so the float32 storage is exact and takes half the memory;
    the blocks of rows give the same bits as one matmul (measured with MKL), and no N x N float64
    matrix exists at once. The blocks are the steps of a `scan`, whose stacked outputs are the
    result: a concatenation would hold the blocks and the matrix at once (2x), and ExecuTorch's
    XNNPACK delegate takes a float32 `cat` together with the graph's other data-movement ops into
    one call that outputs them all at the same time.
    """
    unit = _unit_rows(x)
    n, c = unit.shape
    blocks = -(-n // _SIMILARITY_ROWS)
    rows = -(-n // blocks)
    padded = torch.cat([unit, torch.zeros((blocks * rows - n, c), dtype=unit.dtype, device=unit.device)])
    others = unit.T

    def block_of_rows(carry: Tensor, block: Tensor) -> tuple[Tensor, Tensor]:
        return carry.clone(), narrow(block @ others)  # a scan step has a carry

    return loop_scan(block_of_rows, torch.zeros(()), padded.reshape(blocks, rows, c))[1]


def channel_spread(hidden: Tensor) -> Tensor:
    """Per-channel sum of squared deviations over the tokens, settled: [N, d] -> [d].

    It is the unbiased variance times N - 1: the same channel ranking, without the division
    (and defined for N = 1).
    """
    centred = hidden - column_sums(hidden) / hidden.shape[0]
    return settle(column_sums(centred * centred))


class TokenLayout(NamedTuple):
    """Where each of the N image tokens sits: its view and its position inside that view's grid."""

    x: Tensor  # float64 [N], column inside the view
    y: Tensor  # float64 [N], row inside the view
    view: Tensor  # int64 [N], index of the view
    diagonal: Tensor  # float64 [N], D_max = sqrt(H^2 + W^2) of the token's view


def token_layout(views: Views, device: torch.device | str | None = None) -> TokenLayout:
    """The layout of views [(H1, W1), ...], in sequence order, each row-major (spec section 6).

    Built from `arange` ops, one run of equal consecutive views at a time (64 video frames are one
    run), so that a traced graph computes it instead of holding N-long constants.
    """
    parts = []
    first = 0
    for (height, width), run in itertools.groupby(views):
        count = len(list(run))
        index = torch.arange(count * height * width, device=device)
        x = (index % width).to(DECISION_DTYPE)
        y = (torch.div(index, width, rounding_mode="floor") % height).to(DECISION_DTYPE)
        view = torch.div(index, height * width, rounding_mode="floor") + first
        diagonal = constant(math.sqrt(height * height + width * width), x).expand(index.shape[0])
        parts.append((x, y, view, diagonal))
        first += count
    return TokenLayout(*(torch.cat(column) for column in zip(*parts)))


def grid_distance_rows(layout: TokenLayout, rows: Tensor, columns: Tensor | None = None) -> Tensor:
    """D_ij / D_max of the rows' view from each token i of `rows` to every token j (or to each
    token j of `columns`), settled.

    Inside a view the result lies in [0, 1); between different views it is +inf.

    Args:
        rows: int64 [k]; columns: int64 [c], or None for all N tokens.
    Returns:
        float64 [k, N] or [k, c].
    """
    x, y, view, diagonal = (column.index_select(0, rows) for column in layout)
    other = layout if columns is None else TokenLayout(*(column.index_select(0, columns) for column in layout))
    dx = x[:, None] - other.x[None, :]
    dy = y[:, None] - other.y[None, :]
    distance = settle(torch.sqrt(dx * dx + dy * dy) / diagonal[:, None])
    return torch.where(view[:, None] == other.view[None, :], distance, math.inf)


class ViewTables(NamedTuple):
    """delta's distances as one small table per distinct view size: token i's distance to token j
    of its own view is `flat[row_start[i] + position[j]]`; to a token of another view it is 1."""

    flat: Tensor  # float32 [sum of (H W)^2 over the distinct view sizes], the tables, flattened
    row_start: Tensor  # int64 [N], where token i's row starts in `flat`
    position: Tensor  # int64 [N], token i's index inside its view, row-major
    view: Tensor  # int64 [N], token i's view


def view_distance_tables(views: Views, device: torch.device | str | None = None) -> ViewTables:
    """`grid_distance(views)` clamped at 1 (delta's value while S has no token in the view), in
    float32 (settled values: float32 holds them exactly), stored once per distinct view size.

    A [H W, H W] table is read off one small image of the distances from its centre cell, E of
    [2H - 1, 2W - 1] computed as `grid_distance_rows` computes each distance: the H x W windows of
    E, in raster order, are the rows of cells (H - 1, W - 1), (H - 1, W - 2), ..., (0, 0). So only
    O(H W) values are computed and no N x N table exists: 64 video frames of 14 x 14 share one
    196 x 196 table. The per-token vectors are made from `arange` ops, one run of equal
    consecutive views at a time, so that a traced graph computes them instead of holding
    N-long constants.
    """
    tables, starts = [], {}
    offset = 0
    for height, width in dict.fromkeys(views):
        dy = torch.arange(1 - height, height, device=device).to(DECISION_DTYPE)[:, None]
        dx = torch.arange(1 - width, width, device=device).to(DECISION_DTYPE)[None, :]
        diagonal = constant(math.sqrt(height * height + width * width), dx)
        image = settle(torch.sqrt(dx * dx + dy * dy) / diagonal).float()
        tables.append(image.unfold(0, height, 1).unfold(1, width, 1).reshape(-1))
        starts[height, width] = offset
        offset += (height * width) ** 2
    parts = []
    first = 0
    for (height, width), run in itertools.groupby(views):
        count, size = len(list(run)), height * width
        index = torch.arange(count * size, device=device)
        position = index % size
        view = torch.div(index, size, rounding_mode="floor") + first
        # The rows of a view's table are its cells in reverse raster order.
        parts.append((starts[height, width] + (size - 1 - position) * size, position, view))
        first += count
    return ViewTables(torch.cat(tables), *(torch.cat(column) for column in zip(*parts)))


def grid_distance(views: Views) -> Tensor:
    """`grid_distance_rows` for every token: float64 [N, N]."""
    layout = token_layout(views)
    return grid_distance_rows(layout, torch.arange(layout.x.shape[0]))
