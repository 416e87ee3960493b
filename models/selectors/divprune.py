"""DivPrune (baselines_spec.md): the most diverse image tokens, chosen from the vision encoder's output."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from models.selectors.base import VISION_ENCODER, SelectionMethod, VisionSelector, register
from pruning_graph import DivPruneSelect
from pruning_graph.validation import Grid


class DivPruneSelector(VisionSelector):
    """The projected image tokens -> the R of greedy max-min cosine diversity."""

    def __init__(self, keep: int):
        super().__init__()
        self.select = DivPruneSelect(keep)

    def forward(self, image_embeds: Tensor) -> tuple[Tensor, Tensor]:
        return self.select.ordered(image_embeds)


@register
@dataclass(frozen=True)
class DivPrune(SelectionMethod):
    """No settings. The dropped tokens never reach the language model: it is fed the R kept ones,
    with the positions of an R-token image (see `models.families.ModelFamily.prefill`)."""

    name = "divprune"
    selection_graph = VISION_ENCODER
    loops = True  # the greedy steps

    def selector(self, grid: Grid, keep: int) -> VisionSelector:
        return DivPruneSelector(keep)
