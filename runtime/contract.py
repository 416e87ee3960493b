"""The artifact contract's names (export/ARTIFACTS.md): graphs, their inputs and outputs, files.

The one place both sides read: the exporter names what it writes from here, the runtime looks it
up from here. Plain Python, no torch, no onnx.
"""

from __future__ import annotations

FORMAT_VERSION = 7
MANIFEST = "manifest.json"

GRAPH_NAMES = ("vision_encoder", "embed_tokens", "prefill", "decode")
# The graphs a token selection can run in (the manifest's `pruning.graph`): the prefill, at the
# input of the pruning layer, or the vision encoder, on its output (then its graph also returns
# `kept_indices` and `selection_order`, and the prompt holds only the kept image tokens).
SELECTION_GRAPHS = ("prefill", "vision_encoder")

# The outputs of the graph that selects: the kept image tokens, ascending, and in selection order.
SELECTION_OUTPUTS = ("kept_indices", "selection_order")

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
PAST_DIM = "past_length"
PRUNED_PAST_DIM = "pruned_past_length"


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
            ("inputs_embeds", "position_ids", *cache_names("past", num_layers)),
            ("logits", *cache_names("present", num_layers)),
        ),
    }
    if graph not in io:
        raise KeyError(f"no graph {graph!r} in the contract; graphs: {', '.join(GRAPH_NAMES)}")
    return io[graph]
