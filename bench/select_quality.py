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
per method, kept tokens numbered in selection order, `runtime.show`'s drawing) under
bench/results/. Run with `make bench-quality`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from tabulate import tabulate
from torch import Tensor

from bench.scenes import GRID, KINDS, Scene, make_scene, scene_picture
from pruning_graph import DARTSelect, DivPruneSelect, FastVSelect, VLMPrunerSelect
from runtime.cli import RESULTS_DIR, HelpFormatter, run_cli, write_report
from runtime.show import compose, draw_selection

TOKENS = GRID[0] * GRID[1]
METRICS = ("objects_hit", "object_tokens_kept", "contiguity", "components", "redundancy")


def _rms_normed(x: Tensor) -> Tensor:
    """DART's final norm with unit weights (RMSNorm)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6)


# method -> its selection on a scene: the kept tokens in selection order, int64 [R].
METHODS: dict[str, Callable[[Scene, int], Tensor]] = {
    "vlm-pruner": lambda scene, keep: VLMPrunerSelect(scene.grid, keep).ordered(scene.keys, scene.states)[2],
    "fastv": lambda scene, keep: FastVSelect(keep).ordered(scene.attention)[1],
    "dart": lambda scene, keep: DARTSelect(keep).ordered(
        scene.keys, _rms_normed(scene.states), scene.text_keys, _rms_normed(scene.text_states)
    )[1],
    "divprune": lambda scene, keep: DivPruneSelect(keep).ordered(scene.states)[1],
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
                    order = select(scene, keep)
                    rows.append(selection_metrics(order, scene.labels, scene.states, scene.grid))
                    if number == 0 and keep == min(keeps):
                        examples.setdefault(kind, {})[method] = order.tolist()
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


def draw_figure(examples: dict, keep: int, path: Path) -> None:
    """Rows: scene kinds (seed 0); columns: methods. Each object in a color of its own, background
    gray, dropped tokens dimmed, kept tokens outlined and numbered in selection order."""
    rows = []
    for kind, orders in examples.items():
        scene = make_scene(kind, 0)
        picture = scene_picture(scene)
        rows.append(
            [
                (f"{kind}: {method}, keep {keep}", draw_selection(picture, scene.grid, order, resample=Image.Resampling.NEAREST))
                for method, order in orders.items()
            ]
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    compose(rows).save(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.select_quality", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5, help="scenes per kind")
    parser.add_argument("--keeps", type=int, nargs="+", default=[64, 128, 192], help="of the 576 tokens")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "select_quality.json")
    parser.add_argument("--figure", type=Path, default=RESULTS_DIR / "select_quality.png")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1 or not all(1 <= keep <= TOKENS for keep in args.keeps):
        raise ValueError(f"need --seeds >= 1 and keeps in [1, {TOKENS}], got {args.seeds}, {args.keeps}")
    keeps = sorted(set(args.keeps))
    with torch.inference_mode():
        report = {"settings": {"seeds": args.seeds, "keeps": keeps, "tokens": TOKENS}} | run_quality(args.seeds, keeps)
    print(format_table(report))
    write_report({"settings": report["settings"], "results": report["results"]}, args.json)
    draw_figure(report["examples"], keeps[0], args.figure)
    print(f"wrote {args.figure}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
