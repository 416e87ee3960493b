"""Qwen2-VL as the modules that are exported, with VLM-Pruner inside the language model.

    pixel_values [P, C*tp*p*p] ──Qwen2VLVisionEncoder──> image_embeds [N, d]   (P = t*h*w patches,
                                                                                N = P / merge^2)
    input_ids ──Qwen2VLTokenEmbedding──> text embeds [1, T, d]   (the runtime splices image_embeds in)
    host: mrope_position_ids(T, image_start, grid) ──> position_ids [3, 1, T], rope_delta

    Qwen2VLPrefill(keep=R): inputs_embeds [1, T, d], position_ids [3, 1, T], image_start [1]
        layers 0..K-1 on all T tokens ──> keys of layer K-1 (post-M-RoPE) + hidden states
        select_tokens on the N image tokens (merged H x W token grid) ──> R kept + fused states
        sequence = prefix + R kept image tokens + suffix (T - N + R), each with its original
        3-row position ids
        layers K..L-1 on the short sequence ──> logits of the last token, KV cache

    Qwen2VLDecodeStep: one token at position ids [3, 1, 1], all three rows T + s + rope_delta
        for the s-th step (s = 0, 1, ...), attends to the whole cache of every layer.

The text side is LLaVA's (`models.llava`) with Qwen2-VL's multimodal rotary embedding (M-RoPE):
the same decoder-layer call with an explicit cache, the same selection and sequence shortening;
only the rotary tables come from 3-row position ids instead of 0..T-1. The vision side runs for
one fixed image grid: the Conv3d patch embedding as an equivalent Linear (ExecuTorch has no
portable Conv3d kernel), the 2-D vision rotary tables precomputed as buffers, and attention inside
each frame (t = 1 for an image) with static boundaries instead of transformers' data-dependent
`cu_seqlens`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLVisionBlock, apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_position_ids

from models.llava import DecodeStep, KVCache, Prefill, TokenEmbedding, _check_batch_of_one
from pruning_graph import VLMPrunerConfig

# The token embedding is LLaVA's: both read `model.model.language_model.embed_tokens`.
# forward(input_ids int64 [1, T]) -> embeds [1, T, d].
Qwen2VLTokenEmbedding = TokenEmbedding


class Qwen2VLVisionEncoder(nn.Module):
    """Qwen2-VL's vision tower and patch merger for one fixed image grid.

    forward(pixel_values float [t*h*w, C*tp*p*p]) -> image_embeds [N, d_text], N = t*h*w / merge^2.
    `pixel_values` are the image processor's flattened patches, in its order (2 x 2 merge blocks
    row-major, patches row-major inside a block); the embeddings come out in the merged tokens'
    row-major order, the order of the image tokens in the prompt.
    """

    def __init__(self, model: Qwen2VLForConditionalGeneration, *, grid: tuple[int, int, int]):
        super().__init__()
        tower = model.model.visual
        t, h, w = grid
        merge = tower.spatial_merge_size
        if min(grid) < 1 or h % merge or w % merge:
            raise ValueError(f"grid (t, h, w) must be positive with h and w multiples of {merge}, got {tuple(grid)}")
        self.num_patches = t * h * w
        self.frames = t
        self.patch_embed = conv3d_as_linear(tower.patch_embed.proj)
        self.blocks = tower.blocks
        self.merger = tower.merger
        # The rotary tables of the grid's patches, from a rotary embedding made afresh from the
        # config: right even for a model whose buffers were never initialised (a weight-free twin).
        positions = get_vision_position_ids(torch.tensor([grid]), merge)  # [P, 2]: (row, column) of each patch
        cos, sin = type(tower.rotary_pos_emb)(tower.config)(positions, positions)  # [P, head_dim] each
        device = self.patch_embed.weight.device
        self.register_buffer("cos", cos.to(device), persistent=False)
        self.register_buffer("sin", sin.to(device), persistent=False)

    def forward(self, pixel_values: Tensor) -> Tensor:
        if tuple(pixel_values.shape) != (self.num_patches, self.patch_embed.in_features):
            raise ValueError(
                f"pixel_values must be [{self.num_patches}, {self.patch_embed.in_features}] for this grid, "
                f"got {tuple(pixel_values.shape)}"
            )
        hidden = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # [P, d_vision]
        for block in self.blocks:
            hidden = _vision_block(block, hidden, self.cos, self.sin, self.frames)
        return self.merger(hidden)  # [N, d_text]


class Qwen2VLPrefill(Prefill):
    """The prompt pass with M-RoPE, pruning the image tokens at the input of layer K.

    forward(inputs_embeds [1, T, d], position_ids int64 [3, 1, T], image_start int64 [1]) ->
    (logits [1, vocab], kept int64 [R], cache), with `cache[i]` = (key, value) of layer i, each
    [1, n_kv_heads, length_i, head_dim]: length T for layers < K, T - N + R for layers >= K.
    `position_ids` are the host's (`mrope_position_ids`); `image_start` is the position of the
    first of the N image tokens; `kept` holds positions inside the image block, ascending. Each
    remaining token keeps its original 3-row position ids. `grid` is the merged token grid
    (H, W), the geometry of the selection (spec section 6).

    With keep == N no selection runs: the module is then exactly the unpruned model.
    """

    def __init__(
        self,
        model: Qwen2VLForConditionalGeneration,
        *,
        grid: tuple[int, int],
        keep: int,
        prune_layer: int,
        pruner_config: VLMPrunerConfig = VLMPrunerConfig(),
    ):
        _check_full_attention(model)
        super().__init__(model, grid=grid, keep=keep, prune_layer=prune_layer, pruner_config=pruner_config)

    def forward(
        self, inputs_embeds: Tensor, position_ids: Tensor, image_start: Tensor
    ) -> tuple[Tensor, Tensor, KVCache]:
        _check_batch_of_one("inputs_embeds", inputs_embeds)
        cos, sin = self.rotary_emb(inputs_embeds, position_ids)  # [1, T, head_dim] each, sections interleaved
        return self.run_layers(inputs_embeds, cos, sin, image_start)


class Qwen2VLDecodeStep(DecodeStep):
    """One generated token through every layer, attending to the whole cache.

    forward(inputs_embeds [1, 1, d], position_ids int64 [3, 1, 1], cache) -> (logits [1, vocab],
    cache with one more entry per layer). For the s-th generated token (s = 0 right after the
    prompt) all three rows are T + s + rope_delta, T the full prompt length, whatever was pruned.
    `cache[i]` = (key, value), each [1, n_kv_heads, length_i, head_dim].
    """

    def __init__(self, model: Qwen2VLForConditionalGeneration):
        _check_full_attention(model)
        super().__init__(model)

    def forward(self, inputs_embeds: Tensor, position_ids: Tensor, cache: KVCache) -> tuple[Tensor, KVCache]:
        _check_batch_of_one("inputs_embeds", inputs_embeds)
        cos, sin = self.rotary_emb(inputs_embeds, position_ids)  # [1, 1, head_dim] each
        return self.run_layers(inputs_embeds, cos, sin, cache)


def mrope_position_ids(seq_len: int, image_start: int, grid: tuple[int, int]) -> tuple[np.ndarray, int]:
    """M-RoPE position ids of a prompt with one image, as transformers' `get_rope_index` makes them.

    Host code, numpy only. Text before the image counts 0, 1, ...; image token (r, c) of the
    merged H x W grid gets (s, s + r, s + c), s = image_start; the text after it continues from
    s + max(H, W).

    Args:
        seq_len: T, the prompt length. image_start: position of the first of the H * W image tokens.
        grid: (H, W), the merged token grid.
    Returns:
        position_ids: int64 [3, 1, T] (temporal, height, width rows).
        rope_delta: the generated token s (s = 0, 1, ...) is at T + s + rope_delta on all rows.
    """
    height, width = grid
    n = height * width
    if not 0 <= image_start <= seq_len - n:
        raise ValueError(f"an image block of {n} tokens at {image_start} does not fit a prompt of {seq_len} tokens")
    rows, cols = np.divmod(np.arange(n), width)
    image = image_start + np.stack([np.zeros(n, dtype=np.int64), rows, cols])  # [3, N]
    suffix = image_start + max(height, width) + np.arange(seq_len - image_start - n)
    position_ids = np.concatenate(
        [np.broadcast_to(np.arange(image_start), (3, image_start)), image, np.broadcast_to(suffix, (3, suffix.size))],
        axis=1,
    ).astype(np.int64)
    return position_ids[:, None], int(position_ids.max()) + 1 - seq_len


def conv3d_as_linear(conv: nn.Conv3d) -> nn.Linear:
    """A patchifying Conv3d (stride = kernel, no padding) as the equivalent Linear on flattened patches.

    The Linear's weight is a view of the Conv3d's, [out, C * kt * kh * kw]: input features in
    (channel, time, row, column) order, the order of Qwen2-VL's flattened patches.
    """
    if (
        tuple(conv.stride) != tuple(conv.kernel_size)
        or any(conv.padding)
        or any(d != 1 for d in conv.dilation)
        or conv.groups != 1
    ):
        raise ValueError(f"only a patchifying Conv3d (stride = kernel, no padding) maps to a Linear, got {conv}")
    weight = conv.weight.detach().flatten(1)  # [out, C * kt * kh * kw]
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=conv.bias is not None, device="meta", dtype=weight.dtype)
    linear.weight = nn.Parameter(weight)
    if conv.bias is not None:
        linear.bias = nn.Parameter(conv.bias.detach())
    return linear


def _vision_block(block: Qwen2VLVisionBlock, hidden: Tensor, cos: Tensor, sin: Tensor, frames: int) -> Tensor:
    """One vision transformer block; each of the t frames attends to itself, as in Qwen2-VL.

    Args:
        hidden: [P, d_vision], P = t * h * w patches, frame-major. cos, sin: [P, head_dim], the
            2-D rotary tables of the patches.
    Returns:
        [P, d_vision].
    """
    attn = block.attn
    length = hidden.shape[0]
    qkv = attn.qkv(block.norm1(hidden)).reshape(length, 3, attn.num_heads, attn.head_dim)
    query, key, value = qkv.permute(1, 0, 2, 3).unbind(0)  # [P, heads, head_dim] each
    query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
    # The frames as a batch, static boundaries: [t, heads, h * w, head_dim].
    per_frame = (frames, length // frames, attn.num_heads, attn.head_dim)
    query, key, value = (x.reshape(per_frame).transpose(1, 2) for x in (query, key, value))
    out = F.scaled_dot_product_attention(query, key, value, scale=attn.scaling)
    hidden = hidden + attn.proj(out.transpose(1, 2).reshape(length, attn.dim))
    return hidden + block.mlp(block.norm2(hidden))


def _check_full_attention(model: Qwen2VLForConditionalGeneration) -> None:
    """The modules attend to the whole sequence: sliding-window layers are not supported."""
    layer_types = model.model.language_model.config.layer_types
    if any(kind != "full_attention" for kind in layer_types):
        raise ValueError(f"only full-attention decoder layers are supported, got {sorted(set(layer_types))}")
