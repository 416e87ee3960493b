"""The two matrices the selection is defined on (spec section 3), shared by every implementation.

Both implementations read the same similarity and distance values, so that a comparison between
them tests the selection procedure itself and not the rounding of two ways to compute a cosine.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_NORM_EPS = 1e-12


def cosine_similarity_matrix(x: Tensor) -> Tensor:
    """Pairwise cosine similarity; a zero vector is 0-similar to everything.

    Args:
        x: float [N, c].
    Returns:
        float [N, N].
    """
    unit = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(_NORM_EPS)
    return unit @ unit.T


def channel_spread(hidden: Tensor) -> Tensor:
    """Per-channel sum of squared deviations over the tokens, [N, d] -> [d].

    It is the unbiased variance times N - 1: the same channel ranking, without the division
    (and defined for N = 1).
    """
    centred = hidden - hidden.mean(dim=0, keepdim=True)
    return (centred * centred).sum(dim=0)


def grid_distance(grid: tuple[int, int]) -> Tensor:
    """Euclidean distance of the row-major grid positions, divided by the grid's diagonal.

    Token i sits at (i mod W, i // W); the result lies in [0, 1].

    Args:
        grid: (H, W).
    Returns:
        float32 [H*W, H*W].
    """
    height, width = grid
    index = torch.arange(height * width)
    x = (index % width).to(torch.float32)
    y = torch.div(index, width, rounding_mode="floor").to(torch.float32)
    dx = x[:, None] - x[None, :]
    dy = y[:, None] - y[None, :]
    return torch.sqrt(dx * dx + dy * dy) / math.sqrt(height * height + width * width)
