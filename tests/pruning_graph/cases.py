"""The parity suite's cases: generated images (pruning_graph.synthetic) at every grid, width and
keep count the suite covers."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from pruning_graph import VLMPrunerConfig
from pruning_graph.synthetic import make_image

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
    grid: tuple[int, int]
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
