"""Backends behind one `Session` interface. Each backend module is imported only when asked for,
so that the ONNX Runtime path never imports torch."""

from __future__ import annotations

from runtime.artifact import Artifact
from runtime.backends.base import KVCache, Session
from runtime.contract import BACKEND_FILES

BACKENDS = tuple(BACKEND_FILES)


def open_session(
    artifact: Artifact, backend: str, *, num_threads: int | None = None, low_memory: bool = False
) -> Session:
    """Load the artifact's graphs on `backend` ("onnx" or "executorch").

    Args:
        num_threads: intra-op threads (ONNX Runtime); None lets the runtime choose.
        low_memory: ONNX Runtime opens the vision encoder, prefill and decode one at a time, holding
            one copy of the language model (`OnnxSession`); ExecuTorch holds one anyway, and loads
            the vision encoder for each image and releases it after (`ExecuTorchSession`).
    Raises:
        ValueError: unknown backend. ArtifactError: the artifact holds no export for it.
        ImportError: the backend's runtime is not installed (the message says what to install).
    """
    artifact.require_backend(backend)
    if backend == "onnx":
        from runtime.backends.onnx import OnnxSession

        return OnnxSession(artifact, num_threads=num_threads, low_memory=low_memory)
    from runtime.backends.executorch import ExecuTorchSession

    return ExecuTorchSession(artifact, low_memory=low_memory)


__all__ = ["BACKENDS", "KVCache", "Session", "open_session"]
