"""The artifact's .pte (methods vision_encoder, embed_tokens, prefill, decode) on the ExecuTorch runtime.

Imports torch and executorch, so it is loaded only when the executorch backend is asked for.
"""

from __future__ import annotations

import numpy as np

from runtime.artifact import Artifact, ArtifactError
from runtime.backends.base import GRAPHS, KVCache

try:
    import torch
    from executorch.runtime import Runtime
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("the executorch backend needs torch and executorch: run `make setup`") from error


class ExecuTorchSession:
    """One loaded program; methods take and return the contract's tensors positionally."""

    backend = "executorch"

    def __init__(self, artifact: Artifact):
        path = artifact.path("executorch/model.pte")
        try:
            program = Runtime.get().load_program(path)
        except Exception as error:  # the pybindings raise RuntimeError/ValueError for unusable files
            raise ArtifactError(f"ExecuTorch cannot load {path}: {error}") from None
        missing = [name for name in GRAPHS if name not in program.method_names]
        if missing:
            raise ArtifactError(
                f"{path} lacks the methods {missing} (has {sorted(program.method_names)}); see export/ARTIFACTS.md"
            )
        self._methods = {name: program.load_method(name) for name in GRAPHS}

    def _run(self, method: str, *inputs: np.ndarray) -> list[np.ndarray]:
        outputs = self._methods[method].execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        # Outputs may live in the method's planned memory, which the next call overwrites: copy.
        return [output.numpy().copy() for output in outputs]

    def vision_encoder(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._run("vision_encoder", pixel_values)[0]

    def embed_tokens(self, input_ids: np.ndarray) -> np.ndarray:
        return self._run("embed_tokens", input_ids)[0]

    def prefill(self, inputs_embeds: np.ndarray, image_start: np.ndarray) -> tuple[np.ndarray, np.ndarray, KVCache]:
        logits, kept, *cache = self._run("prefill", inputs_embeds, image_start)
        return logits, kept, tuple(cache)

    def decode(self, inputs_embeds: np.ndarray, position: np.ndarray, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        logits, *present = self._run("decode", inputs_embeds, position, *cache)
        return logits, tuple(present)
