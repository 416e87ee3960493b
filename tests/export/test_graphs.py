"""The graph specs: contract names, dynamic dimensions and bounds, argument checks."""

from __future__ import annotations

import pytest

from export.graphs import build_graphs, find_graph
from models.selectors import get_method
from runtime.contract import GRAPH_NAMES, cache_names, graph_io


@pytest.fixture(scope="module")
def graphs(tiny):
    return build_graphs(tiny.model, tiny.spec, keep=64, max_seq_len=1024)


def test_graph_names_and_interface(graphs):
    assert tuple(graph.name for graph in graphs) == GRAPH_NAMES
    assert find_graph(graphs, "prefill").output_names[:4] == ("logits", "kept_indices", "selection_order", "present.0.key")
    assert find_graph(graphs, "decode").input_names[2:] == (*cache_names("past", 4), "cache_lengths")
    assert cache_names("present", 2) == ("present.0.key", "present.0.value", "present.1.key", "present.1.value")


def test_dynamic_dimensions(graphs):
    assert find_graph(graphs, "vision_encoder").dim_names() == {}
    assert find_graph(graphs, "embed_tokens").dim_names() == {"input_ids": {1: "sequence_length"}}
    assert find_graph(graphs, "prefill").dim_names() == {
        "inputs_embeds": {1: "sequence_length"},
        "position_ids": {2: "sequence_length"},
    }
    decode = find_graph(graphs, "decode").dim_names()
    assert decode["past.1.value"] == {2: "cache_capacity"}
    assert decode["past.2.key"] == {2: "pruned_cache_capacity"}
    assert "inputs_embeds" not in decode and "position_ids" not in decode


def test_bounds_follow_max_seq_len(graphs):
    (seq,) = find_graph(graphs, "prefill").dynamic_shapes[0].values()
    assert (seq.min, seq.max) == (577, 1024)
    cache_dims = find_graph(graphs, "decode").dynamic_shapes[2]
    capacity, pruned = cache_dims[0][0][2], cache_dims[3][1][2]
    assert (capacity.min, capacity.max) == (578, 1024)
    assert (pruned.min, pruned.max) == (66, 1024 - 512)


def test_divprune_graphs_are_an_unpruned_model_of_r_image_tokens(tiny):
    """The vision graph selects (and says which); the language model's graphs take R image tokens,
    bounds from R + 1, one cache length."""
    graphs = build_graphs(tiny.model, tiny.spec, keep=64, max_seq_len=1024, method=get_method("divprune"))
    assert find_graph(graphs, "vision_encoder").output_names == ("image_embeds", "kept_indices", "selection_order")
    prefill = find_graph(graphs, "prefill")
    assert prefill.example_inputs[2].shape == (64,) and prefill.module.prefill.selector is None
    (seq,) = prefill.dynamic_shapes[0].values()
    assert (seq.min, seq.max) == (65, 1024)
    decode = find_graph(graphs, "decode")
    assert set(name for dims in decode.dim_names().values() for name in dims.values()) == {"cache_capacity"}
    assert graph_io("vision_encoder", 4)[1] == ("image_embeds",)
    with pytest.raises(ValueError, match="a selection runs in one of prefill, vision_encoder, not 'decode'"):
        graph_io("vision_encoder", 4, selection_graph="decode")


def test_unpruned_decode_has_one_cache_length(tiny):
    decode = find_graph(build_graphs(tiny.model, tiny.spec, keep=576, max_seq_len=1024), "decode")
    assert set(name for dims in decode.dim_names().values() for name in dims.values()) == {"cache_capacity"}


@pytest.mark.parametrize(("keep", "max_seq_len", "message"), [(0, 1024, "keep must be in"), (64, 600, "too short")])
def test_invalid_arguments(tiny, keep, max_seq_len, message):
    with pytest.raises(ValueError, match=message):
        build_graphs(tiny.model, tiny.spec, keep=keep, max_seq_len=max_seq_len)


def test_find_graph_names_the_missing_graph(graphs):
    with pytest.raises(KeyError, match="no graph 'text_decoder'"):
        find_graph(graphs, "text_decoder")
