"""Checks of user input, with errors that name the problem."""

from __future__ import annotations

import torch
from torch import Tensor


def check_grid_and_keep(grid: tuple[int, int], keep: int, num_tokens: int | None = None) -> int:
    """Validate (H, W) and the keep count; returns N = H * W."""
    if (
        not isinstance(grid, (tuple, list))
        or len(grid) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in grid)
    ):
        raise ValueError(f"grid must be a pair of positive integers (H, W), got {grid!r}")
    n = grid[0] * grid[1]
    if num_tokens is not None and n != num_tokens:
        raise ValueError(f"grid {tuple(grid)} has H*W = {n} cells but there are {num_tokens} image tokens")
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n:
        raise ValueError(f"keep must be an integer in [1, N] = [1, {n}], got {keep!r}")
    return n


def check_features(keys: Tensor, hidden: Tensor) -> int:
    """Validate the selection inputs keys [N, dk] and hidden [N, d]; returns N.

    The value check (finiteness) reads data, so it is skipped while tracing for export.
    """
    for name, x in (("keys", keys), ("hidden", hidden)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape [N, features], got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if keys.shape[0] != hidden.shape[0]:
        raise ValueError(f"keys has {keys.shape[0]} tokens but hidden has {hidden.shape[0]}")
    if not torch.compiler.is_compiling():
        for name, x in (("keys", keys), ("hidden", hidden)):
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} contains NaN or infinite values")
    return keys.shape[0]
