"""Checks of user input, with errors that name the problem."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pruning_graph.definitions import Views

def check_keep(keep: int, num_tokens: int | None = None) -> None:
    """Validate the keep count: an integer in [1, N], or >= 1 where N is not known yet."""
    is_int = isinstance(keep, int) and not isinstance(keep, bool)
    if not is_int or keep < 1 or (num_tokens is not None and keep > num_tokens):
        bound = ">= 1" if num_tokens is None else f"in [1, N] = [1, {num_tokens}]"
        raise ValueError(f"keep must be an integer {bound}, got {keep!r}")


# One view (H, W), or a sequence of views [(H1, W1), (H2, W2), ...].
Grid = tuple[int, int] | Sequence[tuple[int, int]]


def check_grid_and_keep(grid: Grid, keep: int, num_tokens: int | None = None) -> Views:
    """Validate the grid and the keep count; returns the grid as views [(H1, W1), ...].

    `grid` is one view (H, W), or a sequence of views [(H1, W1), (H2, W2), ...] in sequence order:
    (24, 24) and [(24, 24)] are the same single view.
    """
    if _is_view(grid):
        views = (tuple(grid),)
    elif isinstance(grid, (tuple, list)) and grid and all(isinstance(view, (tuple, list)) for view in grid):
        for number, view in enumerate(grid):
            if not _is_view(view):
                raise ValueError(f"view {number} of grid must be a pair of positive integers (H, W), got {view!r}")
        views = tuple(tuple(view) for view in grid)
    else:
        raise ValueError(
            f"grid must be a pair of positive integers (H, W), or a non-empty sequence of such pairs "
            f"(one per view), got {grid!r}"
        )
    n = sum(height * width for height, width in views)
    if num_tokens is not None and n != num_tokens:
        cells = "H*W" if len(views) == 1 else "the sum of H*W over its views"
        raise ValueError(f"grid {tuple(grid)} has {cells} = {n} cells but there are {num_tokens} image tokens")
    check_keep(keep, n)
    return views


def _is_view(view: object) -> bool:
    return (
        isinstance(view, (tuple, list))
        and len(view) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in view)
    )


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
