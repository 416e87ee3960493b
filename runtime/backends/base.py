"""The session interface every backend implements: the four graphs of the contract, numpy in and out."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

# The KV cache as a session hands it back from prefill and decode and takes it in the next decode;
# the generation loop only passes it on. ONNX: from prefill the tensors, flattened as in the artifact
# contract (key 0, value 0, key 1, ...; each float32 [1, n_kv_heads, length_i, head_dim]), from
# decode the buffers ONNX Runtime writes in place and their lengths (`runtime.backends.onnx.BufferCache`).
# ExecuTorch: the cache is in place inside the program, and this says how far it is written.
KVCache = Any
# What a selecting graph returns of its selection: (kept_indices int64 [R] ascending,
# selection_order int64 [R], the same tokens in the order the method chose them).
Selection = tuple[np.ndarray, np.ndarray]


class Session(Protocol):
    """One loaded artifact on one runtime. Shapes: see `export/ARTIFACTS.md`."""

    backend: str

    def vision_encoder(self, pixel_values: np.ndarray) -> tuple[np.ndarray, Selection | None]:
        """pixel_values float32 (the family's shape) -> (image_embeds float32 [N, d], None), or
        (image_embeds [R, d], its selection) when the vision graph selects the tokens."""

    def embed_tokens(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids int64 [1, T] -> inputs_embeds float32 [1, T, d]."""

    def prefill(
        self, inputs_embeds: np.ndarray, position_ids: np.ndarray, image_positions: np.ndarray
    ) -> tuple[np.ndarray, Selection, KVCache]:
        """inputs_embeds [1, T, d], position_ids int64 [rows, 1, T], image_positions int64 [N] ->
        logits [1, V], the selection of R of the N image tokens, cache."""

    def decode(self, inputs_embeds: np.ndarray, position_ids: np.ndarray, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        """inputs_embeds [1, 1, d], position_ids int64 [rows, 1, 1], cache -> logits [1, V], cache one entry longer."""
