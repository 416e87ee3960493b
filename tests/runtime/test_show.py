"""runtime.show's drawing: cells, dimming, numbering, layout, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from runtime.families.base import ViewPicture
from runtime.show import MIN_CELL, compose, draw_selection, main, view_panels


def test_kept_cells_keep_their_colour_and_dropped_ones_are_dimmed():
    picture = Image.new("RGB", (8, 4), (200, 200, 200))  # a 2 x 4 grid of 2-pixel cells
    drawn = draw_selection(picture, (2, 4), [5, 0], resample=Image.Resampling.NEAREST)
    assert drawn.size == (4 * MIN_CELL, 2 * MIN_CELL)  # enlarged 14x: cells of MIN_CELL pixels
    pixels = np.asarray(drawn)
    middle = MIN_CELL // 2 + 3  # inside a cell, below its number
    for token, kept in ((0, True), (5, True), (1, False), (7, False)):
        row, column = divmod(token, 4)
        value = pixels[row * MIN_CELL + middle, column * MIN_CELL + middle]
        assert (value == 200).all() if kept else (value == 60).all(), token


def test_numbers_follow_the_selection_order():
    """Order [0, 1] numbers cell 0 "1" and cell 1 "2"; order [1, 0] the other way round."""
    picture = Image.new("RGB", (2 * MIN_CELL, MIN_CELL), (90, 90, 90))
    first, second = (np.asarray(draw_selection(picture, (1, 2), order)) for order in ([0, 1], [1, 0]))
    cell = slice(0, MIN_CELL), slice(MIN_CELL, 2 * MIN_CELL)
    assert not np.array_equal(first[:, cell[0]], first[:, cell[1]])  # "1" is not "2"
    assert np.array_equal(first[:, cell[0]], second[:, cell[1]]) and np.array_equal(first[:, cell[1]], second[:, cell[0]])


@pytest.mark.parametrize("order", [[0, 0], [8], [-1]])
def test_bad_orders_are_refused(order):
    with pytest.raises(ValueError, match="distinct indices into the 2 x 4 grid"):
        draw_selection(Image.new("RGB", (8, 4)), (2, 4), order)


def test_compose_lays_panels_side_by_side_with_titles():
    a, b = Image.new("RGB", (30, 20), "red"), Image.new("RGB", (40, 10), "blue")
    figure = compose([[("a", a), ("b", b)]])
    assert figure.width == 8 + 30 + 8 + 40 + 8 and figure.height == 8 + 22 + 20 + 8
    assert figure.getpixel((8, 30)) == (255, 0, 0) and figure.getpixel((46, 30)) == (0, 0, 255)


def test_a_long_title_widens_its_column():
    picture = Image.new("RGB", (10, 10), "red")
    narrow, wide = compose([[("a", picture)] * 2]), compose([[("a much longer title", picture)] * 2])
    assert narrow.width == 8 + 10 + 8 + 10 + 8 and wide.width > narrow.width + 100


def test_a_selection_over_views_gets_one_panel_per_view():
    """Tokens 0..3: a 2 x 2 view; 4..9: a 2 x 3 view whose last column covers no cell (newline
    tokens). Each panel keeps the tokens' global ranks."""
    picture = Image.new("RGB", (8, 8))
    views = [ViewPicture(picture, (2, 2), (2, 2)), ViewPicture(picture, (2, 3), (2, 2))]
    first, second = view_panels("keep 5", views, [5, 0, 6, 9, 3])
    assert (first.title, first.grid, first.order, first.numbers) == ("keep 5, view 1: 2 of 4", (2, 2), [0, 3], [2, 5])
    assert second.title == "keep 5, view 2: 3 of 6, 2 newline tokens"
    assert (second.grid, second.order, second.numbers) == ((2, 2), [1], [1])
    assert first.draw().size == second.draw().size == (2 * MIN_CELL, 2 * MIN_CELL)
    (single,) = view_panels("keep 2", views[:1], [3, 1])
    assert single.order == [3, 1] and single.numbers is None


def test_cli_refuses_an_output_without_an_image_format(tmp_path, capsys):
    assert main([str(tmp_path), "--image", str(tmp_path / "photo.png"), "-o", str(tmp_path / "kept.txt")]) == 2
    assert "cannot tell an image format from 'kept.txt'" in capsys.readouterr().err


def test_cli_refuses_a_missing_image(tmp_path, capsys):
    assert main([str(tmp_path), "--image", str(tmp_path / "nope.png"), "-o", str(tmp_path / "kept.png")]) == 2
    assert "nope.png" in capsys.readouterr().err
    assert not (tmp_path / "kept.png").exists()
