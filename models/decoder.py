"""The language model side shared by every family: prefill with the selector at layer K, decode step.

    Prefill(keep=R): inputs_embeds [1, T, d], position_ids [rows, 1, T], image_positions [N]
        layers 0..K-1 on all T tokens ──> keys of layer K-1 (post-RoPE) + hidden states
        selector on the N image tokens ──> R kept (ascending, and in selection order) + their
            states (fused or not)
        sequence = the T tokens less the N - R dropped image tokens, in order, each with its
        original position ids
        layers K..L-1 on the short sequence ──> logits of the last token, KV cache

    DecodeStep: one token at position ids [rows, 1, 1], attends to the whole cache of every layer;
        the cache exactly the past (one longer afterwards), or fixed-capacity buffers written at
        each layer's length (`buffer_attention`, which ONNX Runtime runs in place).

The modules call the transformers decoder layers' submodules (attention projections, norms, MLPs,
rotary embedding, lm_head) directly, so that the KV cache is a tuple of explicit tensors, one
(key, value) pair per layer, each [1, n_kv_heads, length, head_dim], and the traced graph holds
neither HF's cache object nor its attention-mask builders. Control flow is static: the keep count
R, the pruning layer K and the image geometry are constructor ints; only the sequence length T and
the cache length vary. Positions are one row (RoPE, LLaVA) or three (M-RoPE, Qwen2-VL): `rotary_tables`.

`decoder_layer` is the one layer computation; what its attention reads and hands on as cache is an
`Attend` (here explicit tensors; `models.stateful` keeps the cache as in-place buffers).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, apply_rotary_pos_emb, repeat_kv

from models.selectors import DEFAULT_METHOD, PREFILL, LayerOutputs, SelectionMethod, get_method
from pruning_graph.validation import Grid, check_grid_and_keep

KVCache = tuple[tuple[Tensor, Tensor], ...]


class TokenEmbedding(nn.Module):
    """forward(input_ids int64 [1, T]) -> embeds [1, T, d]."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.embed_tokens = model.model.language_model.embed_tokens

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.embed_tokens(input_ids)


class Prefill(nn.Module):
    """The prompt pass, pruning the image tokens at the input of layer K.

    forward(inputs_embeds [1, T, d], position_ids int64 [rows, 1, T], image_positions int64 [N]) ->
    (logits [1, vocab], kept int64 [R], order int64 [R], cache), with `cache[i]` = (key, value) of
    layer i, each [1, n_kv_heads, length_i, head_dim]: length T for layers < K, T - N + R for
    layers >= K. `image_positions` are the sequence positions of the N image tokens, ascending, in
    the order of the selector's geometry; `kept` indexes them, ascending, and `order` lists the same
    tokens in the order the selector chose them. Every remaining token keeps its original position
    ids: nothing is renumbered after pruning.

    With keep == N no selection runs: the module is then exactly the unpruned model.

    Args:
        model: a transformers VLM with `model.model.language_model` (embed_tokens, layers, norm,
            rotary_emb) and `model.lm_head`.
        grid: the selector's geometry of the N image tokens: (H, W), or a sequence of views.
        method: the selection method (`models.selectors`), VLM-Pruner by default; one that selects
            in the prefill (`SelectionMethod.selection_graph`).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        grid: Grid,
        keep: int,
        prune_layer: int,
        method: SelectionMethod | None = None,
    ):
        super().__init__()
        text = model.model.language_model
        views = check_grid_and_keep(grid, keep)
        self.num_image_tokens = sum(height * width for height, width in views)
        if not 1 <= prune_layer < len(text.layers):
            raise ValueError(f"prune_layer must be in [1, {len(text.layers) - 1}], got {prune_layer}")
        self.keep = keep
        self.prune_layer = prune_layer
        self.layers = text.layers
        self.norm = text.norm
        self.rotary_emb = text.rotary_emb
        self.lm_head = model.lm_head
        self.selector = None
        if keep < self.num_image_tokens:
            method = method or get_method(DEFAULT_METHOD)
            if method.selection_graph != PREFILL:
                raise ValueError(f"{method.name} selects in the {method.selection_graph} graph, not in the prefill")
            # On the weights' device, so that the selector's constant tables follow the model.
            self.selector = method.selector(grid, keep).to(model.lm_head.weight.device)

    def forward(
        self, inputs_embeds: Tensor, position_ids: Tensor, image_positions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, KVCache]:
        check_batch_of_one("inputs_embeds", inputs_embeds)
        cos, sin = rotary_tables(self.rotary_emb, inputs_embeds, position_ids)  # [1, T, head_dim] each
        hidden = inputs_embeds
        cache = []
        for layer in self.layers[: self.prune_layer]:
            hidden, key, value, query = decoder_layer(layer, hidden, cos, sin, causal_attend(layer.self_attn.scaling))
            cache.append((key, value))

        if self.selector is None:
            # Two tensors: one returned twice would be one graph output under two names.
            kept = torch.arange(self.num_image_tokens, device=hidden.device)
            order = torch.arange(self.num_image_tokens, device=hidden.device)
        else:
            outputs = LayerOutputs.of_layer(layer, hidden, key, query, self.norm, image_positions)
            kept, order, hidden, gather = prune_sequence(self.selector, outputs, self.keep)
            cos, sin = cos.index_select(1, gather), sin.index_select(1, gather)

        for layer in self.layers[self.prune_layer :]:
            hidden, key, value, _ = decoder_layer(layer, hidden, cos, sin, causal_attend(layer.self_attn.scaling))
            cache.append((key, value))
        logits = self.lm_head(self.norm(hidden[:, -1]))  # [1, vocab]
        return logits, kept, order, tuple(cache)


def prune_sequence(selector: nn.Module, outputs: LayerOutputs, keep: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Select R = `keep` image tokens (their states fused or not), then drop the others from the sequence.

    Returns:
        kept: int64 [R]; order: int64 [R], kept in selection order; hidden: [1, T - N + R, d],
        the input of layer K; gather: int64 [T - N + R], the original position of each remaining token.
    """
    hidden, image_positions = outputs.hidden, outputs.image_positions
    n, r = image_positions.shape[0], keep
    length = hidden.shape[1]
    kept, fused, order = selector(outputs)  # [R], [R, d], [R]
    rows = image_positions.index_select(0, kept)[:, None].expand(r, fused.shape[1])  # [R, d]
    states = hidden[0].scatter(0, rows, fused)  # [T, d], the kept image tokens fused

    # The remaining tokens in order, by scatter, not nonzero (a data-dependent size): token t
    # goes to slot rank(t) if it remains, to a spare slot past the end if it was dropped.
    image_kept = torch.zeros(n, dtype=torch.int64, device=hidden.device).scatter(0, kept, torch.ones_like(kept))
    remains = torch.ones(length, dtype=torch.int64, device=hidden.device).scatter(0, image_positions, image_kept)
    short = length - n + r
    slot = torch.where(remains > 0, remains.cumsum(0) - 1, short)  # [T]
    positions = torch.arange(length, device=hidden.device)
    gather = torch.zeros(short + 1, dtype=torch.int64, device=hidden.device).scatter(0, slot, positions)[:short]
    return kept, order, states.index_select(0, gather)[None], gather


class DecodeStep(nn.Module):
    """One generated token through every layer, attending to the whole cache.

    forward(inputs_embeds [1, 1, d], position_ids int64 [rows, 1, 1], cache, cache_lengths=None)
    -> (logits [1, vocab], cache with one more entry per layer). `cache[i]` = (key, value), each
    [1, n_kv_heads, length_i, head_dim]; lengths differ between the layers before and after the
    pruning layer, positions do not: they continue from the last prompt position (the host says
    which, `runtime.families`). With `cache_lengths` int64 [layers], each (key, value) is a buffer
    [1, n_kv_heads, capacity_i, head_dim] whose first cache_lengths[i] entries are the past: the new
    entry is written at that index and the buffers come back whole (`buffer_attention`).
    """

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        text = model.model.language_model
        self.layers = text.layers
        self.norm = text.norm
        self.rotary_emb = text.rotary_emb
        self.lm_head = model.lm_head

    def forward(
        self, inputs_embeds: Tensor, position_ids: Tensor, cache: KVCache, cache_lengths: Tensor | None = None
    ) -> tuple[Tensor, KVCache]:
        check_batch_of_one("inputs_embeds", inputs_embeds)
        if len(cache) != len(self.layers):
            raise ValueError(f"cache has {len(cache)} layers, the model has {len(self.layers)}")
        cos, sin = rotary_tables(self.rotary_emb, inputs_embeds, position_ids)  # [1, 1, head_dim] each
        hidden = inputs_embeds
        present = []
        for i, (layer, (past_key, past_value)) in enumerate(zip(self.layers, cache)):
            scale = layer.self_attn.scaling
            if cache_lengths is None:
                attend = past_attend(past_key, past_value, scale)
            else:
                attend = buffer_attend(past_key, past_value, cache_lengths[i : i + 1], scale)
            hidden, key, value, _ = decoder_layer(layer, hidden, cos, sin, attend)
            present.append((key, value))
        logits = self.lm_head(self.norm(hidden[:, -1]))  # [1, vocab]
        return logits, tuple(present)


# attend(query [1, q, n_heads, hd], key, value [1, q, n_kv_heads, hd], the q tokens' post-RoPE
# projections) -> (out [1, q, n_heads, hd], key, value: what the layer hands on as its cache).
Attend = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def decoder_layer(
    layer: LlamaDecoderLayer, hidden: Tensor, cos: Tensor, sin: Tensor, attend: Attend
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Llama decoder layer whose attention over the cache is `attend`'s.

    Args:
        hidden: [1, q, d]. cos, sin: [1, q, head_dim], rotary tables of the q tokens' positions.
    Returns:
        hidden [1, q, d]; the key and value `attend` returns; query [1, q, n_heads, head_dim] (post-RoPE).
    """
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    # Explicit head counts, not -1: inferring a size from a symbolic length adds guards to the
    # exported graph that torch.export cannot always prove.
    heads, kv_heads = attn.config.num_attention_heads, attn.config.num_key_value_heads
    x = layer.input_layernorm(hidden)
    query = attn.q_proj(x).view(batch, length, heads, attn.head_dim)
    key = attn.k_proj(x).view(batch, length, kv_heads, attn.head_dim)
    value = attn.v_proj(x).view(batch, length, kv_heads, attn.head_dim)
    query, key = apply_rotary_pos_emb(query, key, cos, sin, unsqueeze_dim=2)
    out, key, value = attend(query, key, value)
    hidden = hidden + attn.o_proj(out.reshape(batch, length, heads * attn.head_dim))
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return hidden, key, value, query


def causal_attend(scale: float) -> Attend:
    """Causal self-attention of the q tokens among themselves (prefill); the cache is their
    keys and values, [1, n_kv_heads, q, hd]."""

    def attend(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        key, value = key.transpose(1, 2), value.transpose(1, 2)
        return _causal_attention(query.transpose(1, 2), key, value, scale).transpose(1, 2), key, value

    return attend


def past_attend(past_key: Tensor, past_value: Tensor, scale: float) -> Attend:
    """One new token attending to the past [1, n_kv_heads, p, hd] and itself (decode); the cache
    is the past one entry longer."""

    def attend(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        key = torch.cat([past_key, key.transpose(1, 2)], dim=2)
        value = torch.cat([past_value, value.transpose(1, 2)], dim=2)
        return _single_query_attention(query.transpose(1, 2), key, value, scale).transpose(1, 2), key, value

    return attend


def buffer_attend(key_buffer: Tensor, value_buffer: Tensor, length: Tensor, scale: float) -> Attend:
    """One new token attending to the first `length` entries of fixed-capacity buffers [1,
    n_kv_heads, capacity, hd] and itself (decode); the cache is the buffers with the new entry
    written at index `length` (int64 [1])."""

    def attend(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return torch.ops.vlm_pruner.buffer_attention(query, key, value, key_buffer, value_buffer, length, scale)

    return attend


# An op of its own, not a composition of torch ops: its ONNX translation (`export.onnx_ops`) is ONNX
# Runtime's GroupQueryAttention, which writes the new entry into the bound buffers in place, where
# any ONNX composition (Concat, ScatterND) returns a new copy of the whole cache every step.
@torch.library.custom_op("vlm_pruner::buffer_attention", mutates_args=())
def buffer_attention(
    query: Tensor, key: Tensor, value: Tensor, key_buffer: Tensor, value_buffer: Tensor, length: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """query [1, 1, n_heads, hd], key/value [1, 1, n_kv_heads, hd] (post-RoPE), buffers [1,
    n_kv_heads, capacity, hd] holding `length` (int64 [1]) entries -> (out [1, 1, n_heads, hd], the
    buffers with key/value at index `length`). Entries after it are unspecified (ONNX Runtime's
    are whatever the bound buffer held)."""
    at = int(length.item())
    if not 0 <= at < key_buffer.shape[2]:
        raise ValueError(f"cache length {at} leaves no room in a buffer of {key_buffer.shape[2]} entries")
    key_buffer, value_buffer = key_buffer.clone(), value_buffer.clone()
    key_buffer[:, :, at] = key[:, 0]
    value_buffer[:, :, at] = value[:, 0]
    keys, values = key_buffer[:, :, : at + 1], value_buffer[:, :, : at + 1]
    out = _single_query_attention(query.transpose(1, 2), keys, values, scale).transpose(1, 2).contiguous()
    return out, key_buffer, value_buffer


@buffer_attention.register_fake
def _(query: Tensor, key: Tensor, value: Tensor, key_buffer: Tensor, value_buffer: Tensor, length: Tensor, scale: float):
    return torch.empty_like(query), torch.empty_like(key_buffer), torch.empty_like(value_buffer)


def rotary_tables(rotary_emb: nn.Module, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
    """cos, sin [1, q, head_dim] of position_ids int64 [rows, 1, q]: one row is RoPE (LLaVA), three
    rows M-RoPE (Qwen2-VL's rotary embedding takes them all and interleaves its sections)."""
    return rotary_emb(x, position_ids[0] if position_ids.shape[0] == 1 else position_ids)


def _causal_attention(query: Tensor, key: Tensor, value: Tensor, scale: float) -> Tensor:
    """Causal self-attention of q tokens: query [1, n_heads, q, hd], key/value [1, n_kv_heads, q, hd]."""
    groups = query.shape[1] // key.shape[1]
    return F.scaled_dot_product_attention(
        query, repeat_kv(key, groups), repeat_kv(value, groups), is_causal=True, scale=scale
    )  # [1, n_heads, q, hd]


def _single_query_attention(query: Tensor, key: Tensor, value: Tensor, scale: float) -> Tensor:
    """One token attending to every cache entry: query [1, n_heads, 1, hd], key/value [1, n_kv_heads, p, hd].

    The query heads sharing a KV head are stacked as that head's queries ([1, n_kv_heads,
    groups, hd]), so the cache is never repeated: repeating it costs memory, and reshaping a
    cache of symbolic length puts a guard into the exported graph that torch.export cannot prove.
    """
    batch, heads, _, head_dim = query.shape
    grouped = query.reshape(batch, key.shape[1], heads // key.shape[1], head_dim)
    out = F.scaled_dot_product_attention(grouped, key, value, scale=scale)
    # An explicit copy, not a view: ExecuTorch's decomposition of SDPA returns another layout than
    # the one traced, and a traced view of it fails to lower.
    return out.clone(memory_format=torch.contiguous_format).reshape(batch, heads, 1, head_dim)


def head_dim(config: PretrainedConfig) -> int:
    """The attention head width of a text config: its `head_dim`, else hidden size / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def check_batch_of_one(name: str, x: Tensor) -> None:
    if x.shape[0] != 1:
        raise ValueError(f"batch size 1 only: {name} has batch size {x.shape[0]} (shape {tuple(x.shape)})")

