"""The language model with its KV cache as in-place state: the .pte's text methods (export/ARTIFACTS.md).

Each layer owns its key and value cache, two buffers [1, C_i, n_kv_heads, head_dim] (the layout of
ExecuTorch's LLM custom ops), written in place at the cache position (`llama::update_cache`) and
attended up to it (`llama::custom_sdpa`, causal from that position). No cache crosses a method
boundary and a decode step copies none of it. C_i = M for layers < K, M - (N - R) for layers >= K:
the pruned layers hold R of the N image tokens.

    unpruned (keep = N, or the selection in the vision graph): all weights in one method
        TextDecoder          inputs_embeds [1, T, d], cache_position [1] (, position_ids [3, 1, T]
                             with M-RoPE) -> logits [1, V]     (ExecuTorch's `text_decoder`)
    pruned at layer K: each weight in one method, the selection between them
        TextDecoderHead      inputs_embeds [1, T, d], position_ids [P, 1, T], cache_position [1]
                             -> hidden [1, T, d], keys [1, h, T, hd], last_query [1, heads, 1, hd]
                             (layers 0..K-1; what layer K-1 hands the selector, `LayerOutputs`)
        SelectTokens         hidden, keys, last_query, position_ids, image_positions [N]
                             -> hidden [1, T', d], position_ids [P, 1, T'], kept [R], order [R]
                             (T' = T - N + R; `models.decoder.prune_sequence`)
        TextDecoderLayers    hidden [1, T', d], position_ids [P, 1, T'], cache_position [1]
                             -> hidden [1, T', d]    (zero or more groups of the layers from K on)
        TextDecoderTail      hidden [1, T', d], position_ids [P, 1, T'], cache_position [1]
                             -> logits [1, V]        (the last layers up to L-1, norm, lm_head)
    a language model too large to lower in one method (`export.executorch`) is chained the same
    way when unpruned, without the selection.

The prefill is head -> select -> layer groups -> tail at cache position 0; a decode step is the
same chain without the selection, with one token, the head's cache position the full prompt's
count of tokens so far, the later methods' the pruned one's. Numerically the modules are `models.decoder`'s Prefill and DecodeStep: same layer
computation (`decoder_layer`), another `Attend`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from models.decoder import Attend, check_batch_of_one, decoder_layer, head_dim, prune_sequence, rotary_tables
from models.selectors import LayerOutputs, PrefillSelector

try:  # registers torch.ops.llama.update_cache and custom_sdpa (eager kernels and export)
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("the in-place KV cache needs executorch's LLM custom ops: run `make setup`") from error


class CachedLayers(nn.Module):
    """Decoder layers `first`..`first + len - 1` of the model, each with its in-place cache of `capacity` entries.

    forward(hidden [1, T, d], cos, sin [1, T, head_dim], start int) -> (hidden [1, T, d], the last
    layer's keys [1, T, n_kv_heads, hd] and query [1, T, n_heads, hd], post-RoPE).
    """

    def __init__(self, model: PreTrainedModel, layers: range, capacity: int):
        super().__init__()
        config = model.config.text_config
        self.first = layers.start
        self.capacity = capacity
        self.layers = nn.ModuleList(model.model.language_model.layers[i] for i in layers)
        shape = (1, capacity, config.num_key_value_heads, head_dim(config))
        for i in layers:
            # Not persistent: the cache is state, not a weight; ExecuTorch plans it as mutable memory.
            self.register_buffer(cache_name("key", i), torch.zeros(shape), persistent=False)
            self.register_buffer(cache_name("value", i), torch.zeros(shape), persistent=False)

    def forward(self, hidden: Tensor, cos: Tensor, sin: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        for i, layer in enumerate(self.layers, start=self.first):
            caches = self.get_buffer(cache_name("key", i)), self.get_buffer(cache_name("value", i))
            attend = _in_place_attend(*caches, start, layer.self_attn.scaling)
            hidden, key, _, query = decoder_layer(layer, hidden, cos, sin, attend)
        return hidden, key, query


def cache_name(kind: str, layer: int) -> str:
    """The buffer name of layer `layer`'s `kind` ("key" or "value") cache, unique across the methods."""
    return f"{kind}_cache_{layer}"


def _in_place_attend(key_cache: Tensor, value_cache: Tensor, start: int, scale: float) -> Attend:
    """Write the q new entries at `start`, then attend causally to entries 0 .. start + q - 1."""

    def attend(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        torch.ops.llama.update_cache(key, key_cache, start)
        torch.ops.llama.update_cache(value, value_cache, start)
        return torch.ops.llama.custom_sdpa(query, key_cache, value_cache, start, None, 0.0, True, scale), key, value

    return attend


def _start(cache_position: Tensor, length: int, capacity: int) -> int:
    """The cache position as an int the exported graph can bound: 0 <= start, start + T <= capacity."""
    start = cache_position[0].item()
    torch._check(start >= 0)
    torch._check(start + length <= capacity)
    return start


class TextDecoder(nn.Module):
    """Every layer, the final norm and the LM head, for prompt segments and decode steps alike.

    forward(inputs_embeds [1, T, d], cache_position int64 [1], position_ids int64 [3, 1, T] with
    M-RoPE only) -> logits [1, V] of the last token. With one position row (RoPE) the positions
    are the cache slots, cache_position .. cache_position + T - 1, as ExecuTorch's LLM runners pass them.
    """

    def __init__(self, model: PreTrainedModel, *, max_seq_len: int):
        super().__init__()
        text = model.model.language_model
        self.stack = CachedLayers(model, range(len(text.layers)), max_seq_len)
        self.rotary_emb, self.norm, self.lm_head = text.rotary_emb, text.norm, model.lm_head

    def forward(self, inputs_embeds: Tensor, cache_position: Tensor, position_ids: Tensor | None = None) -> Tensor:
        check_batch_of_one("inputs_embeds", inputs_embeds)
        length = inputs_embeds.shape[1]
        start = _start(cache_position, length, self.stack.capacity)
        if position_ids is None:
            position_ids = (torch.arange(length, device=inputs_embeds.device) + cache_position)[None, None]
        cos, sin = rotary_tables(self.rotary_emb, inputs_embeds, position_ids)
        hidden, _, _ = self.stack(inputs_embeds, cos, sin, start)
        return self.lm_head(self.norm(hidden[:, -1]))


class TextDecoderHead(nn.Module):
    """Layers 0..K-1: forward(inputs_embeds [1, T, d], position_ids [P, 1, T], cache_position [1]) ->
    (hidden [1, T, d], keys [1, n_kv_heads, T, hd], last_query [1, n_heads, 1, hd]) of layer K-1."""

    def __init__(self, model: PreTrainedModel, *, prune_layer: int, max_seq_len: int):
        super().__init__()
        self.stack = CachedLayers(model, range(prune_layer), max_seq_len)
        self.rotary_emb = model.model.language_model.rotary_emb

    def forward(self, inputs_embeds: Tensor, position_ids: Tensor, cache_position: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        check_batch_of_one("inputs_embeds", inputs_embeds)
        start = _start(cache_position, inputs_embeds.shape[1], self.stack.capacity)
        cos, sin = rotary_tables(self.rotary_emb, inputs_embeds, position_ids)
        hidden, key, query = self.stack(inputs_embeds, cos, sin, start)
        # Copies in the contiguous layout: ExecuTorch hands out outputs in their traced layout.
        keys = key.transpose(1, 2).clone(memory_format=torch.contiguous_format)
        last_query = query[:, -1:].transpose(1, 2).clone(memory_format=torch.contiguous_format)
        return hidden, keys, last_query


class SelectTokens(nn.Module):
    """The selection at the input of layer K and the sequence it leaves (`models.decoder.prune_sequence`).

    forward(hidden [1, T, d], keys [1, n_kv_heads, T, hd], last_query [1, n_heads, 1, hd],
    position_ids [P, 1, T], image_positions int64 [N]) -> (hidden [1, T', d], position_ids [P, 1, T'],
    kept [R], order [R]), T' = T - N + R.

    Holds no weight of the layers; a selector that reads the final-normed states (DART) shares the
    final norm's d values with the tail.
    """

    def __init__(self, model: PreTrainedModel, selector: PrefillSelector, *, keep: int, prune_layer: int):
        super().__init__()
        text = model.model.language_model
        self.selector, self.keep, self.norm = selector, keep, text.norm
        self.scaling = text.layers[prune_layer - 1].self_attn.scaling

    def forward(
        self, hidden: Tensor, keys: Tensor, last_query: Tensor, position_ids: Tensor, image_positions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        outputs = LayerOutputs(hidden, keys, last_query, self.scaling, self.norm, image_positions)
        kept, order, hidden, gather = prune_sequence(self.selector, outputs, self.keep)
        return hidden, position_ids.index_select(2, gather), kept, order


class TextDecoderLayers(nn.Module):
    """A group of layers from K on, between the selection and the tail when the language model is
    lowered in several methods: forward(hidden [1, T', d], position_ids [P, 1, T'], cache_position
    [1]) -> hidden [1, T', d]."""

    def __init__(self, model: PreTrainedModel, *, layers: range, capacity: int):
        super().__init__()
        self.stack = CachedLayers(model, layers, capacity)
        self.rotary_emb = model.model.language_model.rotary_emb

    def forward(self, hidden: Tensor, position_ids: Tensor, cache_position: Tensor) -> Tensor:
        start = _start(cache_position, hidden.shape[1], self.stack.capacity)
        cos, sin = rotary_tables(self.rotary_emb, hidden, position_ids)
        return self.stack(hidden, cos, sin, start)[0]


class TextDecoderTail(TextDecoderLayers):
    """The last layers (by default all from K on), the final norm and the LM head: forward(hidden
    [1, T', d], position_ids [P, 1, T'], cache_position [1]) -> logits [1, V] of the last token."""

    def __init__(self, model: PreTrainedModel, *, layers: range, capacity: int):
        super().__init__(model, layers=layers, capacity=capacity)
        self.norm, self.lm_head = model.model.language_model.norm, model.lm_head

    def forward(self, hidden: Tensor, position_ids: Tensor, cache_position: Tensor) -> Tensor:
        hidden = super().forward(hidden, position_ids, cache_position)
        return self.lm_head(self.norm(hidden[:, -1]))
