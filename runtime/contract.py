"""The artifact contract's names (export/ARTIFACTS.md): graphs, their inputs and outputs, files.

The one place both sides read: the exporter names what it writes from here, the runtime looks it
up from here. Plain Python, no torch, no onnx.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

FORMAT_VERSION = 11
MANIFEST = "manifest.json"

GRAPH_NAMES = ("vision_encoder", "embed_tokens", "prefill", "decode")
# The graphs a token selection can run in (the manifest's `pruning.graph`): the prefill, at the
# input of the pruning layer, or the vision encoder, on its output (then its graph also returns
# `kept_indices` and `selection_order`, and the prompt holds only the kept image tokens).
SELECTION_GRAPHS = ("prefill", "vision_encoder")

# The outputs of the graph that selects: the kept image tokens, ascending, and in selection order.
SELECTION_OUTPUTS = ("kept_indices", "selection_order")

# The .pte's methods. Its language model keeps the KV cache as in-place state, and each weight
# lives in one method: unpruned (keep = N, or the selection in the vision graph), one text decoder
# for prompt segments and decode steps, under the names ExecuTorch's LLM runners call; pruned in the
# prefill, the layers before and from the pruning layer K, the selection between them. A language
# model too large to lower in one piece (export.executorch) is chained the same way when unpruned,
# and its layers from K on come in groups: `text_decoder_layers_<i>` methods before the tail.
PTE_METHODS = ("vision_encoder", "token_embedding", "text_decoder")
PTE_CHAIN_HEAD = ("vision_encoder", "token_embedding", "text_decoder_head")
PTE_LAYER_GROUP = "text_decoder_layers_{}"
PTE_TAIL = "text_decoder_tail"
# The .pte method that runs the selection of each `SELECTION_GRAPHS` entry.
PTE_SELECTION_METHODS = {"prefill": "select_tokens", "vision_encoder": "vision_encoder"}
# Methods without inputs returning constants: those ExecuTorch's LLM runners read (`get_max_seq_len`
# required, `get_eos_ids` replaces the tokenizer's end-of-sequence ids), then the cache's geometry
# and the pruning layer K, which no method's inputs or outputs show.
PTE_METADATA = (
    "get_max_seq_len", "get_max_context_len", "get_bos_id", "get_eos_ids", "get_vocab_size", "use_kv_cache",
    "enable_dynamic_shape", "get_n_layers", "get_n_kv_heads", "get_head_dim", "get_prune_layer",
)

# How ONNX Runtime computes the quantized linears (MatMulNBits `accuracy_level`, the manifest's
# `model.onnx_profile`): "exact" in float32 on the dequantized weights (parity exact against the
# weight-only eager model), "fast" with int8 activations quantized on the fly (statistical parity).
ONNX_PROFILES = ("exact", "fast")
# The vision tower's weights (the manifest's `model.vision_quantization`): "none" (float32) or
# "int8" (8da8w per output channel, ExecuTorch-only artifacts, statistical parity).
VISION_QUANTIZATIONS = ("none", "int8")

# Files of an artifact, relative to its folder.
ONNX_DIR = "onnx"
ONNX_WEIGHTS_FILE = "weights.data"  # inside ONNX_DIR
PTE_PATH = "executorch/model.pte"
PROCESSOR_DIR = "processor"
TOKENIZER_FILE = f"{PROCESSOR_DIR}/tokenizer.json"

# The ONNX metadata key of the graphs' upper bound M of the sequence length (ExecuTorch keeps the
# bounds of dynamic dimensions in its method metadata).
MAX_SEQ_LEN_KEY = "max_seq_len"

# Names of the dynamic dimensions, as they appear in the ONNX graphs' input and output shapes.
SEQUENCE_DIM = "sequence_length"
CACHE_DIM = "cache_capacity"  # decode's KV cache buffers, layers before the pruning layer
PRUNED_CACHE_DIM = "pruned_cache_capacity"  # and from it on
PRUNED_SEQUENCE_DIM = "pruned_sequence_length"  # the .pte's text_decoder_tail


def onnx_file(graph: str) -> str:
    """The artifact-relative path of `graph`'s ONNX file."""
    return f"{ONNX_DIR}/{graph}.onnx"


# The file(s) each backend loads, relative to the artifact folder.
BACKEND_FILES = {
    "onnx": (*(onnx_file(graph) for graph in GRAPH_NAMES), f"{ONNX_DIR}/{ONNX_WEIGHTS_FILE}"),
    "executorch": (PTE_PATH,),
}


def cache_names(prefix: str, num_layers: int) -> tuple[str, ...]:
    """`prefix.0.key`, `prefix.0.value`, `prefix.1.key`, ...: the flattened cache of the contract."""
    return tuple(f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value"))


def graph_io(
    graph: str, num_layers: int, *, selection_graph: str = "prefill"
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of `graph` for a language model of `num_layers` layers whose
    token selection runs in `selection_graph` (one of `SELECTION_GRAPHS`).

    ExecuTorch methods take and return the same tensors positionally, in this order.
    `kept_indices` [R] are the kept image tokens, ascending; `selection_order` [R] the same tokens
    in the order the method chose them.
    """
    if selection_graph not in SELECTION_GRAPHS:
        raise ValueError(f"a selection runs in one of {', '.join(SELECTION_GRAPHS)}, not {selection_graph!r}")
    selects_in_vision = selection_graph == "vision_encoder"
    io = {
        "vision_encoder": (("pixel_values",), ("image_embeds", *SELECTION_OUTPUTS) if selects_in_vision else ("image_embeds",)),
        "embed_tokens": (("input_ids",), ("inputs_embeds",)),
        "prefill": (
            ("inputs_embeds", "position_ids", "image_positions"),
            ("logits", *SELECTION_OUTPUTS, *cache_names("present", num_layers)),
        ),
        "decode": (
            ("inputs_embeds", "position_ids", *cache_names("past", num_layers), "cache_lengths"),
            ("logits", *cache_names("present", num_layers)),
        ),
    }
    if graph not in io:
        raise KeyError(f"no graph {graph!r} in the contract; graphs: {', '.join(GRAPH_NAMES)}")
    return io[graph]


def pte_methods(*, pruned: bool, layer_groups: int | None) -> tuple[str, ...]:
    """The .pte's graph methods, in the order a prefill calls them: `PTE_METHODS` when
    `layer_groups` is None (one text decoder, unpruned only), else the chain with that many
    `PTE_LAYER_GROUP` methods between the head (and the selection, when `pruned`) and the tail."""
    if layer_groups is None:
        if pruned:
            raise ValueError("a .pte pruned in the prefill chains its text methods: give layer_groups")
        return PTE_METHODS
    groups = tuple(PTE_LAYER_GROUP.format(i) for i in range(layer_groups))
    return (*PTE_CHAIN_HEAD, *(("select_tokens",) if pruned else ()), *groups, PTE_TAIL)


def pte_layer_groups(method_names: Iterable[str]) -> int | None:
    """How many `PTE_LAYER_GROUP` methods a program with `method_names` chains (None: no chain,
    one `text_decoder`); the groups are numbered from 0 without a gap, or ValueError."""
    names = set(method_names)
    if "text_decoder_head" not in names:
        return None
    count = sum(1 for name in names if re.fullmatch(PTE_LAYER_GROUP.format(r"\d+"), name))
    missing = [PTE_LAYER_GROUP.format(i) for i in range(count) if PTE_LAYER_GROUP.format(i) not in names]
    if missing:
        raise ValueError(f"the text decoder's layer groups are not numbered 0..{count - 1}: {missing} missing")
    return count


def pte_io(method: str, *, position_rows: int, selection_graph: str = "prefill") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of the .pte's `method`, positional in this order.

    `cache_position` int64 [1] is the cache slot of the method's first token; `position_ids`
    [P, 1, T] the rotary positions (the unpruned `text_decoder` derives one row from the cache
    position, so it takes them only with M-RoPE, P = 3).
    """
    positions = ("position_ids",)
    io = {
        "vision_encoder": graph_io("vision_encoder", 0, selection_graph=selection_graph),
        "token_embedding": graph_io("embed_tokens", 0),
        "text_decoder": (("inputs_embeds", "cache_position", *(positions if position_rows > 1 else ())), ("logits",)),
        "text_decoder_head": (("inputs_embeds", "position_ids", "cache_position"), ("hidden", "keys", "last_query")),
        "select_tokens": (
            ("hidden", "keys", "last_query", "position_ids", "image_positions"),
            ("hidden", "position_ids", *SELECTION_OUTPUTS),
        ),
        PTE_TAIL: (("hidden", "position_ids", "cache_position"), ("logits",)),
    }
    if re.fullmatch(PTE_LAYER_GROUP.format(r"\d+"), method):
        return ("hidden", "position_ids", "cache_position"), ("hidden",)
    if method not in io:
        raise KeyError(f"no method {method!r} in the .pte contract; methods: {', '.join(io)}")
    return io[method]
