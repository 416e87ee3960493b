"""ONNX translations of the models' own torch ops (`torch.onnx.export(custom_translation_table=)`).

    vlm_pruner::buffer_attention  ->  com.microsoft GroupQueryAttention (ONNX Runtime's contrib op)

GroupQueryAttention takes the KV cache as fixed-capacity buffers and the number of entries they
hold; when the runtime binds each present output to the buffer of its past input (IO binding), it
writes the new entry in place instead of returning a new cache (`runtime.backends.onnx`). The
rotary embedding stays outside (`do_rotary` 0): the decode step applies it, M-RoPE included.
"""

from __future__ import annotations

from typing import Any

import onnxscript
import torch
from onnx import TensorProto
from onnx.defs import OpSchema
from onnxscript import opset18 as op

import models.decoder  # noqa: F401  (registers torch.ops.vlm_pruner.buffer_attention)

CONTRIB = onnxscript.values.Opset("com.microsoft", 1)

# onnx ships no schemas of ONNX Runtime's contrib ops; onnxscript needs one to emit a node. The
# inputs and attributes used here, as ONNX Runtime documents them (docs/ContribOperators.md).
_parameter = OpSchema.FormalParameter
_GQA_SCHEMA = OpSchema(
    "GroupQueryAttention",
    CONTRIB.domain,
    CONTRIB.version,
    inputs=[
        _parameter(name, kind)
        for name, kind in (
            ("query", "T"), ("key", "T"), ("value", "T"), ("past_key", "T"), ("past_value", "T"),
            ("seqlens_k", "M"), ("total_sequence_length", "M"),
        )
    ],
    outputs=[_parameter(name, "T") for name in ("output", "present_key", "present_value")],
    type_constraints=[("T", ["tensor(float)"], ""), ("M", ["tensor(int32)"], "")],
    attributes=[
        OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, ""),
        OpSchema.Attribute("kv_num_heads", OpSchema.AttrType.INT, ""),
        OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, ""),
    ],
)
_GQA = onnxscript.values.Op(CONTRIB, "GroupQueryAttention", _GQA_SCHEMA)


def _buffer_attention(query: Any, key: Any, value: Any, key_buffer: Any, value_buffer: Any, length: Any, scale: float):
    """`models.decoder.buffer_attention` as GroupQueryAttention: query [1, 1, H, hd] and key/value
    [1, 1, KV, hd] flattened to [1, 1, heads x hd]; seqlens_k is the past length (int32 [1]), the
    total length one more."""
    heads, kv_heads, width = query.shape[2], key.shape[2], query.shape[3]
    flat = op.Constant(value_ints=[1, 1, -1])
    past = op.Cast(length, to=TensorProto.INT32)
    total = op.Squeeze(op.Add(past, op.Constant(value=onnxscript.ir.tensor([1], dtype=onnxscript.ir.DataType.INT32))))
    out, present_key, present_value = _GQA(
        op.Reshape(query, flat), op.Reshape(key, flat), op.Reshape(value, flat), key_buffer, value_buffer, past, total,
        num_heads=heads, kv_num_heads=kv_heads, scale=scale, _outputs=3,
    )
    return op.Reshape(out, op.Constant(value_ints=[1, 1, heads, width])), present_key, present_value


TRANSLATIONS = {torch.ops.vlm_pruner.buffer_attention.default: _buffer_attention}
