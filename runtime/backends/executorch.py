"""The artifact's .pte (one method per graph of the contract) on the ExecuTorch runtime.

Imports torch and executorch, so it is loaded only when the executorch backend is asked for.
"""

from __future__ import annotations

import numpy as np

from runtime.artifact import Artifact, ArtifactError
from runtime.backends.base import KVCache, Selection
from runtime.contract import GRAPH_NAMES, PTE_PATH, graph_io
from runtime.cli import native_output_hidden

try:
    import torch
    from executorch.runtime import Runtime
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("the executorch backend needs torch and executorch: run `make setup`") from error


class ExecuTorchSession:
    """One loaded program; methods take and return the contract's tensors positionally."""

    backend = "executorch"

    def __init__(self, artifact: Artifact):
        path = artifact.path(PTE_PATH)
        try:
            with native_output_hidden():
                program = Runtime.get().load_program(path)
        except Exception as error:  # the pybindings raise RuntimeError/ValueError for unusable files
            raise ArtifactError(f"ExecuTorch cannot load {path}: {error}") from None
        missing = [name for name in GRAPH_NAMES if name not in program.method_names]
        if missing:
            raise ArtifactError(
                f"{path} lacks the methods {missing} (has {sorted(program.method_names)}); see export/ARTIFACTS.md"
            )
        for name in GRAPH_NAMES:
            inputs, outputs = graph_io(name, artifact.text.num_layers, selection_graph=artifact.selection_graph)
            meta = program.metadata(name)
            if (meta.num_inputs(), meta.num_outputs()) != (len(inputs), len(outputs)):
                raise ArtifactError(
                    f"{path}: method {name} takes {meta.num_inputs()} and returns {meta.num_outputs()} tensors, "
                    f"the manifest's contract says {len(inputs)} and {len(outputs)} (export/ARTIFACTS.md)"
                )
        with native_output_hidden():
            self._methods = {name: program.load_method(name) for name in GRAPH_NAMES}
        # Largest size of each input tensor: a dynamic dimension's upper bound.
        self._input_sizes = {
            name: [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
            for name, meta in ((name, program.metadata(name)) for name in GRAPH_NAMES)
        }
        artifact.check_graph_facts(self._graph_facts(program), "ExecuTorch")

    def _graph_facts(self, program) -> dict[str, int | None]:
        """What the methods' tensor metadata say of the model (`Artifact.check_graph_facts`)."""
        prefill = program.metadata("prefill")
        outputs = [tuple(prefill.output_tensor_meta(i).sizes()) for i in range(prefill.num_outputs())]
        logits, kept, _, *cache = outputs
        lengths = [key[2] for key in cache[::2]]
        pruned = [i for i, length in enumerate(lengths) if length != lengths[0]]
        image_embeds = tuple(program.metadata("vision_encoder").output_tensor_meta(0).sizes())
        inputs_embeds = self._input_sizes["prefill"][0]
        return {
            "keep": kept[0],
            "prompt_image_tokens": image_embeds[0],
            "pixel_values_shape": list(self._input_sizes["vision_encoder"][0]),
            "position_rows": self._input_sizes["prefill"][1][0],
            "hidden_size": inputs_embeds[2],
            "vocab_size": logits[1],
            "num_layers": len(cache) // 2,
            "num_kv_heads": cache[0][1],
            "head_dim": cache[0][3],
            "prune_layer": pruned[0] if pruned else None,
            "max_seq_len": inputs_embeds[1],
        }

    def _run(self, method: str, *inputs: np.ndarray) -> list[np.ndarray]:
        for i, (x, largest) in enumerate(zip(inputs, self._input_sizes[method])):
            if x.ndim != len(largest) or any(size > bound for size, bound in zip(x.shape, largest)):
                # ExecuTorch would answer only "set_inputs() ... error 0x10".
                raise ValueError(f"{method}: input {i} has shape {list(x.shape)}, the method takes at most {list(largest)}")
        try:
            outputs = self._methods[method].execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        except RuntimeError as error:
            raise ValueError(f"ExecuTorch rejected the inputs of {method}: {error}") from None
        # Outputs may live in the method's planned memory, which the next call overwrites: copy.
        return [output.numpy().copy() for output in outputs]

    def vision_encoder(self, pixel_values: np.ndarray) -> tuple[np.ndarray, Selection | None]:
        image_embeds, *selection = self._run("vision_encoder", pixel_values)
        return image_embeds, tuple(selection) or None

    def embed_tokens(self, input_ids: np.ndarray) -> np.ndarray:
        return self._run("embed_tokens", input_ids)[0]

    def prefill(
        self, inputs_embeds: np.ndarray, position_ids: np.ndarray, image_positions: np.ndarray
    ) -> tuple[np.ndarray, Selection, KVCache]:
        logits, kept, order, *cache = self._run("prefill", inputs_embeds, position_ids, image_positions)
        return logits, (kept, order), tuple(cache)

    def decode(self, inputs_embeds: np.ndarray, position_ids: np.ndarray, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        logits, *present = self._run("decode", inputs_embeds, position_ids, *cache)
        return logits, tuple(present)
