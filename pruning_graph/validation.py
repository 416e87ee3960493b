"""Checks of user input, with errors that name the problem."""

from __future__ import annotations

import torch
from torch import Tensor


def check_keep(keep: int, num_tokens: int | None = None) -> None:
    """Validate the keep count: an integer in [1, N], or >= 1 where N is not known yet."""
    is_int = isinstance(keep, int) and not isinstance(keep, bool)
    if not is_int or keep < 1 or (num_tokens is not None and keep > num_tokens):
        bound = ">= 1" if num_tokens is None else f"in [1, N] = [1, {num_tokens}]"
        raise ValueError(f"keep must be an integer {bound}, got {keep!r}")


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
    check_keep(keep, n)
    return n


def check_matrix(name: str, x: Tensor, shape: str) -> None:
    """x must be a 2-D floating-point tensor; `shape` names its dims in the error, e.g. "[N, d]"."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")


def check_same_size(dim: int, what: str, **tensors: Tensor) -> None:
    """The named tensors agree on `dim` (`what` names it in the error: "tokens", "features")."""
    (first, x), *others = tensors.items()
    for name, y in others:
        if y.shape[dim] != x.shape[dim]:
            raise ValueError(f"{first} has {x.shape[dim]} {what} but {name} has {y.shape[dim]}")


def check_finite(**tensors: Tensor) -> None:
    """No NaN or infinity. It reads data, so it is skipped while tracing for export."""
    if torch.compiler.is_compiling():
        return
    for name, x in tensors.items():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinite values")


def check_features(keys: Tensor, hidden: Tensor) -> int:
    """Validate the selection inputs keys [N, dk] and hidden [N, d]; returns N."""
    check_matrix("keys", keys, "[N, features]")
    check_matrix("hidden", hidden, "[N, features]")
    check_same_size(0, "tokens", keys=keys, hidden=hidden)
    check_finite(keys=keys, hidden=hidden)
    return keys.shape[0]
