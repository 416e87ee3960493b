"""Synthetic selection inputs: generated images for the parity tests and the benchmarks.

Three kinds of image, all deterministic from a seed (`make_views`: several images, one per view):
- objects: a smooth background with a few soft-edged objects, each with its own feature vector,
  plus noise. Similarities spread over the thresholds, so several greedy passes run.
- uniform: one feature vector everywhere plus tiny noise. Everything looks redundant; the released
  code would stop after the pivots, the fill rule keeps going.
- duplicates: an objects image where a third of the tokens copy another token exactly (keys and
  hidden): exact ties in every stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

KINDS = ("objects", "uniform", "duplicates")


def make_image(kind: str, grid: tuple[int, int], dk: int, d: int, seed: int) -> tuple[Tensor, Tensor]:
    """keys float32 [N, dk], hidden float32 [N, d] for one generated image of the given kind."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
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


def make_views(
    kind: str, views: Sequence[tuple[int, int]], dk: int, d: int, seed: int, newline: bool = False
) -> tuple[Tensor, Tensor]:
    """keys float32 [N, dk], hidden float32 [N, d] for views in sequence order, each its own image.

    newline: every view after the first ends each row with one shared token (keys and hidden), as
    LLaVA-NeXT's image_newline column ends the rows of its stitched high-resolution view.
    """
    g = torch.Generator().manual_seed(seed)
    newline_keys, newline_hidden = torch.randn(1, dk, generator=g), torch.randn(1, d, generator=g)
    parts = []
    for number, (height, width) in enumerate(views):
        keys, hidden = make_image(kind, (height, width), dk, d, seed + 1 + number)
        if newline and number > 0:
            last = (torch.arange(height * width) % width == width - 1)[:, None]
            keys, hidden = torch.where(last, newline_keys, keys), torch.where(last, newline_hidden, hidden)
        parts.append((keys, hidden))
    return torch.cat([keys for keys, _ in parts]), torch.cat([hidden for _, hidden in parts])
