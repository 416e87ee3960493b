"""The artifact's four ONNX graphs on ONNX Runtime (CPU). Imports numpy and onnxruntime only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.artifact import Artifact, ArtifactError
from runtime.backends.base import GRAPHS, KVCache

try:
    import onnxruntime as ort
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("the onnx backend needs onnxruntime: `pip install onnxruntime==1.31.1`") from error


class OnnxSession:
    """One InferenceSession per graph; inputs and outputs by the names of the artifact contract."""

    backend = "onnx"

    def __init__(self, artifact: Artifact, *, num_threads: int | None = None):
        layers = artifact.text.num_layers
        cache_names = [f"{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
        self._present = [f"present.{name}" for name in cache_names]
        self._past = [f"past.{name}" for name in cache_names]
        expected = {
            "vision_encoder": (["pixel_values"], ["image_embeds"]),
            "embed_tokens": (["input_ids"], ["inputs_embeds"]),
            "prefill": (["inputs_embeds", "image_start"], ["logits", "kept_indices", *self._present]),
            "decode": (["inputs_embeds", "position", *self._past], ["logits", *self._present]),
        }
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: constant-folding notes are not the user's concern
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        self._sessions = {}
        for graph in GRAPHS:
            path = artifact.path(f"onnx/{graph}.onnx")
            try:
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as error:  # ORT raises its own exception types, all of them unusable files
                raise ArtifactError(f"ONNX Runtime cannot load {path}: {error}") from None
            inputs, outputs = expected[graph]
            _check_names(path, "inputs", [i.name for i in session.get_inputs()], inputs)
            _check_names(path, "outputs", [o.name for o in session.get_outputs()], outputs)
            self._sessions[graph] = session

    def vision_encoder(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._sessions["vision_encoder"].run(["image_embeds"], {"pixel_values": pixel_values})[0]

    def embed_tokens(self, input_ids: np.ndarray) -> np.ndarray:
        return self._sessions["embed_tokens"].run(["inputs_embeds"], {"input_ids": input_ids})[0]

    def prefill(self, inputs_embeds: np.ndarray, image_start: np.ndarray) -> tuple[np.ndarray, np.ndarray, KVCache]:
        feeds = {"inputs_embeds": inputs_embeds, "image_start": image_start}
        logits, kept, *cache = self._sessions["prefill"].run(["logits", "kept_indices", *self._present], feeds)
        return logits, kept, tuple(cache)

    def decode(self, inputs_embeds: np.ndarray, position: np.ndarray, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        feeds = {"inputs_embeds": inputs_embeds, "position": position, **dict(zip(self._past, cache))}
        logits, *present = self._sessions["decode"].run(["logits", *self._present], feeds)
        return logits, tuple(present)


def _check_names(path: Path, kind: str, found: list[str], expected: list[str]) -> None:
    if sorted(found) != sorted(expected):
        raise ArtifactError(
            f"{path} does not follow the artifact contract: {kind} {found}, expected {expected} (export/ARTIFACTS.md)"
        )
