"""FastV (baselines_spec.md): the image tokens the last prompt token attends to most in layer K-1."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from models.selectors.base import LayerOutputs, PrefillSelector, SelectionMethod, kept_states, register
from pruning_graph import FastVSelect
from pruning_graph.validation import Grid


class FastVSelector(PrefillSelector):
    """The last token's attention to the image tokens -> the R most attended, states unchanged."""

    def __init__(self, keep: int):
        super().__init__()
        self.select = FastVSelect(keep)

    def forward(self, outputs: LayerOutputs) -> tuple[Tensor, Tensor, Tensor]:
        kept, order = self.select.ordered(outputs.last_token_attention())
        return kept, kept_states(outputs, kept), order


@register
@dataclass(frozen=True)
class FastV(SelectionMethod):
    """No settings: the pruning layer is the model's."""

    name = "fastv"
    question_dependent = True

    def selector(self, grid: Grid, keep: int) -> PrefillSelector:
        return FastVSelector(keep)
