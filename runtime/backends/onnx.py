"""The artifact's four ONNX graphs on ONNX Runtime (CPU). Imports numpy and onnxruntime only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.artifact import Artifact, ArtifactError
from runtime.backends.base import KVCache, Selection
from runtime.backends.onnx_prepacked import open_session, prepacked_graphs
from runtime.contract import GRAPH_NAMES, MAX_SEQ_LEN_KEY, SELECTION_OUTPUTS, cache_names, graph_io, onnx_file

try:
    import onnxruntime as ort
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("the onnx backend needs onnxruntime: `pip install onnxruntime==1.31.1`") from error


# The graphs that `low_memory` opens one at a time: the vision tower and the two language-model graphs.
ONE_AT_A_TIME = ("vision_encoder", "prefill", "decode")
# Entries a decode cache buffer is given beyond what it holds, whenever it is (re)allocated: one
# copy of the cache per CACHE_GROWTH generated tokens instead of one per token.
CACHE_GROWTH = 256


@dataclass(frozen=True)
class BufferCache:
    """The decode graph's KV cache (the `KVCache` decode hands back and takes): a key and a value
    buffer per layer (key 0, value 0, key 1, ...; float32 [1, n_kv_heads, capacity_i, head_dim]),
    each holding `lengths[i]` entries. ONNX Runtime writes each step's entry into them in place."""

    buffers: tuple[np.ndarray, ...]
    lengths: np.ndarray  # int64 [L]


class OnnxSession:
    """One InferenceSession per graph; inputs and outputs by the names of the artifact contract.

    Prefill and decode are opened from their prepacked copies for this machine (`onnx_prepacked`:
    made on first use, weights mapped from one file, so that they share one copy of the language
    model), or, with that cache off, from the artifact, each session then prepacking its own copy.
    With `low_memory`, at most one of the vision encoder, prefill and decode sessions is open at a
    time: each opens when first run and closes the one open before it.
    """

    backend = "onnx"

    def __init__(
        self,
        artifact: Artifact,
        *,
        num_threads: int | None = None,
        low_memory: bool = False,
        profile_dir: Path | None = None,
    ):
        layers = artifact.text.num_layers
        self._max_seq_len = artifact.text.max_seq_len
        self._present = list(cache_names("present", layers))
        self._past = list(cache_names("past", layers))
        self._prepacked = prepacked_graphs(artifact)
        self._paths = {graph: artifact.path(onnx_file(graph)) for graph in GRAPH_NAMES} | self._prepacked
        # Options by whether the graph is a prepacked one: saved optimized, it is opened without
        # ONNX Runtime's optimizers, which would find nothing left to do.
        self._options = {saved: session_options(num_threads, optimize=not saved) for saved in (False, True)}
        if profile_dir is not None:  # ONNX Runtime's profiler: a JSON trace per session (`end_profiling`)
            for options in self._options.values():
                options.enable_profiling = True
                options.profile_file_prefix = str(profile_dir / "onnxruntime")
        self._one_at_a_time = ONE_AT_A_TIME if low_memory else ()
        # Sessions of the graphs opened one at a time are only looked at here: no prepacked weights.
        looks = {saved: session_options(optimize=not saved) for saved in (False, True)}
        for options in looks.values():
            options.add_session_config_entry("session.disable_prepacking", "1")
        self._sessions = {}
        for graph in GRAPH_NAMES:
            session = self._open(graph, looks if graph in self._one_at_a_time else self._options)
            inputs, outputs = graph_io(graph, layers, selection_graph=artifact.selection_graph)
            _check_names(self._paths[graph], "inputs", [i.name for i in session.get_inputs()], list(inputs))
            _check_names(self._paths[graph], "outputs", [o.name for o in session.get_outputs()], list(outputs))
            self._sessions[graph] = session
        artifact.check_graph_facts(self._graph_facts(), "ONNX")
        for graph in self._one_at_a_time:
            del self._sessions[graph]

    def _open(self, graph: str, options: dict[bool, ort.SessionOptions]) -> ort.InferenceSession:
        """A session of `graph` with `options[whether it is a prepacked graph]`."""
        return open_session(self._paths[graph], options[graph in self._prepacked])

    def _session(self, graph: str) -> ort.InferenceSession:
        """The graph's session; with `low_memory`, opened now and the other one-at-a-time session closed."""
        if graph not in self._sessions:
            for other in self._one_at_a_time:
                self._sessions.pop(other, None)
            self._sessions[graph] = self._open(graph, self._options)
        return self._sessions[graph]

    def _graph_facts(self) -> dict[str, int | None]:
        """What the graphs' own shapes and metadata say of the model (`Artifact.check_graph_facts`)."""
        shape = {
            (graph, value.name): value.shape
            for graph, session in self._sessions.items()
            for value in (*session.get_inputs(), *session.get_outputs())
        }
        image_embeds = shape["vision_encoder", "image_embeds"]
        key = shape["decode", "past.0.key"]
        # The first layer whose prefill cache is shorter than the prompt: the pruning layer.
        lengths = [shape["prefill", name][2] for name in self._present[::2]]
        pruned = [i for i, length in enumerate(lengths) if length != lengths[0]]
        bound = self._sessions["prefill"].get_modelmeta().custom_metadata_map.get(MAX_SEQ_LEN_KEY, "")
        if not bound.isdigit():
            raise ArtifactError(f"the prefill graph carries no valid {MAX_SEQ_LEN_KEY} metadata ({bound!r})")
        return {
            "keep": shape["prefill", "kept_indices"][0],
            "prompt_image_tokens": image_embeds[0],
            "pixel_values_shape": list(shape["vision_encoder", "pixel_values"]),
            "position_rows": shape["prefill", "position_ids"][0],
            "hidden_size": shape["embed_tokens", "inputs_embeds"][2],
            "vocab_size": shape["prefill", "logits"][1],
            "num_kv_heads": key[1],
            "head_dim": key[3],
            "prune_layer": pruned[0] if pruned else None,
            "max_seq_len": int(bound),
        }

    def end_profiling(self) -> dict[str, Path]:
        """The trace file of each open session's profile (with `profile_dir`), by graph."""
        return {graph: Path(session.end_profiling()) for graph, session in self._sessions.items()}

    def vision_encoder(self, pixel_values: np.ndarray) -> tuple[np.ndarray, Selection | None]:
        image_embeds, *selection = self._session("vision_encoder").run(None, {"pixel_values": pixel_values})
        return image_embeds, tuple(selection) or None

    def embed_tokens(self, input_ids: np.ndarray) -> np.ndarray:
        return self._session("embed_tokens").run(["inputs_embeds"], {"input_ids": input_ids})[0]

    def prefill(
        self, inputs_embeds: np.ndarray, position_ids: np.ndarray, image_positions: np.ndarray
    ) -> tuple[np.ndarray, Selection, KVCache]:
        feeds = {"inputs_embeds": inputs_embeds, "position_ids": position_ids, "image_positions": image_positions}
        outputs = ["logits", *SELECTION_OUTPUTS, *self._present]
        logits, kept, order, *cache = self._session("prefill").run(outputs, feeds)
        return logits, (kept, order), tuple(cache)

    def decode(
        self, inputs_embeds: np.ndarray, position_ids: np.ndarray, cache: KVCache | BufferCache
    ) -> tuple[np.ndarray, BufferCache]:
        """One token; `cache` is the prefill's tensors or the `BufferCache` of the previous step.

        The present outputs are bound to the past inputs' buffers (IO binding): the graph's
        GroupQueryAttention writes the new entries in place, and nothing else is copied.
        """
        cache = self._with_room(cache if isinstance(cache, BufferCache) else _as_buffers(cache))
        session = self._session("decode")
        binding = session.io_binding()
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(inputs_embeds))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids))
        binding.bind_cpu_input("cache_lengths", cache.lengths)
        binding.bind_output("logits")  # the first output: `get_outputs` lists them in binding order
        for past, present, buffer in zip(self._past, self._present, cache.buffers, strict=True):
            value = ort.OrtValue.ortvalue_from_numpy(buffer)  # a view of the buffer, not a copy
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()
        return logits, BufferCache(cache.buffers, cache.lengths + 1)

    def _with_room(self, cache: BufferCache) -> BufferCache:
        """`cache`, each full layer's buffers copied into ones `CACHE_GROWTH` entries larger (at most
        the graphs' bound: M entries, less the image tokens dropped before the layer)."""
        buffers = list(cache.buffers)
        for layer, length in enumerate(cache.lengths.tolist()):
            key, value = buffers[2 * layer : 2 * layer + 2]
            if key.shape[2] > length:
                continue
            bound = self._max_seq_len - (int(cache.lengths[0]) - length)  # layer 0 precedes the pruning layer
            if length >= bound:
                raise ValueError(
                    f"the KV cache of layer {layer} holds {length} entries: the graphs take at most {bound} "
                    f"(export with a larger --max-seq-len)"
                )
            capacity = min(length + CACHE_GROWTH, bound)
            buffers[2 * layer : 2 * layer + 2] = _grown(key, length, capacity), _grown(value, length, capacity)
        return BufferCache(tuple(buffers), cache.lengths)


def session_options(num_threads: int | None = None, *, optimize: bool = True) -> ort.SessionOptions:
    """How the runtime opens a graph: errors only in the log (constant-folding notes are not the
    user's concern), and no CPU memory arena: it keeps every block it grew (the prefill's
    activations among them) for the session's life; without it the peak is lower at the same
    speed (README). `optimize=False`: a graph ONNX Runtime saved optimized, opened as it is."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    return options


def _as_buffers(cache: KVCache) -> BufferCache:
    """The prefill's cache tensors as decode buffers holding them (no room yet: `_with_room`)."""
    return BufferCache(tuple(cache), np.array([key.shape[2] for key in cache[::2]], dtype=np.int64))


def _grown(buffer: np.ndarray, length: int, capacity: int) -> np.ndarray:
    """A zeroed [1, h, capacity, hd] buffer holding `buffer`'s first `length` entries."""
    grown = np.zeros((*buffer.shape[:2], capacity, buffer.shape[3]), dtype=np.float32)
    grown[:, :, :length] = buffer[:, :, :length]
    return grown


def _check_names(path: Path, kind: str, found: list[str], expected: list[str]) -> None:
    if sorted(found) != sorted(expected):
        raise ArtifactError(
            f"{path} does not follow the artifact contract: {kind} {found}, expected {expected} (export/ARTIFACTS.md)"
        )
