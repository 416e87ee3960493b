"""Draw the image tokens artifacts keep, numbered in the order their method chose them.

    python -m runtime.show ARTIFACT [ARTIFACT ...] --image PHOTO.jpg -o kept.png [--prompt TEXT] [--backend onnx]

Each artifact runs its graphs on the image and prompt (up to the first generated token) and gives
one panel: the picture its model sees (the image resized and cropped as the preprocessing does)
under the token grid, dropped tokens dimmed, kept ones outlined and numbered 1..R in selection
order, like the paper's Fig. 1. VLM-Pruner: the pivots, then each greedy pass's acceptances; FastV:
by attention rank; DART: the image pivots, then each pivot's least similar tokens; DivPrune: its
greedy order. Several artifacts of one model (other methods, other keep counts) are drawn side by
side. A model with several views of image tokens (LLaVA-NeXT: the base view and the high-resolution
view) gets one panel per view, the numbers still the ranks in the whole selection; the newline
tokens that close the high-resolution rows cover no part of the picture and are counted in the
title. FastV and DART read the question: the prompt changes what they keep.

Exit status: 0 drawn, 2 bad input or artifact, 3 internal error, 130 interrupted (`runtime.cli`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from runtime.artifact import load_artifact
from runtime.backends import BACKENDS
from runtime.cli import HelpFormatter, run_cli
from runtime.families import host_family
from runtime.families.base import ViewPicture
from runtime.generate import GenerationConfig, Runner
from runtime.preprocess import load_image
from runtime.samples import DEFAULT_PROMPT

# Smallest drawn token cell, in pixels: room for a three-digit number.
MIN_CELL = 28
_DIMMED = 0.3  # brightness left to a dropped token
_OUTLINE = (255, 200, 0)
_TITLE_HEIGHT = 22
_PAD = 8


@dataclass(frozen=True)
class Panel:
    """One drawn selection: a title over `picture` (a grid of tokens tiling it), `order` the kept
    tokens in selection order (row-major indices into the grid), `numbers` their labels (default
    1, 2, ...: the view's share of a selection over several views keeps its global ranks)."""

    title: str
    picture: Image.Image
    grid: tuple[int, int]
    order: list[int]
    numbers: list[int] | None = None

    def draw(self) -> Image.Image:
        return draw_selection(self.picture, self.grid, self.order, numbers=self.numbers)


def draw_selection(
    picture: Image.Image,
    grid: tuple[int, int],
    order: Sequence[int],
    *,
    numbers: Sequence[int] | None = None,
    resample: int = Image.Resampling.BICUBIC,
) -> Image.Image:
    """`picture` enlarged so that a token cell is at least `MIN_CELL` pixels, the tokens not in
    `order` dimmed, those in it outlined and numbered (from 1 in its order, or by `numbers`).

    Args:
        picture: RGB, tiled by `grid` = (H, W) token cells, row-major.
        order: distinct token indices in [0, H * W).
        numbers: one label per token of `order`; default 1, 2, ...
        resample: PIL's filter for the enlargement (NEAREST keeps a synthetic scene's cells crisp).
    """
    height, width = grid
    if len(set(order)) != len(order) or not all(0 <= token < height * width for token in order):
        raise ValueError(f"the kept tokens must be distinct indices into the {height} x {width} grid")
    numbers = range(1, len(order) + 1) if numbers is None else numbers
    scale = max(1, math.ceil(MIN_CELL / min(picture.width / width, picture.height / height)))
    canvas = picture.convert("RGB").resize((picture.width * scale, picture.height * scale), resample=resample)
    dimmed = Image.eval(canvas, lambda value: int(value * _DIMMED))
    boxes = [_cell(canvas, grid, token) for token in order]
    mask = Image.new("L", canvas.size, 0)
    mask_draw = ImageDraw.Draw(mask)
    for box in boxes:
        mask_draw.rectangle(box, fill=255)
    canvas = Image.composite(canvas, dimmed, mask)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(9, min(14, canvas.width // width // 2)))
    for number, box in zip(numbers, boxes):
        draw.rectangle(box, outline=_OUTLINE)
        draw.text((box[0] + 2, box[1] + 1), str(number), fill="white", font=font, stroke_width=1, stroke_fill="black")
    return canvas


def _cell(canvas: Image.Image, grid: tuple[int, int], token: int) -> tuple[int, int, int, int]:
    """The pixel box (left, top, right, bottom) of token `token`'s cell on `canvas`."""
    height, width = grid
    row, column = divmod(token, width)
    left, right = round(column * canvas.width / width), round((column + 1) * canvas.width / width) - 1
    top, bottom = round(row * canvas.height / height), round((row + 1) * canvas.height / height) - 1
    return left, top, right, bottom


def compose(rows: Sequence[Sequence[tuple[str, Image.Image]]]) -> Image.Image:
    """Titled pictures in rows, on white: one row per entry of `rows`; a column is as wide as its
    picture or its title, whichever is wider."""
    font = ImageFont.load_default(size=14)
    widths = [[max(picture.width, math.ceil(font.getlength(title))) for title, picture in row] for row in rows]
    width = max(sum(column + _PAD for column in row) for row in widths) + _PAD
    heights = [max(picture.height for _, picture in row) + _TITLE_HEIGHT for row in rows]
    figure = Image.new("RGB", (width, sum(heights) + _PAD * (len(rows) + 1)), "white")
    draw = ImageDraw.Draw(figure)
    top = _PAD
    for row, columns, height in zip(rows, widths, heights):
        left = _PAD
        for (title, picture), column in zip(row, columns):
            draw.text((left, top + 2), title, fill="black", font=font)
            figure.paste(picture, (left, top + _TITLE_HEIGHT))
            left += column + _PAD
        top += height + _PAD
    return figure


def artifact_panels(
    artifact_dirs: Sequence[Path], image: Image.Image, prompt: str, backend: str, *, allow_failed_parity: bool = False
) -> list[Panel]:
    """One panel per artifact and view: what it keeps of `image` given `prompt`, run on `backend`.
    The artifacts are loaded one at a time.

    Raises:
        ValueError: the artifacts are of different models (their pictures would not match), or of
            a video model (not drawn).
    """
    artifacts = [load_artifact(path) for path in artifact_dirs]
    models = {artifact.model_name for artifact in artifacts}
    if len(models) > 1:
        raise ValueError(f"the artifacts are of different models ({', '.join(sorted(models))}): draw one model at a time")
    if host_family(artifacts[0].manifest).input_kind != "image":
        raise ValueError(f"runtime.show draws what artifacts keep of an image; {models.pop()} answers about videos")
    panels = []
    for path, artifact in zip(artifact_dirs, artifacts):
        print(f"{path}: running {artifact.method} (keep {artifact.keep}) on {backend}", file=sys.stderr)
        runner = Runner(artifact, backend, allow_failed_parity=allow_failed_parity)
        family = runner.inputs.family
        result = runner.generate(image, prompt, GenerationConfig(max_new_tokens=1))
        title = f"{artifact.method}, keep {artifact.keep} of {family.num_image_tokens}"
        panels += view_panels(title, family.view_pictures(image), result.selection_order)
        del runner  # its sessions go before the next artifact's load
    return panels


def view_panels(title: str, views: Sequence[ViewPicture], order: Sequence[int]) -> list[Panel]:
    """One panel per view of a selection `order` over the views' tokens in sequence order; a view's
    tokens beyond its drawn cells (LLaVA-NeXT's newline column) are counted in its title."""
    if len(views) == 1:
        return [Panel(title, views[0].picture, views[0].cells, list(order))]
    panels, start = [], 0
    for number, view in enumerate(views, start=1):
        (height, width), drawn = view.grid, view.cells[1]
        cells, ranks, beyond = [], [], 0
        for rank, token in enumerate(order, start=1):
            if not start <= token < start + height * width:
                continue
            row, column = divmod(token - start, width)
            if column < drawn:
                cells.append(row * drawn + column)
                ranks.append(rank)
            else:
                beyond += 1
        kept = f"{len(cells) + beyond} of {height * width}" + (f", {beyond} newline tokens" if beyond else "")
        panels.append(Panel(f"{title}, view {number}: {kept}", view.picture, view.cells, cells, ranks))
        start += height * width
    return panels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.show", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("artifact_dirs", type=Path, nargs="+", metavar="ARTIFACT", help="artifact folders of one model")
    parser.add_argument("--image", type=Path, required=True, help="image file (any format PIL reads)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question (FastV and DART depend on it)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnx", help="runtime to run the graphs on")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the figure to write (PNG, JPEG, ...)")
    parser.add_argument(
        "--allow-failed-parity", action="store_true", help="use artifacts whose export failed its parity check"
    )
    return parser


def show(args: argparse.Namespace) -> int:
    if args.output.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"cannot tell an image format from {args.output.name!r}: name it .png, .jpg, ...")
    image = load_image(args.image, on_note=lambda note: print(f"note: {note}", file=sys.stderr))
    panels = artifact_panels(
        args.artifact_dirs, image, args.prompt, args.backend, allow_failed_parity=args.allow_failed_parity
    )
    figure = compose([[(panel.title, panel.draw()) for panel in panels]])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(f".{args.output.name}.partial{args.output.suffix}")
    figure.save(partial)
    partial.replace(args.output)  # no half-written figure under the asked name
    print(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), show, argv)


if __name__ == "__main__":
    sys.exit(main())
