"""Checks of user input, with errors that name the problem."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pruning_graph.definitions import Views

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
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n:
        raise ValueError(f"keep must be an integer in [1, N] = [1, {n}], got {keep!r}")
    return views


def _is_view(view: object) -> bool:
    return (
        isinstance(view, (tuple, list))
        and len(view) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in view)
    )


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
