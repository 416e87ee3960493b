"""The prefill FLOP count, the KV cache size and the weight bytes a decode step reads."""

from __future__ import annotations

from runtime.flops import ModelDims, decoder_layer_flops, kv_cache_bytes, lm_prefill_flops, lm_weight_bytes

DIMS = ModelDims(
    hidden_size=64,
    num_layers=4,
    num_attention_heads=4,
    num_kv_heads=2,
    head_dim=16,
    intermediate_size=128,
    vocab_size=320,
    prune_layer=2,
    num_image_tokens=576,
    vision_flops=10**9,
)


def test_decoder_layer_by_hand():
    n = 10
    q, o, k, v = 2 * n * 64 * 64, 2 * n * 64 * 64, 2 * n * 64 * 32, 2 * n * 64 * 32
    scores, weighted = 2 * n * n * 64, 2 * n * n * 64
    mlp = 3 * 2 * n * 64 * 128
    assert decoder_layer_flops(DIMS, n) == q + o + k + v + scores + weighted + mlp


def test_prefill_splits_at_the_pruning_layer():
    t = 600
    full = lm_prefill_flops(DIMS, prompt_tokens=t, keep=576)
    assert full == 4 * decoder_layer_flops(DIMS, t) + 2 * 64 * 320
    pruned = lm_prefill_flops(DIMS, prompt_tokens=t, keep=64)
    assert pruned == 2 * decoder_layer_flops(DIMS, t) + 2 * decoder_layer_flops(DIMS, t - 512) + 2 * 64 * 320
    assert pruned < lm_prefill_flops(DIMS, prompt_tokens=t, keep=192) < full


def test_kv_cache_by_hand():
    # One entry: a key and a value of 2 KV heads x 16 dims, float32: 256 bytes.
    # Layers 0, 1 (before K = 2): T + new = 610 entries; layers 2, 3: T - N + R + new = 600 - 576 + 64 + 10 = 98.
    assert kv_cache_bytes(DIMS, prompt_tokens=600, keep=64, new_tokens=10) == (2 * 610 + 2 * 98) * 256
    assert kv_cache_bytes(DIMS, prompt_tokens=600, keep=576, new_tokens=10) == 4 * 610 * 256
    assert kv_cache_bytes(DIMS, prompt_tokens=600, keep=64, new_tokens=10, dtype_bytes=2) == (2 * 610 + 2 * 98) * 128


def test_a_selection_in_the_vision_graph_counts_from_layer_0():
    """DivPrune's dropped tokens never reach the language model: every layer runs on T - N + R."""
    manifest = {
        "text": {
            "hidden_size": 64,
            "num_layers": 4,
            "num_attention_heads": 4,
            "num_kv_heads": 2,
            "head_dim": 16,
            "intermediate_size": 128,
            "vocab_size": 320,
        },
        "vision": {"flops": 10**9},
        "geometry": {"num_image_tokens": 576},
        "pruning": {"graph": "vision_encoder", "prune_layer": 2},
    }
    dims = ModelDims.from_manifest(manifest)
    assert dims.prune_layer == 0
    assert lm_prefill_flops(dims, prompt_tokens=600, keep=64) == 4 * decoder_layer_flops(DIMS, 88) + 2 * 64 * 320
    assert kv_cache_bytes(dims, prompt_tokens=600, keep=64, new_tokens=10) == 4 * 98 * 256
    in_prefill = ModelDims.from_manifest(manifest | {"pruning": {"graph": "prefill", "prune_layer": 2}})
    assert in_prefill == DIMS


def test_weight_bytes_by_hand():
    # Per layer q, o 64 x 64, k, v 64 x 32, MLP 3 x 64 x 128; 4 layers and the 320 x 64 LM head.
    weights = 4 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 320 * 64
    assert lm_weight_bytes(DIMS, quantization="none", backend="onnx") == 4 * weights
    # int4: half a byte per weight and a scale per 32 (float32 in MatMulNBits, bfloat16 in XNNPACK).
    assert lm_weight_bytes(DIMS, quantization="int4", backend="onnx") == weights // 2 + weights // 32 * 4
    assert lm_weight_bytes(DIMS, quantization="int4", backend="executorch") == weights // 2 + weights // 32 * 2
    assert lm_weight_bytes(DIMS, quantization="int8", backend="executorch") == weights + weights // 32 * 2
