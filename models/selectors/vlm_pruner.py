"""VLM-Pruner (the project's method): pivots by key norm, BSS greedy selection, fusion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from models.selectors.base import LayerOutputs, PrefillSelector, SelectionMethod, register
from pruning_graph import VLMPrunerConfig, VLMPrunerSelect
from pruning_graph.validation import Grid


class VLMPrunerSelector(PrefillSelector):
    """Layer K-1's image keys and states -> kept tokens and their fused states."""

    def __init__(self, grid: Grid, keep: int, config: VLMPrunerConfig):
        super().__init__()
        self.select = VLMPrunerSelect(grid, keep, config)

    def forward(self, outputs: LayerOutputs) -> tuple[Tensor, Tensor, Tensor]:
        return self.select.ordered(outputs.image_keys(), outputs.image_states())

    def states_for(self, outputs: LayerOutputs, kept: Tensor) -> Tensor:
        return self.select.fused_for(outputs.image_states(), kept)


@register
@dataclass(frozen=True)
class VLMPruner(SelectionMethod):
    """Settings: `VLMPrunerConfig`'s hyperparameters."""

    name = "vlm-pruner"
    loops = True  # the greedy passes
    config: VLMPrunerConfig = field(default_factory=VLMPrunerConfig)

    def selector(self, grid: Grid, keep: int) -> PrefillSelector:
        return VLMPrunerSelector(grid, keep, self.config)

    def settings(self) -> dict[str, Any]:
        return self.config.to_dict()

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> VLMPruner:
        return cls(VLMPrunerConfig(**settings))
