"""DART (baselines_spec.md): the image tokens least similar to a few pivots, image and text."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from models.selectors.base import LayerOutputs, PrefillSelector, SelectionMethod, kept_states, register
from pruning_graph.dart import PIVOTS, dart_select_pivoted, dart_text_pivots
from pruning_graph.validation import Grid, check_keep


class DARTSelector(PrefillSelector):
    """Keys and final-normed states of layer K-1 -> the R tokens DART keeps, states unchanged.

    The text pivots are taken among every prompt token after the image (a mask over the T tokens,
    whose count is dynamic); the host checks that there are at least `PIVOTS`.
    """

    def __init__(self, keep: int):
        super().__init__()
        check_keep(keep)
        self.keep = keep

    def forward(self, outputs: LayerOutputs) -> tuple[Tensor, Tensor, Tensor]:
        normed = outputs.normed_states()  # [T, d]
        text_pivots = dart_text_pivots(outputs.token_keys(), outputs.after_image())  # [PIVOTS]
        image_states = normed.index_select(0, outputs.image_positions)
        text_pivot_states = normed.index_select(0, text_pivots)
        kept, order = dart_select_pivoted(outputs.image_keys(), image_states, text_pivot_states, self.keep)
        return kept, kept_states(outputs, kept), order

    def extra_repr(self) -> str:
        return f"keep={self.keep}"


@register
@dataclass(frozen=True)
class DART(SelectionMethod):
    """No settings: 4 image and 4 text pivots, the budget split of the spec."""

    name = "dart"
    question_dependent = True
    min_text_after_image = PIVOTS

    def selector(self, grid: Grid, keep: int) -> PrefillSelector:
        return DARTSelector(keep)
