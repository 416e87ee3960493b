"""Generated cases for the baseline selectors (FastV, DART, DivPrune): the grids of `cases.py`,
inputs of every kind with ties, at keep counts that reach each budget rule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from pruning_graph.synthetic import make_image
from tests.pruning_graph.cases import GRIDS

# (dk, d): widths matter little to these methods' logic and the cosine matrices cost N^2 d, so they
# stay small here; test_baselines.py runs the real width (4096) once per method.
WIDTHS = ((32, 48), (64, 128))
# make_image's kinds, and "zeros": an objects image where every 7th token is the zero vector.
IMAGE_KINDS = ("objects", "uniform", "duplicates", "zeros")
# FastV rows: a GQA softmax, flat (every probability equal), quantized to 2^-8 (ties and zeros),
# duplicated columns.
ATTENTION_KINDS = ("softmax", "flat", "quantized", "duplicates")
# (query heads, KV heads): LLaVA-1.5-7B, Qwen2-VL-7B, a small GQA model, one head.
HEADS = ((32, 32), (28, 4), (16, 2), (1, 1))
# Text tokens after the image for DART: the minimum, one more, and typical prompt lengths.
TEXT_LENGTHS = (4, 5, 20, 37)


@dataclass(frozen=True)
class BaselineCase:
    name: str
    inputs: tuple[Tensor, ...]
    keep: int


def keep_counts(n: int) -> list[int]:
    """{1, 4, 11, 64, 192, N-1, N} within [1, N]. DART: 1 < its 4 image pivots, 4 has no budget
    left, 11 gives each image pivot and 3 text pivots one token; 64 and 192 are the paper's counts."""
    return sorted({k for k in (1, 4, 11, 64, 192, n - 1, n) if 1 <= k <= n})


@cache
def image_tokens(kind: str, grid: tuple[int, int], dk: int, d: int, seed: int) -> tuple[Tensor, Tensor]:
    """keys float32 [N, dk], hidden float32 [N, d] (cached: callers must not modify them)."""
    keys, hidden = make_image("objects" if kind == "zeros" else kind, grid, dk, d, seed)
    if kind == "zeros":
        keys[::7] = 0
        hidden[::7] = 0
    return keys, hidden


def attention_rows(kind: str, n: int, heads: int, kv_heads: int, seed: int) -> Tensor:
    """The last prompt token's attention to the N image tokens: float32 [heads, N].

    Each query head attends with its shared KV head over a causal row of T = N + 40 keys (5 system
    tokens, the image, 35 text tokens), so a row's image part sums to less than 1.
    """
    total, start, head_dim = n + 40, 5, 16
    if kind == "flat":
        return torch.full((heads, n), 1 / total)
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(heads, head_dim, generator=g)
    keys = torch.randn(kv_heads, total, head_dim, generator=g).repeat_interleave(heads // kv_heads, dim=0)
    logits = 2 * (keys @ queries[:, :, None])[:, :, 0] / math.sqrt(head_dim)  # [heads, T]
    attention = torch.softmax(logits, dim=1)[:, start : start + n].contiguous()
    if kind == "quantized":
        attention = torch.round(attention * 256) / 256
    elif kind == "duplicates":
        copies = torch.randperm(n, generator=g)[: n // 3]
        attention[:, copies] = attention[:, torch.randint(0, n, (copies.numel(),), generator=g)]
    return attention


def _rms_norm(x: Tensor) -> Tensor:
    """The final norm DART's states pass through (RMSNorm, unit weight)."""
    return torch.nn.functional.rms_norm(x, (x.shape[1],), eps=1e-6)


def text_tokens(image_keys: Tensor, image_hidden: Tensor, m: int, seed: int) -> tuple[Tensor, Tensor]:
    """M text tokens: random, with token 1 a copy of token 0 and token 2 a copy of image token 0
    (ties in the text pivots' norms, a text pivot identical to an image token)."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(m, image_keys.shape[1], generator=g) * image_keys.std()
    hidden = torch.randn(m, image_hidden.shape[1], generator=g) * image_hidden.std()
    keys[1], hidden[1] = keys[0], hidden[0]
    keys[2], hidden[2] = image_keys[0], image_hidden[0]
    return keys, hidden


def _images():
    """(name, grid, dk, d, kind, seed) over every grid, width and image kind."""
    for grid in GRIDS:
        for dk, d in WIDTHS:
            for variant, kind in enumerate(IMAGE_KINDS):
                seed = 1000 * grid[0] + 10 * grid[1] + variant + dk
                yield f"{kind}-{grid[0]}x{grid[1]}-d{d}", grid, dk, d, kind, seed


def fastv_cases() -> list[BaselineCase]:
    cases = []
    for g, grid in enumerate(GRIDS):
        n = grid[0] * grid[1]
        for variant, kind in enumerate(ATTENTION_KINDS):
            for heads, kv_heads in (HEADS[(g + variant) % 4], HEADS[(g + variant + 1) % 4]):
                attention = attention_rows(kind, n, heads, kv_heads, seed=100 * g + 10 * variant + heads)
                for keep in keep_counts(n):
                    cases.append(BaselineCase(f"{kind}-n{n}-h{heads}kv{kv_heads}-keep{keep}", (attention,), keep))
    return cases


def dart_cases() -> list[BaselineCase]:
    cases = []
    for number, (name, grid, dk, d, kind, seed) in enumerate(_images()):
        keys, hidden = image_tokens(kind, grid, dk, d, seed)
        # Each kind meets every text length: shifted by one per (grid, width).
        m = TEXT_LENGTHS[(number + number // len(IMAGE_KINDS)) % len(TEXT_LENGTHS)]
        text_keys, text_hidden = text_tokens(keys, hidden, m, seed)
        inputs = (keys, _rms_norm(hidden), text_keys, _rms_norm(text_hidden))
        for keep in keep_counts(grid[0] * grid[1]):
            cases.append(BaselineCase(f"{name}-m{m}-keep{keep}", inputs, keep))
    return cases


def divprune_cases() -> list[BaselineCase]:
    cases = []
    for name, grid, dk, d, kind, seed in _images():
        _, hidden = image_tokens(kind, grid, dk, d, seed)
        for keep in keep_counts(grid[0] * grid[1]):
            cases.append(BaselineCase(f"{name}-keep{keep}", (hidden,), keep))
    return cases


def real_size_cases(method: str, keep: int) -> list[BaselineCase]:
    """One case per kind at LLaVA-1.5-7B size: N = 576 (24 x 24), 32 heads, keys and states 4096 wide."""
    grid, width, n = (24, 24), 4096, 576
    if method == "fastv":
        return [
            BaselineCase(f"{kind}-n{n}-h32-keep{keep}", (attention_rows(kind, n, 32, 32, seed=variant),), keep)
            for variant, kind in enumerate(ATTENTION_KINDS)
        ]
    cases = []
    for variant, kind in enumerate(IMAGE_KINDS):
        keys, hidden = image_tokens(kind, grid, width, width, seed=variant)
        if method == "dart":
            text_keys, text_hidden = text_tokens(keys, hidden, 20, seed=variant)
            inputs = (keys, _rms_norm(hidden), text_keys, _rms_norm(text_hidden))
        else:
            inputs = (hidden,)
        cases.append(BaselineCase(f"{kind}-n{n}-d{width}-keep{keep}", inputs, keep))
    return cases
