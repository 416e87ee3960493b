"""The four graphs of an artifact (export/ARTIFACTS.md), as modules ready for torch.export.

Each `GraphSpec` carries what the exporters need to produce the contract's interface: the module,
example inputs, dynamic dimensions and bounds, and the ONNX input and output names (ExecuTorch
takes and returns the same tensors positionally, in the same order). The modules come from the
model's family (`models.families`); the names from `runtime.contract`.

    vision_encoder  pixel_values (the family's shape)           -> image_embeds [N, d]
                    (selection in the vision graph: image_embeds [R, d], kept_indices [R],
                    selection_order [R])
    embed_tokens    input_ids [1, T]                             -> inputs_embeds [1, T, d]
    prefill         inputs_embeds [1, T, d], position_ids [rows, 1, T], image_positions [N]
                                                  -> logits, kept_indices [R], selection_order [R], present.*
    decode          inputs_embeds [1, 1, d], position_ids [rows, 1, 1], past.* (buffers), cache_lengths [L]
                                                  -> logits, present.* (the buffers, one entry more written)

Bounds, with M = max_seq_len: T in [1, M] for embed_tokens (the runtime also embeds single
generated tokens); T in [N + 1, M] for prefill (at least one text token besides the image); cache
capacities in [N + 2, M] for layers < K and [R + 2, M - (N - R)] for layers >= K in decode.
With the selection in the vision graph, the language model's graphs are unpruned ones for an
image of R tokens (N = R above).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.export import Dim
from transformers import PreTrainedModel

from models import KVCache, ModelSpec, Prefill
from models.families import prompt_image_tokens, selection_graph
from models.selectors import PREFILL, SelectionMethod
from models.decoder import head_dim
from models.stateful import SelectTokens, TextDecoder, TextDecoderHead, TextDecoderLayers, TextDecoderTail
from runtime.contract import (
    MAX_SEQ_LEN_KEY,
    CACHE_DIM,
    PRUNED_CACHE_DIM,
    PRUNED_SEQUENCE_DIM,
    PTE_LAYER_GROUP,
    PTE_TAIL,
    SEQUENCE_DIM,
    graph_io,
    pte_io,
)

# Text tokens around the image in the example prompt: any length inside the bounds would do,
# torch.export traces symbolically.
_EXAMPLE_TEXT_TOKENS = 24


@dataclass(frozen=True)
class GraphSpec:
    """One graph to export.

    Attributes:
        name: the graph's name in the contract (ONNX file stem, ExecuTorch method).
        module: the module whose forward is the graph, in eval mode.
        example_inputs: positional inputs, nested as `module.forward` takes them.
        dynamic_shapes: torch.export's dynamic_shapes for `example_inputs`, None when static.
        input_names, output_names: the contract's names of the flattened inputs and outputs.
        metadata: facts about the graph that its shapes cannot carry, stored in the ONNX file
            (`MAX_SEQ_LEN_KEY`: the upper bound of the sequence dimensions).
    """

    name: str
    module: nn.Module
    example_inputs: tuple[Any, ...]
    dynamic_shapes: tuple[Any, ...] | None
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    metadata: dict[str, str] = field(default_factory=dict)

    def dim_names(self) -> dict[str, dict[int, str]]:
        """{input name: {axis: dimension name}} of the dynamic axes."""
        per_tensor = list(_tensor_dims(self.example_inputs, self.dynamic_shapes))
        if len(per_tensor) != len(self.input_names):
            raise ValueError(f"{self.name}: {len(self.input_names)} input names for {len(per_tensor)} input tensors")
        return {
            name: {axis: dim.__name__ for axis, dim in dims.items()}
            for name, dims in zip(self.input_names, per_tensor)
            if dims
        }


class ContiguousPrefill(nn.Module):
    """`models.Prefill` with its cache made contiguous.

    Its keys and values are transposed views. ExecuTorch keeps the dim order of traced tensors,
    so without the copy prefill would hand out caches in another layout than the contiguous one
    `decode` is exported for (a decode traced on such views failed at run time).

    forward(inputs_embeds [1, T, d], position_ids int64 [rows, 1, T], image_positions int64 [N]) ->
    (logits [1, V], kept int64 [R], order int64 [R], cache).
    """

    def __init__(self, prefill: Prefill):
        super().__init__()
        self.prefill = prefill

    def forward(
        self, inputs_embeds: Tensor, position_ids: Tensor, image_positions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, KVCache]:
        logits, kept, order, cache = self.prefill(inputs_embeds, position_ids, image_positions)
        return logits, kept, order, tuple((key.contiguous(), value.contiguous()) for key, value in cache)


def _tensor_dims(inputs: Any, dynamic_shapes: Any) -> Iterator[dict[int, Dim] | None]:
    """The dynamic_shapes entry of each input tensor, in torch.export's flattening order."""
    if isinstance(inputs, Tensor):
        yield dynamic_shapes
        return
    for i, item in enumerate(inputs):
        yield from _tensor_dims(item, None if dynamic_shapes is None else dynamic_shapes[i])


def find_graph(graphs: tuple[GraphSpec, ...], name: str) -> GraphSpec:
    """The graph called `name`."""
    for graph in graphs:
        if graph.name == name:
            return graph
    raise KeyError(f"no graph {name!r} among {[graph.name for graph in graphs]}")


def _checked_image_tokens(spec: ModelSpec, *, keep: int, max_seq_len: int, method: SelectionMethod | None) -> int:
    """The image tokens the language model is fed (R when the vision graph selects them, else N),
    after checking keep and M (`build_graphs`' Raises)."""
    if not 1 <= keep <= spec.num_image_tokens:
        raise ValueError(f"keep must be in [1, N] = [1, {spec.num_image_tokens}], got {keep}")
    n = prompt_image_tokens(spec, keep, method)
    if max_seq_len < n + _EXAMPLE_TEXT_TOKENS + 1:
        raise ValueError(
            f"max_seq_len {max_seq_len} is too short: the prompt alone holds the {n} image tokens plus text"
        )
    return n


def _input_graphs(
    model: PreTrainedModel, spec: ModelSpec, *, keep: int, max_seq_len: int, method: SelectionMethod | None
) -> tuple[GraphSpec, GraphSpec]:
    """The vision_encoder and embed_tokens graphs, which every backend's export shares."""
    family = spec.model_family
    selected_in = selection_graph(spec, keep, method)
    vision = GraphSpec(
        "vision_encoder",
        family.vision_graph(model, spec, keep=keep, method=method).eval(),
        (torch.zeros(family.pixel_values_shape(spec)),),
        None,
        *graph_io("vision_encoder", 0, selection_graph=selected_in),
    )
    embed = GraphSpec(
        "embed_tokens",
        family.token_embedding(model).eval(),
        (torch.zeros(1, _EXAMPLE_TEXT_TOKENS, dtype=torch.int64),),
        ({1: Dim(SEQUENCE_DIM, min=1, max=max_seq_len)},),
        *graph_io("embed_tokens", 0),
        {MAX_SEQ_LEN_KEY: str(max_seq_len)},
    )
    return vision, embed


def build_graphs(
    model: PreTrainedModel,
    spec: ModelSpec,
    *,
    keep: int,
    max_seq_len: int,
    method: SelectionMethod | None = None,
) -> tuple[GraphSpec, ...]:
    """The four graphs of `model` pruned to `keep` image tokens, in `GRAPH_NAMES` order.

    Args:
        model: the transformers model, float32, eval mode, no gradients.
        spec: its registry spec (family, geometry, pruning layer).
        keep: R, 1 <= R <= N; R = N exports the unpruned model.
        max_seq_len: M, the longest sequence (prompt + generated tokens) the graphs accept.
    Raises:
        ValueError: keep out of [1, N], or M leaving no room for text and one generated token.
    """
    n = _checked_image_tokens(spec, keep=keep, max_seq_len=max_seq_len, method=method)
    vision, embed = _input_graphs(model, spec, keep=keep, max_seq_len=max_seq_len, method=method)
    family = spec.model_family
    config = model.config.text_config
    num_layers = config.num_hidden_layers
    hidden, kv_heads = config.hidden_size, config.num_key_value_heads
    width = head_dim(config)
    rows = family.position_rows
    prompt_len = n + _EXAMPLE_TEXT_TOKENS
    dropped = n - keep
    bounds = {MAX_SEQ_LEN_KEY: str(max_seq_len)}

    selected_in = selection_graph(spec, keep, method)

    def graph(name: str, module: nn.Module, example_inputs: tuple, dynamic_shapes: tuple | None, **kwargs) -> GraphSpec:
        io = graph_io(name, num_layers, selection_graph=selected_in)
        return GraphSpec(name, module.eval(), example_inputs, dynamic_shapes, *io, **kwargs)

    # The example's image block sits mid-prompt; positions as the host makes them do not matter
    # to the trace (any values inside the bounds would do).
    image_start = _EXAMPLE_TEXT_TOKENS // 2
    sequence = Dim(SEQUENCE_DIM, min=n + 1, max=max_seq_len)
    prefill = graph(
        "prefill",
        ContiguousPrefill(family.prefill(model, spec, keep=keep, method=method)),
        (
            torch.zeros(1, prompt_len, hidden),
            torch.arange(prompt_len).expand(rows, 1, prompt_len).contiguous(),
            torch.arange(image_start, image_start + n),
        ),
        ({1: sequence}, {2: sequence}, None),
        metadata=bounds,
    )

    # The cache as fixed-capacity buffers (the runtime writes them in place) and the entries each
    # holds: layers before K the full prompt, layers from K on the pruned one. Two capacities, one
    # symbol when nothing is pruned.
    capacity = Dim(CACHE_DIM, min=n + 2, max=max_seq_len)
    pruned_capacity = capacity if dropped == 0 else Dim(PRUNED_CACHE_DIM, min=keep + 2, max=max_seq_len - dropped)
    lengths = [prompt_len if i < spec.prune_layer else prompt_len - dropped for i in range(num_layers)]
    cache = tuple(
        (torch.zeros(1, kv_heads, length + 1, width), torch.zeros(1, kv_heads, length + 1, width)) for length in lengths
    )
    dims = [capacity if i < spec.prune_layer else pruned_capacity for i in range(num_layers)]
    cache_dims = tuple(({2: dim}, {2: dim}) for dim in dims)
    decode = graph(
        "decode",
        family.decode_step(model),
        (torch.zeros(1, 1, hidden), torch.full((rows, 1, 1), prompt_len), cache, torch.tensor(lengths)),
        (None, None, cache_dims, None),
        metadata=bounds,
    )
    return vision, embed, prefill, decode


class BatchedVision(nn.Module):
    """A vision graph whose image_embeds come out as [1, N, d], the shape ExecuTorch's LLM runners
    read as one prompt segment (any selection outputs follow unchanged)."""

    def __init__(self, vision: nn.Module):
        super().__init__()
        self.vision = vision

    def forward(self, pixel_values: Tensor) -> Tensor | tuple[Tensor, ...]:
        outputs = self.vision(pixel_values)
        if isinstance(outputs, Tensor):
            return outputs[None]
        return (outputs[0][None], *outputs[1:])


def build_pte_graphs(
    model: PreTrainedModel,
    spec: ModelSpec,
    *,
    keep: int,
    max_seq_len: int,
    method: SelectionMethod | None = None,
    layers_per_method: int | None = None,
) -> tuple[GraphSpec, ...]:
    """The .pte's methods (`runtime.contract.pte_methods`), in that order, their text decoders
    keeping the KV cache as in-place state (`models.stateful`).

    `layers_per_method` bounds the layers of one text method (None: no bound): the layers from the
    pruning layer K on then come in groups of at most that many, and an unpruned language model of
    more layers is chained like a pruned one (head, groups, tail), so that lowering handles one
    group at a time (`export.executorch.save_pte`).

    Bounds, with M = max_seq_len: T in [1, M] for token_embedding, text_decoder and the head (prompt
    segments and decode steps alike), [N + 1, M] for select_tokens, [1, M - (N - R)] for the layer
    groups and the tail.
    Raises: as `build_graphs`.
    """
    n = _checked_image_tokens(spec, keep=keep, max_seq_len=max_seq_len, method=method)
    if layers_per_method is not None and layers_per_method < 1:
        raise ValueError(f"layers_per_method must be at least 1, not {layers_per_method}")
    vision, embed = _input_graphs(model, spec, keep=keep, max_seq_len=max_seq_len, method=method)
    selected_in = selection_graph(spec, keep, method)
    config = model.config.text_config
    rows, hidden = spec.model_family.position_rows, config.hidden_size
    bounds = {MAX_SEQ_LEN_KEY: str(max_seq_len)}
    start = torch.tensor([0])

    def graph(name: str, module: nn.Module, example_inputs: tuple, dynamic_shapes: tuple | None) -> GraphSpec:
        io = pte_io(name, position_rows=rows, selection_graph=selected_in)
        return GraphSpec(name, module.eval(), example_inputs, dynamic_shapes, *io, bounds)

    def text(length: int) -> tuple[Tensor, Tensor]:
        """Example states [1, T, d] and position ids [P, 1, T]."""
        return torch.zeros(1, length, hidden), torch.arange(length).expand(rows, 1, length).contiguous()

    sequence = Dim(SEQUENCE_DIM, min=1, max=max_seq_len)
    methods = [
        graph("vision_encoder", BatchedVision(vision.module), vision.example_inputs, None),
        replace(embed, name="token_embedding"),
    ]
    prompt = n + _EXAMPLE_TEXT_TOKENS
    embeds, positions = text(prompt)
    num_layers = config.num_hidden_layers
    pruned = keep < n and selected_in == PREFILL
    if not pruned and (layers_per_method is None or layers_per_method >= num_layers):
        decoder = TextDecoder(model, max_seq_len=max_seq_len)
        if rows == 1:
            methods.append(graph("text_decoder", decoder, (embeds, start), ({1: sequence}, None)))
        else:
            methods.append(graph("text_decoder", decoder, (embeds, start, positions), ({1: sequence}, None, {2: sequence})))
        return tuple(methods)

    k = spec.prune_layer
    head = TextDecoderHead(model, prune_layer=k, max_seq_len=max_seq_len)
    methods.append(graph("text_decoder_head", head, (embeds, positions, start), ({1: sequence}, {2: sequence}, None)))
    if pruned:
        with torch.no_grad():
            states, keys, last_query = head(embeds, positions, start)
        image_start = _EXAMPLE_TEXT_TOKENS // 2
        prompt_dim = Dim(SEQUENCE_DIM, min=n + 1, max=max_seq_len)
        select = SelectTokens(model, method.selector(spec.grid, keep), keep=keep, prune_layer=k)
        methods.append(graph(
            "select_tokens",
            select,
            (states, keys, last_query, positions, torch.arange(image_start, image_start + n)),
            ({1: prompt_dim}, {2: prompt_dim}, None, {2: prompt_dim}, None),
        ))
    capacity = max_seq_len - (n - keep)
    short = Dim(PRUNED_SEQUENCE_DIM, min=1, max=capacity)
    example = (*text(prompt - n + keep), start)
    *groups, last = layer_groups(range(k, num_layers), layers_per_method)
    for i, layers in enumerate(groups):
        module = TextDecoderLayers(model, layers=layers, capacity=capacity)
        methods.append(graph(PTE_LAYER_GROUP.format(i), module, example, ({1: short}, {2: short}, None)))
    tail = TextDecoderTail(model, layers=last, capacity=capacity)
    methods.append(graph(PTE_TAIL, tail, example, ({1: short}, {2: short}, None)))
    return tuple(methods)


def layer_groups(layers: range, per_group: int | None) -> list[range]:
    """`layers` in consecutive groups of `per_group` (None: one group), the last one possibly shorter."""
    step = len(layers) if per_group is None else per_group
    return [range(first, min(first + step, layers.stop)) for first in range(layers.start, layers.stop, step)]
