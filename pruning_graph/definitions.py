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

import math

import torch
from torch import Tensor

_NORM_EPS = 1e-12
DECISION_DTYPE = torch.float64

# ExecuTorch's portable kernels, measured in float64: a sum over a dim accumulates at float32
# precision (3.8e-6 off on 32 values) and a Python scalar operand is rounded to float32, while mm,
# sqrt and tensor-tensor arithmetic are exact. So reductions are matmuls with a ones vector and
# constants are float64 tensors.


def constant(value: float, like: Tensor) -> Tensor:
    """A 0-d tensor of `like`'s dtype and device, so no backend rounds it to float32."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


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


def channel_spread(hidden: Tensor) -> Tensor:
    """Per-channel sum of squared deviations over the tokens, settled: [N, d] -> [d].

    It is the unbiased variance times N - 1: the same channel ranking, without the division
    (and defined for N = 1).
    """
    centred = hidden - column_sums(hidden) / hidden.shape[0]
    return settle(column_sums(centred * centred))


def grid_distance(grid: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
    """Euclidean distance of the row-major grid positions, divided by the grid's diagonal.

    Token i sits at (i mod W, i // W); the result lies in [0, 1).

    Args:
        grid: (H, W).
    Returns:
        float64 [H*W, H*W].
    """
    height, width = grid
    index = torch.arange(height * width, device=device)
    x = (index % width).to(DECISION_DTYPE)
    y = torch.div(index, width, rounding_mode="floor").to(DECISION_DTYPE)
    dx = x[:, None] - x[None, :]
    dy = y[:, None] - y[None, :]
    return settle(torch.sqrt(dx * dx + dy * dy) / constant(math.sqrt(height * height + width * width), x))
