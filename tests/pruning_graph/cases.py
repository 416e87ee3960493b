"""Generated selection inputs: the parity suite's cases.

Three kinds of image, all deterministic from a seed:
- objects: a smooth background with a few soft-edged objects, each with its own feature vector,
  plus noise. Similarities spread over the thresholds, so several greedy passes run.
- uniform: one feature vector everywhere plus tiny noise. Everything looks redundant; the released
  code would stop after the pivots, the fill rule keeps going.
- duplicates: an objects image where a third of the tokens copy another token exactly (keys and
  hidden): exact ties in every stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pruning_graph import VLMPrunerConfig

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


def make_image(kind: str, grid: tuple[int, int], dk: int, d: int, seed: int) -> tuple[Tensor, Tensor]:
    """keys float32 [N, dk], hidden float32 [N, d] for one generated image."""
    g = torch.Generator().manual_seed(seed)
    height, width = grid
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    xs, ys = xs.reshape(-1, 1), ys.reshape(-1, 1)
    if kind == "uniform":
        hidden = torch.randn(1, d, generator=g) + 1e-3 * torch.randn(height * width, d, generator=g)
    else:
        # Low-frequency background: a few random plane waves.
        freq = 3 * torch.rand(4, 2, generator=g)
        phase = 2 * math.pi * torch.rand(4, generator=g)
        waves = torch.cos(2 * math.pi * (xs * freq[:, 0] + ys * freq[:, 1]) + phase)  # [N, 4]
        hidden = waves @ torch.randn(4, d, generator=g)
        for _ in range(3):
            cx, cy, radius = torch.rand(3, generator=g).tolist()
            mask = torch.sigmoid((radius * 0.4 + 0.1 - torch.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)) * 40)
            hidden = hidden + 3 * mask * torch.randn(1, d, generator=g)
        hidden = hidden + 0.3 * torch.randn(height * width, d, generator=g)
    keys = hidden @ torch.randn(d, dk, generator=g) / math.sqrt(d) + 0.1 * torch.randn(height * width, dk, generator=g)
    if kind == "duplicates":
        n = height * width
        copies = torch.randperm(n, generator=g)[: n // 3]
        sources = torch.randint(0, n, (copies.numel(),), generator=g)
        keys[copies] = keys[sources]
        hidden[copies] = hidden[sources]
    return keys, hidden


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
