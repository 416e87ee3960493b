"""Visual-token selection, each method as a readable reference and a static-shape, exportable twin:
VLM-Pruner, and the paper's baselines FastV, DART and DivPrune. Each keeps R tokens, returned
ascending; each reference has an `*_order` twin listing them in the order the method chose them,
which the exportable modules return from `ordered`."""

from pruning_graph.config import VLMPrunerConfig
from pruning_graph.dart import DARTSelect, dart_reference, dart_reference_order, dart_select
from pruning_graph.divprune import DivPruneSelect, divprune_reference, divprune_reference_order, divprune_select
from pruning_graph.fastv import FastVSelect, fastv_reference, fastv_reference_order, fastv_select
from pruning_graph.reference import reference_order, reference_select
from pruning_graph.select import VLMPrunerSelect, select_tokens

__all__ = [
    "DARTSelect",
    "DivPruneSelect",
    "FastVSelect",
    "VLMPrunerConfig",
    "VLMPrunerSelect",
    "dart_reference",
    "dart_reference_order",
    "dart_select",
    "divprune_reference",
    "divprune_reference_order",
    "divprune_select",
    "fastv_reference",
    "fastv_reference_order",
    "fastv_select",
    "reference_order",
    "reference_select",
    "select_tokens",
]
