"""VLM-Pruner visual-token selection: a readable reference and a static-shape, exportable twin."""

from pruning_graph.config import VLMPrunerConfig
from pruning_graph.reference import reference_select
from pruning_graph.select import VLMPrunerSelect, select_tokens

__all__ = ["VLMPrunerConfig", "VLMPrunerSelect", "reference_select", "select_tokens"]
