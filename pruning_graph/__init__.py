"""Visual-token selection, each method as a readable reference and a static-shape, exportable twin:
VLM-Pruner, and the paper's baselines FastV, DART and DivPrune."""

from pruning_graph.config import VLMPrunerConfig
from pruning_graph.dart import DARTSelect, dart_reference, dart_select
from pruning_graph.divprune import DivPruneSelect, divprune_reference, divprune_select
from pruning_graph.fastv import FastVSelect, fastv_reference, fastv_select
from pruning_graph.reference import reference_select
from pruning_graph.select import VLMPrunerSelect, select_tokens

__all__ = [
    "DARTSelect",
    "DivPruneSelect",
    "FastVSelect",
    "VLMPrunerConfig",
    "VLMPrunerSelect",
    "dart_reference",
    "dart_select",
    "divprune_reference",
    "divprune_select",
    "fastv_reference",
    "fastv_select",
    "reference_select",
    "select_tokens",
]
