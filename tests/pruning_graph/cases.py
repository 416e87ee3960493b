"""The parity suite's cases: generated images (pruning_graph.synthetic) at every grid, width and
keep count the suite covers, one view or several."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from pruning_graph import VLMPrunerConfig
from pruning_graph.synthetic import make_image, make_views

GRIDS = ((24, 24), (12, 12), (16, 20), (7, 13))
# (dk, d): d below and above the channel-screening width q = 256.
WIDTHS = ((64, 96), (128, 384))
KINDS = ("objects", "objects", "uniform", "duplicates")
# Non-default hyperparameters. tau_step=1 leaves one finite pass, so the final +inf pass runs: with
# one grid, delta < 1 and the last finite threshold 1 + lam already accepts every candidate.
CONFIGS = (
    VLMPrunerConfig(tau_step=1.0),
    VLMPrunerConfig(block=7, kappa=1),
    VLMPrunerConfig(q=8, lam=0.0, tau0=0.5),
    VLMPrunerConfig(beta=1.0, kappa=9, block=1),
)


@dataclass(frozen=True)
class Case:
    name: str
    keys: Tensor
    hidden: Tensor
    grid: tuple[int, int] | tuple[tuple[int, int], ...]
    keep: int
    config: VLMPrunerConfig = VLMPrunerConfig()


def keep_counts(n: int, kappa: int = 4) -> list[int]:
    """{1, kappa, 64, 128, 192, N-1, N} within [1, N]."""
    return sorted({k for k in (1, kappa, 64, 128, 192, n - 1, n) if 1 <= k <= n})


def all_cases() -> list[Case]:
    cases = []
    for grid in GRIDS:
        for dk, d in WIDTHS:
            for variant, kind in enumerate(KINDS):
                seed = 1000 * grid[0] + 10 * grid[1] + variant + dk
                keys, hidden = make_image(kind, grid, dk, d, seed)
                for keep in keep_counts(grid[0] * grid[1]):
                    name = f"{kind}{variant}-{grid[0]}x{grid[1]}-d{d}-keep{keep}"
                    cases.append(Case(name, keys, hidden, grid, keep))
    keys, hidden = make_image("objects", (24, 24), 128, 384, seed=7)
    for number, config in enumerate(CONFIGS):
        for keep in (64, 192):
            cases.append(Case(f"config{number}-24x24-d384-keep{keep}", keys, hidden, (24, 24), keep, config))
    return cases


# Several views (spec section 6), small enough for the reference: LLaVA-NeXT's layout scaled down
# (a 6x6 base view, then a 12x12 high-resolution view whose rows end in a shared newline token:
# 12 rows x 13 columns), video frames, and views of unequal sizes. With kappa = 1 most views start
# without a pivot (delta = 1 there).
MULTI_VIEWS = (
    ((6, 6), (12, 13)),
    ((7, 7),) * 4,
    ((5, 9), (3, 4), (10, 6), (1, 1)),
)


def multi_view_cases() -> list[Case]:
    cases = []
    for number, views in enumerate(MULTI_VIEWS):
        n = sum(height * width for height, width in views)
        for variant, kind in enumerate(("objects", "duplicates")):
            dk, d = WIDTHS[variant]
            keys, hidden = make_views(kind, views, dk, d, seed=100 * number + variant, newline=number == 0)
            name = f"{kind}-views{number}-d{d}"
            for keep in (4, n // 3, n - 1) if kind == "objects" else (n // 3,):
                cases.append(Case(f"{name}-keep{keep}", keys, hidden, views, keep))
            cases.append(Case(f"{name}-keep{n // 3}-kappa1", keys, hidden, views, n // 3, CONFIGS[1]))
    return cases
