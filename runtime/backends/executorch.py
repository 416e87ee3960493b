"""The artifact's .pte on the ExecuTorch runtime: the `Session` graphs from its methods, the KV
cache in place inside the program (`runtime.contract.pte_methods`, export/ARTIFACTS.md).

Imports torch and executorch, so it is loaded only when the executorch backend is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.artifact import Artifact, ArtifactError
from runtime.backends.base import Selection
from runtime.cli import native_output_hidden
from runtime.contract import PTE_LAYER_GROUP, PTE_METADATA, PTE_PATH, PTE_TAIL, pte_io, pte_layer_groups, pte_methods
from runtime.measure import release_freed_memory

try:
    import torch
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401 - the KV cache's kernels (llama::)
    from executorch.runtime import Method, Program, Runtime
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("the executorch backend needs torch and executorch: run `make setup`") from error


@dataclass(frozen=True)
class CachePosition:
    """Where the .pte's in-place KV cache stands (the `KVCache` this session hands back and takes):
    the entries written in the layers before the pruning layer (`full`) and from it on (`pruned`)."""

    full: int
    pruned: int


# Loaded without a language model's method beside it under `low_memory`.
VISION_METHOD = "vision_encoder"


class ExecuTorchSession:
    """One loaded program; methods take and return the contract's tensors positionally
    (`runtime.contract.pte_io`). The KV cache lives inside the program: one generation at a time.

    Loading a method packs its weights for XNNPACK (at 7B: 1.2 GiB for the float32 vision tower,
    3.5 GiB for the int4 language model). With `low_memory`, the vision encoder is loaded for each
    image and released after it, and the language model's methods at the first prefill: a process
    that answers one prompt (`python -m runtime`) never holds both; later images are packed again,
    next to the language model. The token embedding table (0.49 GiB at 7B) stays in the file's
    mapped constant segment, which the pybindings lock into memory where the process may
    (CAP_IPC_LOCK, i.e. root); a process without that right, a normal user's or an app's, keeps
    only the rows it reads resident (ExecuTorch ignores the failed `mlock`).
    """

    backend = "executorch"

    def __init__(self, artifact: Artifact, *, low_memory: bool = False):
        path = artifact.path(PTE_PATH)
        try:
            with native_output_hidden():
                program = Runtime.get().load_program(path)
        except Exception as error:  # the pybindings raise RuntimeError/ValueError for unusable files
            raise ArtifactError(f"ExecuTorch cannot load {path}: {error}") from None
        self.pruned = artifact.selection_graph == "prefill" and artifact.keep < artifact.num_image_tokens
        self._dropped = artifact.num_image_tokens - artifact.keep if self.pruned else 0
        try:
            layer_groups = pte_layer_groups(program.method_names)
        except ValueError as error:
            raise ArtifactError(f"{path}: {error}; see export/ARTIFACTS.md") from None
        # Chained: head, (selection,) layer groups, tail, instead of one text decoder.
        self.chained = self.pruned or layer_groups is not None
        if self.chained:
            layer_groups = layer_groups or 0
        self.names = pte_methods(pruned=self.pruned, layer_groups=layer_groups)
        self._groups = tuple(PTE_LAYER_GROUP.format(i) for i in range(layer_groups or 0))
        missing = [name for name in (*self.names, *PTE_METADATA) if name not in program.method_names]
        if missing:
            raise ArtifactError(
                f"{path} lacks the methods {missing} (has {sorted(program.method_names)}); see export/ARTIFACTS.md"
            )
        self.position_rows = artifact.position_rows
        for name in self.names:
            inputs, outputs = pte_io(name, position_rows=self.position_rows, selection_graph=artifact.selection_graph)
            meta = program.metadata(name)
            if (meta.num_inputs(), meta.num_outputs()) != (len(inputs), len(outputs)):
                raise ArtifactError(
                    f"{path}: method {name} takes {meta.num_inputs()} and returns {meta.num_outputs()} tensors, "
                    f"the manifest's contract says {len(inputs)} and {len(outputs)} (export/ARTIFACTS.md)"
                )
        self._program = program
        self._low_memory = low_memory
        self._methods: dict[str, Method] = {}
        if not low_memory:
            for name in self.names:
                self._method(name)
        with native_output_hidden():
            self._constants = {name: program.load_method(name).execute([]) for name in PTE_METADATA}
        metas = {name: program.metadata(name) for name in self.names}
        # Largest size of each input tensor: a dynamic dimension's upper bound.
        self._input_sizes = {
            name: [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())] for name, meta in metas.items()
        }
        self._output_sizes = {
            name: [tuple(meta.output_tensor_meta(i).sizes()) for i in range(meta.num_outputs())] for name, meta in metas.items()
        }
        self.max_seq_len = self._input_sizes["token_embedding"][0][1]
        # The method that returns the logits.
        self._last = PTE_TAIL if self.chained else "text_decoder"
        # Entries each cache holds: layers before K all M, layers from K on M - (N - R).
        self._capacity = CachePosition(self.max_seq_len, self._input_sizes[self._last][0][1])
        artifact.check_graph_facts(self._graph_facts(), "ExecuTorch")

    def _graph_facts(self) -> dict[str, int | list[int] | None]:
        """What the methods' tensor metadata and constant methods say of the model (`Artifact.check_graph_facts`)."""
        vision = self._output_sizes["vision_encoder"]
        image_embeds = vision[0]
        if self.pruned:
            keep = self._output_sizes["select_tokens"][2][0]
        else:  # the vision graph's selection, or none: the image tokens the prompt holds
            keep = vision[1][0] if len(vision) > 1 else image_embeds[1]
        facts = {
            "keep": keep,
            "prompt_image_tokens": image_embeds[1],
            "hidden_size": image_embeds[2],
            "pixel_values_shape": list(self._input_sizes["vision_encoder"][0]),
            "vocab_size": self._output_sizes[self._last][0][1],
            "max_seq_len": self.max_seq_len,
            "num_layers": self._constants["get_n_layers"][0],
            "num_kv_heads": self._constants["get_n_kv_heads"][0],
            "head_dim": self._constants["get_head_dim"][0],
            "prune_layer": self._constants["get_prune_layer"][0] if self.pruned else None,
        }
        if self.chained:
            facts["position_rows"] = self._input_sizes["text_decoder_head"][1][0]
        return facts

    def _run(self, method: str, *inputs: np.ndarray) -> list[np.ndarray]:
        for i, (x, largest) in enumerate(zip(inputs, self._input_sizes[method])):
            if x.ndim != len(largest) or any(size > bound for size, bound in zip(x.shape, largest)):
                # ExecuTorch would answer only "set_inputs() ... error 0x10".
                raise ValueError(f"{method}: input {i} has shape {list(x.shape)}, the method takes at most {list(largest)}")
        try:
            outputs = self._method(method).execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        except RuntimeError as error:
            raise ValueError(f"ExecuTorch rejected the inputs of {method}: {error}") from None
        # Outputs may live in the method's planned memory, which the next call overwrites: copy.
        return [output.numpy().copy() for output in outputs]

    def _method(self, name: str) -> Method:
        """The loaded method, loaded now if it is not."""
        if name not in self._methods:
            with native_output_hidden():
                self._methods[name] = _load_method(self._program, name)
        return self._methods[name]

    def vision_encoder(self, pixel_values: np.ndarray) -> tuple[np.ndarray, Selection | None]:
        image_embeds, *selection = self._run(VISION_METHOD, pixel_values)
        if self._low_memory:
            del self._methods[VISION_METHOD]
            release_freed_memory()  # glibc would keep the packed weights' blocks for the next load
        return image_embeds[0], tuple(selection) or None

    def embed_tokens(self, input_ids: np.ndarray) -> np.ndarray:
        return self._run("token_embedding", input_ids)[0]

    def prefill(
        self, inputs_embeds: np.ndarray, position_ids: np.ndarray, image_positions: np.ndarray
    ) -> tuple[np.ndarray, Selection, CachePosition]:
        """The prompt from cache position 0 (what an earlier generation left in the cache is overwritten)."""
        start = CachePosition(0, 0)
        every = np.arange(len(image_positions))
        if not self.chained:
            logits = self._decode_text(inputs_embeds, position_ids, start)
            return logits, (every, every.copy()), CachePosition(inputs_embeds.shape[1], inputs_embeds.shape[1])
        # The layers from the pruning layer on get the N - R dropped image tokens fewer.
        length = inputs_embeds.shape[1]
        self._check_room(start, length, length - self._dropped)
        at = _position(0)
        hidden, keys, last_query = self._run("text_decoder_head", inputs_embeds, position_ids, at)
        kept, order = every, every.copy()
        if self.pruned:
            hidden, position_ids, kept, order = self._run("select_tokens", hidden, keys, last_query, position_ids, image_positions)
        logits = self._rest(hidden, position_ids, at)
        return logits, (kept, order), CachePosition(inputs_embeds.shape[1], hidden.shape[1])

    def decode(self, inputs_embeds: np.ndarray, position_ids: np.ndarray, cache: CachePosition) -> tuple[np.ndarray, CachePosition]:
        """One token at the cache's position; `cache` is what the previous prefill or decode returned."""
        if not self.chained:
            logits = self._decode_text(inputs_embeds, position_ids, cache)
        else:
            self._check_room(cache, 1, 1)
            hidden, _, _ = self._run("text_decoder_head", inputs_embeds, position_ids, _position(cache.full))
            logits = self._rest(hidden, position_ids, _position(cache.pruned))
        return logits, CachePosition(cache.full + 1, cache.pruned + 1)

    def _rest(self, hidden: np.ndarray, position_ids: np.ndarray, at: np.ndarray) -> np.ndarray:
        """The layer groups and the tail from (pruned) cache position `at`: logits [1, V]."""
        for group in self._groups:
            (hidden,) = self._run(group, hidden, position_ids, at)
        return self._run(PTE_TAIL, hidden, position_ids, at)[0]

    def _decode_text(self, inputs_embeds: np.ndarray, position_ids: np.ndarray, cache: CachePosition) -> np.ndarray:
        """The unpruned text decoder on T tokens at the cache's position: logits [1, V]."""
        self._check_room(cache, inputs_embeds.shape[1], inputs_embeds.shape[1])
        positions = (position_ids,) if self.position_rows > 1 else ()
        return self._run("text_decoder", inputs_embeds, _position(cache.full), *positions)[0]

    def _check_room(self, cache: CachePosition, full: int, pruned: int) -> None:
        """ExecuTorch would abort on a write past the cache's end: say so instead. `full` and
        `pruned` entries are about to be written before and from the pruning layer on."""
        if cache.full + full > self._capacity.full or cache.pruned + pruned > self._capacity.pruned:
            raise ValueError(
                f"the KV cache holds {self._capacity.full} entries ({self._capacity.pruned} after the pruning "
                f"layer): no room for {full} ({pruned}) more after {cache.full} ({cache.pruned})"
            )


def _load_method(program: Program, name: str) -> Method:
    """`program.load_method` without the cache in which executorch 1.4.1's `Program` keeps every
    method it loaded: a method dropped here is freed."""
    return Method(program._program.load_method(name))


def _position(value: int) -> np.ndarray:
    """A cache position input: int64 [1]."""
    return np.array([value], dtype=np.int64)
