"""Selection quality on synthetic scenes with known objects, from the kept indices alone.

    python -m bench.select_quality [--seeds 5] [--keeps 64 128 192] [--json FILE] [--figure FILE]

For each scene kind (`bench.scenes`: objects of three sizes, a document's text lines, clutter),
each method (VLM-Pruner, FastV, DART, DivPrune, through their static selectors) and each keep
count of the 576 tokens, the means over the seeds of (`baselines_spec.md`, "What to compare"):
- objects hit: the fraction of objects with at least one kept token;
- object tokens kept: the fraction of all object tokens kept;
- contiguity: the fraction of kept tokens with a kept 4-neighbour;
- components: the number of 4-connected components of the kept set;
- redundancy: the mean over kept tokens of the largest cosine similarity of its state to another
  kept token's.
Prints a table, writes JSON and a figure (each kind's first scene at the smallest keep, a panel
per method, kept tokens in color and numbered by rank) under bench/results/. Run with
`make bench-quality`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tabulate import tabulate
from torch import Tensor

from bench.scenes import GRID, KINDS, Scene, make_scene
from pruning_graph import dart_select, divprune_select, fastv_select, select_tokens
from runtime.cli import HelpFormatter, run_cli

RESULTS = Path("bench/results")
TOKENS = GRID[0] * GRID[1]
METRICS = ("objects_hit", "object_tokens_kept", "contiguity", "components", "redundancy")


def _rms_normed(x: Tensor) -> Tensor:
    """DART's final norm with unit weights (RMSNorm)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6)


# method -> its selection on a scene: int64 [R], ascending.
METHODS: dict[str, Callable[[Scene, int], Tensor]] = {
    "vlm-pruner": lambda scene, keep: select_tokens(scene.keys, scene.states, scene.grid, keep)[0],
    "fastv": lambda scene, keep: fastv_select(scene.attention, keep),
    "dart": lambda scene, keep: dart_select(
        scene.keys, _rms_normed(scene.states), scene.text_keys, _rms_normed(scene.text_states), keep
    ),
    "divprune": lambda scene, keep: divprune_select(scene.states, keep),
}


def selection_metrics(kept: Tensor, labels: Tensor, states: Tensor, grid: tuple[int, int]) -> dict[str, float]:
    """The metrics of one selection.

    Args:
        kept: int64 [R], distinct token indices. labels: int64 [N], each token's object (0:
            background). states: float [N, d]. grid: (H, W), N = H * W, row-major.
    """
    height, width = grid
    mask = torch.zeros(height * width, dtype=torch.bool)
    mask[kept] = True
    objects = labels.unique()
    objects = objects[objects > 0]
    on_object = labels > 0
    square = mask.view(height, width)
    neighbours = torch.zeros_like(square)
    neighbours[1:] |= square[:-1]
    neighbours[:-1] |= square[1:]
    neighbours[:, 1:] |= square[:, :-1]
    neighbours[:, :-1] |= square[:, 1:]
    unit = torch.nn.functional.normalize(states[kept].double(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-torch.inf)
    return {
        "objects_hit": sum(bool(mask[labels == o].any()) for o in objects.tolist()) / max(len(objects), 1),
        "object_tokens_kept": float(mask[on_object].sum() / max(int(on_object.sum()), 1)),
        "contiguity": float((square & neighbours).sum() / mask.sum()),
        "components": float(count_components(square)),
        "redundancy": float(similarity.amax(dim=1).mean()) if len(kept) > 1 else 0.0,
    }


def count_components(mask: Tensor) -> int:
    """4-connected components of a bool [H, W] mask (a flood fill: the mask is a few hundred tokens)."""
    height, width = mask.shape
    seen = torch.zeros_like(mask)
    count = 0
    for start in mask.nonzero().tolist():
        if seen[tuple(start)]:
            continue
        count += 1
        stack = [tuple(start)]
        seen[tuple(start)] = True
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return count


def rank_order(method: str, scene: Scene, kept: Tensor) -> list[int]:
    """The kept tokens by rank, for the figure's numbers: FastV by score, the others by index
    (their static selectors return the set; VLM-Pruner's and DART's order is a step of the algorithm,
    not an output)."""
    if method == "fastv":
        scores = scene.attention.double().mean(dim=0)[kept]
        return [int(kept[i]) for i in sorted(range(len(kept)), key=lambda i: (-float(scores[i]), int(kept[i])))]
    return kept.tolist()


def run_quality(seeds: int, keeps: list[int]) -> dict:
    """{kind: {method: {keep: {metric: mean over seeds}}}} and the kept indices of each kind's first scene."""
    results: dict = {}
    examples: dict = {}
    for kind in KINDS:
        scenes = [make_scene(kind, seed) for seed in range(seeds)]
        for method, select in METHODS.items():
            for keep in keeps:
                rows = []
                for number, scene in enumerate(scenes):
                    kept = select(scene, keep)
                    rows.append(selection_metrics(kept, scene.labels, scene.states, scene.grid))
                    if number == 0 and keep == min(keeps):
                        examples.setdefault(kind, {})[method] = rank_order(method, scene, kept)
                means = {name: statistics.fmean(row[name] for row in rows) for name in METRICS}
                results.setdefault(kind, {}).setdefault(method, {})[keep] = means
    return {"results": results, "examples": examples}


def format_table(report: dict) -> str:
    rows = [
        [kind, keep, method, *(f"{values[name]:.2f}" for name in METRICS)]
        for kind, by_method in report["results"].items()
        for keep in report["settings"]["keeps"]
        for method, by_keep in by_method.items()
        for values in [by_keep[keep]]
    ]
    headers = ["scene", "keep", "method", "objects hit", "object tokens kept", "contiguity", "components", "redundancy"]
    return tabulate(rows, headers=headers, disable_numparse=True)


def draw_figure(examples: dict, keep: int, path: Path, cell: int = 14) -> None:
    """Rows: scene kinds (seed 0); columns: methods. Objects in color, background gray, dropped
    tokens dimmed, kept tokens outlined in white and numbered by rank."""
    kinds, methods = list(examples), list(METHODS)
    height, width = make_scene(kinds[0], 0).grid
    label_h, pad = 18, 8
    panel_w, panel_h = width * cell, height * cell
    image = Image.new("RGB", (len(methods) * (panel_w + pad) + pad, len(kinds) * (panel_h + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(image)
    palette = torch.Generator().manual_seed(1)
    for row, kind in enumerate(kinds):
        scene = make_scene(kind, 0)
        colors = [(150, 150, 150)] + [
            tuple(int(c) for c in 60 + torch.randint(0, 190, (3,), generator=palette)) for _ in range(scene.num_objects)
        ]
        for column, method in enumerate(methods):
            order = examples[kind][method]
            rank = {token: number for number, token in enumerate(order, start=1)}
            left = pad + column * (panel_w + pad)
            top = pad + row * (panel_h + label_h + pad)
            draw.text((left, top), f"{kind}: {method}, keep {keep}", fill="black")
            for token, label in enumerate(scene.labels.tolist()):
                y, x = divmod(token, width)
                box = (left + x * cell, top + label_h + y * cell, left + (x + 1) * cell - 1, top + label_h + (y + 1) * cell - 1)
                color = colors[label] if token in rank else tuple(c // 3 + 150 for c in colors[label])
                draw.rectangle(box, fill=color, outline="white" if token in rank else None)
                if token in rank and cell >= 12:
                    draw.text((box[0] + 1, box[1] + 1), str(rank[token]), fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.select_quality", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5, help="scenes per kind")
    parser.add_argument("--keeps", type=int, nargs="+", default=[64, 128, 192], help="of the 576 tokens")
    parser.add_argument("--json", type=Path, default=RESULTS / "select_quality.json")
    parser.add_argument("--figure", type=Path, default=RESULTS / "select_quality.png")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1 or not all(1 <= keep <= TOKENS for keep in args.keeps):
        raise ValueError(f"need --seeds >= 1 and keeps in [1, {TOKENS}], got {args.seeds}, {args.keeps}")
    keeps = sorted(set(args.keeps))
    with torch.inference_mode():
        report = {"settings": {"seeds": args.seeds, "keeps": keeps, "tokens": TOKENS}} | run_quality(args.seeds, keeps)
    print(format_table(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"settings": report["settings"], "results": report["results"]}, indent=2) + "\n")
    draw_figure(report["examples"], keeps[0], args.figure)
    print(f"wrote {args.json} and {args.figure}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
