"""Synthetic scenes with known objects, as every selection method sees them.

A scene is a token grid (LLaVA-1.5's 24 x 24 by default) whose objects are known: `labels` gives
each token's object (0: background). Deterministic from a seed. Three kinds:
- objects: a textured background and objects of three sizes (2 x 2, 4 x 5 and 8 x 9 tokens);
- document: a bright page with text lines one token tall (the lines are the objects);
- clutter: 20 small objects (1 x 1 to 3 x 3 tokens) scattered, some touching.

The token features follow a plain encoder model, the same for every method: each object has its
own feature vector, the background a low-frequency texture, every token some noise; keys are a
fixed random projection of the states, heads concatenated. The question is about the largest
object: its text tokens (what DART's text pivots and FastV's last-token query read) are that
object's feature plus noise, and the last one queries along its own key. Weights are random, so the figures say how the methods distribute
their tokens over a scene's layout, not how a trained model answers.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

KINDS = ("objects", "document", "clutter")
GRID = (24, 24)
HIDDEN = 256
HEADS, HEAD_DIM = 4, 32
TEXT_TOKENS = 8


@dataclass(frozen=True)
class Scene:
    """One scene's layout and the features each method reads.

    Attributes:
        kind: one of `KINDS`. grid: (H, W), N = H * W tokens, row-major.
        labels: int64 [N], each token's object (1, 2, ...; 0: background).
        states: float32 [N, d], the image tokens' states (also the vision encoder's output).
        keys: float32 [N, HEADS * HEAD_DIM], their keys.
        text_states: float32 [M, d], text_keys: [M, HEADS * HEAD_DIM]: the question after the image.
        attention: float32 [HEADS, N]: the last text token's attention to the image tokens, the
            softmax over the image and text keys.
    """

    kind: str
    grid: tuple[int, int]
    labels: Tensor
    states: Tensor
    keys: Tensor
    text_states: Tensor
    text_keys: Tensor
    attention: Tensor

    @property
    def num_objects(self) -> int:
        return int(self.labels.max())


def make_scene(kind: str, seed: int, grid: tuple[int, int] = GRID) -> Scene:
    """The scene of `kind` drawn from `seed`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    g = torch.Generator().manual_seed(seed)
    height, width = grid
    labels = torch.zeros(grid, dtype=torch.int64)
    boxes = {"objects": _object_boxes, "document": _line_boxes, "clutter": _clutter_boxes}[kind](grid, g)
    for number, (top, left, h, w) in enumerate(boxes, start=1):
        labels[top : top + h, left : left + w] = number
    labels = labels.reshape(-1)

    n = height * width
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    freq, phase = 2 * torch.rand(3, 2, generator=g), 2 * math.pi * torch.rand(3, generator=g)
    waves = torch.cos(2 * math.pi * (xs.reshape(-1, 1) * freq[:, 0] + ys.reshape(-1, 1) * freq[:, 1]) + phase)
    page = 3 * torch.randn(1, HIDDEN, generator=g) if kind == "document" else 0
    background = page + waves @ torch.randn(3, HIDDEN, generator=g)  # [N, d]
    objects = 3 * torch.randn(len(boxes) + 1, HIDDEN, generator=g)  # row 0 unused
    states = torch.where((labels > 0)[:, None], objects[labels], background)
    states = states + 0.5 * torch.randn(n, HIDDEN, generator=g)

    projection = torch.randn(HIDDEN, HEADS * HEAD_DIM, generator=g) / math.sqrt(HIDDEN)
    asked = int(torch.bincount(labels, minlength=len(boxes) + 1)[1:].argmax()) + 1  # the largest object
    text_states = objects[asked] + 2 * torch.randn(TEXT_TOKENS, HIDDEN, generator=g)
    keys, text_keys = states @ projection, text_states @ projection
    query = text_keys[-1].view(HEADS, 1, HEAD_DIM)  # the last text token queries along its own key
    every_key = torch.cat([keys, text_keys]).view(-1, HEADS, HEAD_DIM).transpose(0, 1)  # [heads, N + M, hd]
    attention = ((query @ every_key.transpose(1, 2))[:, 0] / math.sqrt(HEAD_DIM)).softmax(dim=-1)[:, :n]
    return Scene(kind, grid, labels, states, keys, text_states, text_keys, attention)


def scene_picture(scene: Scene, cell: int = 1) -> Image.Image:
    """The scene as a picture of `cell` x `cell` pixels per token: each object in a color of its
    own, the background gray; with `cell` > 1, a little pixel noise (a photo-like texture)."""
    g = torch.Generator().manual_seed(1)
    palette = torch.randint(60, 250, (scene.num_objects + 1, 3), generator=g)
    palette[0] = 150
    height, width = scene.grid
    tokens = palette[scene.labels].view(height, width, 3).float()
    pixels = tokens.repeat_interleave(cell, dim=0).repeat_interleave(cell, dim=1)
    if cell > 1:
        pixels = pixels + 12 * torch.randn(pixels.shape, generator=g)
    return Image.fromarray(pixels.clamp(0, 255).to(torch.uint8).numpy())


def main(argv: list[str] | None = None) -> int:
    """Write a scene's picture at 14 pixels per token (336 x 336 for the default grid: LLaVA-1.5's
    input size), e.g. to feed `python -m runtime.show`."""
    parser = argparse.ArgumentParser(prog="python -m bench.scenes", description=main.__doc__.split(",")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True, help="the picture to write (PNG)")
    args = parser.parse_args(argv)
    scene_picture(make_scene(args.kind, args.seed), cell=14).save(args.output)
    print(f"wrote {args.output}")
    return 0


def _object_boxes(grid: tuple[int, int], g: torch.Generator) -> list[tuple[int, int, int, int]]:
    """Two objects of each size, placed without overlap: (top, left, height, width)."""
    return _place([(2, 2), (2, 2), (4, 5), (4, 5), (8, 9), (8, 9)], grid, g, gap=1)


def _line_boxes(grid: tuple[int, int], g: torch.Generator) -> list[tuple[int, int, int, int]]:
    """Text lines one token tall on every other row below a margin, 6 to 20 tokens long."""
    height, width = grid
    boxes = []
    for top in range(2, height - 2, 2):
        length = int(torch.randint(6, min(21, width - 3), (1,), generator=g))
        left = int(torch.randint(1, width - length, (1,), generator=g))
        boxes.append((top, left, 1, length))
    return boxes


def _clutter_boxes(grid: tuple[int, int], g: torch.Generator) -> list[tuple[int, int, int, int]]:
    sizes = [tuple(int(s) for s in torch.randint(1, 4, (2,), generator=g)) for _ in range(20)]
    return _place(sizes, grid, g, gap=0)


def _place(
    sizes: list[tuple[int, int]], grid: tuple[int, int], g: torch.Generator, *, gap: int
) -> list[tuple[int, int, int, int]]:
    """Boxes of `sizes`, largest first, each at a random free spot `gap` tokens from the others."""
    height, width = grid
    taken = torch.zeros(grid, dtype=torch.bool)
    boxes = []
    for h, w in sorted(sizes, key=lambda size: -size[0] * size[1]):
        for _ in range(1000):
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            area = taken[max(top - gap, 0) : top + h + gap, max(left - gap, 0) : left + w + gap]
            if not area.any():
                taken[top : top + h, left : left + w] = True
                boxes.append((top, left, h, w))
                break
        else:
            raise RuntimeError(f"no room for a {h} x {w} object on a {height} x {width} grid")
    return boxes


if __name__ == "__main__":
    sys.exit(main())
