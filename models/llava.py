"""LLaVA-1.5 as the four modules that are exported, with VLM-Pruner inside the language model.

    pixel_values ──VisionEncoder──> image_embeds [N, d]
    input_ids ────TokenEmbedding──> text embeds [1, T, d]   (the runtime splices image_embeds in)

    Prefill(keep=R): inputs_embeds [1, T, d], image_start [1]
        layers 0..K-1 on all T tokens ──> keys of layer K-1 (post-RoPE) + hidden states
        select_tokens on the N image tokens ──> R kept (ascending) + fused states
        sequence = prefix + R kept image tokens + suffix (T - N + R), original positions
        layers K..L-1 on the short sequence ──> logits of the last token, KV cache

    DecodeStep: one token at position p >= T, attends to the whole cache of every layer.

Every module reuses the transformers submodules of a `LlavaForConditionalGeneration` (CLIP layers,
projector, Llama attention projections, norms, MLPs, rotary embedding, lm_head) and calls them
directly, so that the KV cache is a tuple of explicit tensors, one (key, value) pair per layer,
each [1, n_kv_heads, length, head_dim], and the traced graph holds neither HF's cache object nor
its attention-mask builders. Control flow is static: the keep count R, the pruning layer K and the
image geometry are constructor ints; only the sequence length T and the cache length vary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import LlavaForConditionalGeneration
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, apply_rotary_pos_emb, repeat_kv

from pruning_graph import VLMPrunerConfig, VLMPrunerSelect

KVCache = tuple[tuple[Tensor, Tensor], ...]


class VisionEncoder(nn.Module):
    """CLIP vision tower up to the feature layer, CLS dropped, then the projector.

    forward(pixel_values float [1, 3, S, S]) -> image_embeds [N, d_text], N = (S / patch)^2.
    """

    def __init__(self, model: LlavaForConditionalGeneration):
        super().__init__()
        config = model.config
        strategy = config.vision_feature_select_strategy
        if strategy != "default":
            raise ValueError(f"only the 'default' feature select strategy (CLS dropped) is supported, got {strategy!r}")
        tower = model.model.vision_tower
        self.embeddings = tower.embeddings
        self.pre_layernorm = tower.pre_layrnorm
        # Layers after the feature layer do not contribute to the output: they are left out.
        depth = _vision_depth(config.vision_feature_layer, len(tower.encoder.layers))
        self.layers = nn.ModuleList(tower.encoder.layers[:depth])
        self.projector = model.model.multi_modal_projector

    def forward(self, pixel_values: Tensor) -> Tensor:
        _check_batch_of_one("pixel_values", pixel_values)
        hidden = self.pre_layernorm(self.embeddings(pixel_values))  # [1, 1 + N, d_vision]
        for layer in self.layers:
            hidden = layer(hidden, None)
        return self.projector(hidden[0, 1:])  # [N, d_text]


class TokenEmbedding(nn.Module):
    """forward(input_ids int64 [1, T]) -> embeds [1, T, d]."""

    def __init__(self, model: LlavaForConditionalGeneration):
        super().__init__()
        self.embed_tokens = model.model.language_model.embed_tokens

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.embed_tokens(input_ids)


class Prefill(nn.Module):
    """The prompt pass, pruning the image tokens at the input of layer K.

    forward(inputs_embeds [1, T, d], image_start int64 [1]) -> (logits [1, vocab], kept int64 [R],
    cache), with `cache[i]` = (key, value) of layer i, each [1, n_kv_heads, length_i, head_dim]:
    length T for layers < K, T - N + R for layers >= K. `image_start` is the position of the
    first of the N image tokens; `kept` holds positions inside the image block, ascending.
    Positions keep their original values after pruning, so the next token is at position T.

    With keep == N no selection runs: the module is then exactly the unpruned model.
    """

    def __init__(
        self,
        model: LlavaForConditionalGeneration,
        *,
        grid: tuple[int, int],
        keep: int,
        prune_layer: int,
        pruner_config: VLMPrunerConfig = VLMPrunerConfig(),
    ):
        super().__init__()
        text = model.model.language_model
        height, width = grid
        self.num_image_tokens = height * width
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= self.num_image_tokens:
            raise ValueError(f"keep must be an integer in [1, N] = [1, {self.num_image_tokens}], got {keep!r}")
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
            # On the weights' device, so that the selector's constant tables follow the model.
            self.selector = VLMPrunerSelect(grid, keep, pruner_config).to(model.lm_head.weight.device)

    def forward(self, inputs_embeds: Tensor, image_start: Tensor) -> tuple[Tensor, Tensor, KVCache]:
        _check_batch_of_one("inputs_embeds", inputs_embeds)
        positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)  # [T]
        cos, sin = self.rotary_emb(inputs_embeds, positions[None])  # [1, T, head_dim] each
        return self.run_layers(inputs_embeds, cos, sin, image_start)

    def run_layers(
        self, inputs_embeds: Tensor, cos: Tensor, sin: Tensor, image_start: Tensor
    ) -> tuple[Tensor, Tensor, KVCache]:
        """The layers, the selection between them and the head, given the prompt's rotary tables
        cos, sin [1, T, head_dim] (a family's own position scheme makes them)."""
        hidden = inputs_embeds
        cache = []
        for layer in self.layers[: self.prune_layer]:
            hidden, key, value = _decoder_layer(layer, hidden, cos, sin)
            cache.append((key, value))

        if self.selector is None:
            kept = torch.arange(self.num_image_tokens, device=hidden.device)
        else:
            kept, hidden, gather = self._prune(hidden, cache[-1][0], image_start)
            cos, sin = cos.index_select(1, gather), sin.index_select(1, gather)

        for layer in self.layers[self.prune_layer :]:
            hidden, key, value = _decoder_layer(layer, hidden, cos, sin)
            cache.append((key, value))
        logits = self.lm_head(self.norm(hidden[:, -1]))  # [1, vocab]
        return logits, kept, tuple(cache)

    def _prune(self, hidden: Tensor, keys: Tensor, image_start: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Select and fuse the image tokens, then shorten the sequence.

        Args:
            hidden: [1, T, d], layer K-1's output. keys: [1, n_kv_heads, T, head_dim], its
                post-RoPE keys. image_start: int64 [1].
        Returns:
            kept: int64 [R]; hidden: [1, T - N + R, d], the input of layer K; gather: int64
            [T - N + R], the original position of each remaining token.
        """
        n, r = self.num_image_tokens, self.keep
        rows = image_start + torch.arange(n, device=hidden.device)  # [N]
        # Un-repeated KV heads concatenated per token: [N, n_kv_heads * head_dim].
        image_keys = keys[0].index_select(1, rows).transpose(0, 1).reshape(n, -1)
        image_states = hidden[0].index_select(0, rows)  # [N, d]
        kept, fused = self.selector(image_keys, image_states)  # [R], [R, d]

        # Remaining token j: prefix text (j < start), kept image token (start <= j < start + R),
        # suffix text shifted by the N - R dropped tokens. Arithmetic only, so T stays symbolic.
        seq = torch.arange(hidden.shape[1] - n + r, device=hidden.device)  # [T - N + R]
        in_image = (seq >= image_start) & (seq < image_start + r)
        slot = (seq - image_start).clamp(0, r - 1)
        gather = torch.where(
            seq < image_start, seq, torch.where(in_image, image_start + kept.index_select(0, slot), seq + (n - r))
        )
        hidden = torch.where(in_image[None, :, None], fused.index_select(0, slot)[None], hidden.index_select(1, gather))
        return kept, hidden, gather


class DecodeStep(nn.Module):
    """One generated token through every layer, attending to the whole cache.

    forward(inputs_embeds [1, 1, d], position int64 [1], cache) -> (logits [1, vocab], cache with
    one more entry per layer). `cache[i]` = (key, value), each [1, n_kv_heads, length_i, head_dim];
    lengths differ between the layers before and after the pruning layer, positions do not: the
    first decode step is at position T, the full prompt length.
    """

    def __init__(self, model: LlavaForConditionalGeneration):
        super().__init__()
        text = model.model.language_model
        self.layers = text.layers
        self.norm = text.norm
        self.rotary_emb = text.rotary_emb
        self.lm_head = model.lm_head

    def forward(self, inputs_embeds: Tensor, position: Tensor, cache: KVCache) -> tuple[Tensor, KVCache]:
        _check_batch_of_one("inputs_embeds", inputs_embeds)
        cos, sin = self.rotary_emb(inputs_embeds, position[None])  # [1, 1, head_dim] each
        return self.run_layers(inputs_embeds, cos, sin, cache)

    def run_layers(self, inputs_embeds: Tensor, cos: Tensor, sin: Tensor, cache: KVCache) -> tuple[Tensor, KVCache]:
        """Every layer and the head, given the token's rotary tables cos, sin [1, 1, head_dim]."""
        if len(cache) != len(self.layers):
            raise ValueError(f"cache has {len(cache)} layers, the model has {len(self.layers)}")
        hidden = inputs_embeds
        present = []
        for layer, (past_key, past_value) in zip(self.layers, cache):
            hidden, key, value = _decoder_layer(layer, hidden, cos, sin, past_key, past_value)
            present.append((key, value))
        logits = self.lm_head(self.norm(hidden[:, -1]))  # [1, vocab]
        return logits, tuple(present)


def _decoder_layer(
    layer: LlamaDecoderLayer,
    hidden: Tensor,
    cos: Tensor,
    sin: Tensor,
    past_key: Tensor | None = None,
    past_value: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One Llama decoder layer with an explicit cache.

    Without a past: causal attention over the q tokens themselves (prefill). With a past: the q
    tokens are one new token, which attends to the past and itself (decode).

    Args:
        hidden: [1, q, d]. cos, sin: [1, q, head_dim], rotary tables of the q tokens' positions.
        past_key, past_value: [1, n_kv_heads, p, head_dim] or None.
    Returns:
        hidden [1, q, d], key and value [1, n_kv_heads, p + q, head_dim] (keys after RoPE).
    """
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    # Explicit head counts, not -1: inferring a size from a symbolic length adds guards to the
    # exported graph that torch.export cannot always prove.
    heads, kv_heads = attn.config.num_attention_heads, attn.config.num_key_value_heads
    x = layer.input_layernorm(hidden)
    query = attn.q_proj(x).view(batch, length, heads, attn.head_dim).transpose(1, 2)  # [1, n_heads, q, head_dim]
    key = attn.k_proj(x).view(batch, length, kv_heads, attn.head_dim).transpose(1, 2)  # [1, n_kv_heads, q, head_dim]
    value = attn.v_proj(x).view(batch, length, kv_heads, attn.head_dim).transpose(1, 2)
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    if past_key is None:
        out = _causal_attention(query, key, value, attn.scaling)
    else:
        key = torch.cat([past_key, key], dim=2)
        value = torch.cat([past_value, value], dim=2)
        out = _single_query_attention(query, key, value, attn.scaling)
    out = out.transpose(1, 2).reshape(batch, length, heads * attn.head_dim)
    hidden = hidden + attn.o_proj(out)
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return hidden, key, value


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


def _vision_depth(feature_layer: int | list[int], num_layers: int) -> int:
    """Number of CLIP layers to run so that the last one outputs hidden_states[feature_layer].

    hidden_states[0] is the embedding output and hidden_states[i] the output of layer i - 1.
    """
    if isinstance(feature_layer, bool) or not isinstance(feature_layer, int):
        raise ValueError(f"only a single vision_feature_layer is supported, got {feature_layer!r}")
    depth = feature_layer if feature_layer >= 0 else num_layers + 1 + feature_layer
    if not 0 <= depth <= num_layers:
        raise ValueError(f"vision_feature_layer {feature_layer} is out of range for {num_layers} layers")
    return depth


def _check_batch_of_one(name: str, x: Tensor) -> None:
    if x.shape[0] != 1:
        raise ValueError(f"batch size 1 only: {name} has batch size {x.shape[0]} (shape {tuple(x.shape)})")
