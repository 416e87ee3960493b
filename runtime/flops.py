"""Matmul FLOP counts of the prefill, to set a measured speed-up beside the one pruning allows; KV cache size.

One multiply-add is 2 FLOPs. Counted: every linear layer and the two attention matmuls
(Q K^T and A V, the full n x n product, as dense attention kernels compute it). Not counted:
norms, activations, softmax, RoPE, embedding lookups and the pruner's own selection, all small
next to the matmuls.

Language model prefill, T prompt tokens, N image tokens, R kept, pruning layer K of L:
    layers < K run on T tokens, layers >= K on T - N + R tokens, then lm_head on the last token
    (Llama and Qwen2 decoder layers alike; Qwen2's q, k, v biases are not counted). A selection in
    the vision graph (DivPrune) counts as K = 0: every layer runs on the T - N + R tokens. T is the
    prompt with all N image tokens, whichever graph prunes them.
Vision encoder: its count is the family's (`models.families.ModelFamily.vision_manifest`), stored
in the manifest's `vision.flops` at export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelDims:
    """The sizes the FLOP count needs, from the manifest's `text`, `vision`, `geometry`, `pruning`."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    prune_layer: int
    num_image_tokens: int
    vision_flops: int

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ModelDims:
        text, vision, pruning = manifest["text"], manifest["vision"], manifest["pruning"]
        return cls(
            hidden_size=text["hidden_size"],
            num_layers=text["num_layers"],
            num_attention_heads=text["num_attention_heads"],
            num_kv_heads=text["num_kv_heads"],
            head_dim=text["head_dim"],
            intermediate_size=text["intermediate_size"],
            vocab_size=text["vocab_size"],
            # No layer sees the dropped tokens when the vision graph drops them.
            prune_layer=0 if pruning["graph"] == "vision_encoder" else pruning["prune_layer"],
            num_image_tokens=manifest["geometry"]["num_image_tokens"],
            vision_flops=vision["flops"],
        )


def decoder_layer_flops(dims: ModelDims, tokens: int) -> int:
    """One decoder layer on `tokens` tokens, causal attention over themselves."""
    d, q_width, kv_width = dims.hidden_size, dims.num_attention_heads * dims.head_dim, dims.num_kv_heads * dims.head_dim
    projections = 2 * tokens * d * (2 * q_width + 2 * kv_width)  # q, o; k, v
    attention = 2 * 2 * tokens * tokens * q_width  # Q K^T and A V over every head
    mlp = 3 * 2 * tokens * d * dims.intermediate_size  # gate, up, down
    return projections + attention + mlp


def lm_prefill_flops(dims: ModelDims, *, prompt_tokens: int, keep: int) -> int:
    """The language model prefill of a T-token prompt, keeping R of the N image tokens at layer K."""
    short = prompt_tokens - dims.num_image_tokens + keep
    before = dims.prune_layer * decoder_layer_flops(dims, prompt_tokens)
    after = (dims.num_layers - dims.prune_layer) * decoder_layer_flops(dims, short)
    return before + after + 2 * dims.hidden_size * dims.vocab_size


def kv_cache_bytes(dims: ModelDims, *, prompt_tokens: int, keep: int, new_tokens: int, dtype_bytes: int = 4) -> int:
    """The KV cache after prefill and `new_tokens` decode steps: layers < K hold T + new entries,
    layers >= K hold T - N + R + new."""
    entry = 2 * dims.num_kv_heads * dims.head_dim * dtype_bytes  # one key and one value
    short = prompt_tokens - dims.num_image_tokens + keep
    entries = dims.prune_layer * (prompt_tokens + new_tokens) + (dims.num_layers - dims.prune_layer) * (
        short + new_tokens
    )
    return entries * entry


# Bytes a decode step reads per language-model linear weight: float32; or 4- / 8-bit codes and one
# scale per 32 input channels (float32 in ONNX Runtime's MatMulNBits, bfloat16 in XNNPACK).
_SCALE_BYTES = {"onnx": 4, "executorch": 2}


def linear_weight_bytes(weights: int, *, quantization: str, backend: str) -> int:
    """`weights` linear weights as `backend` stores them in `quantization` ("none", "int4", "int8")."""
    if quantization == "none":
        return 4 * weights
    bits = {"int4": 4, "int8": 8}[quantization]
    return int(weights * (bits / 8 + _SCALE_BYTES[backend] / 32))


def lm_weight_bytes(dims: ModelDims, *, quantization: str, backend: str) -> int:
    """The language model's linear weights (decoder layers and LM head) as `backend` stores them:
    what one decode step reads."""
    d, q_width, kv_width = dims.hidden_size, dims.num_attention_heads * dims.head_dim, dims.num_kv_heads * dims.head_dim
    per_layer = d * (2 * q_width + 2 * kv_width) + 3 * d * dims.intermediate_size
    weights = dims.num_layers * per_layer + dims.vocab_size * d
    return linear_weight_bytes(weights, quantization=quantization, backend=backend)
